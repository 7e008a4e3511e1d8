//! Stacks and assignments in the writer's state: what users declared, and where placement put
//! each container.
//!
//! Placement itself is pure (`crate::placement`); the assignments live in its [`Index`], kept
//! here between plans, so a plan costs what it changes. [`Stacks::plan`] runs one against the
//! index and the declared stacks, and [`Stacks::apply_plan`] turns it into stored changes and
//! makes it current: what changed is what gets stored and told to the nodes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::changes::Changes;
use super::error::ControlError;
use crate::model::{Applied, Assignment, ContainerKey, Label, PortSpec, ServiceKey, ServiceSpec};
use crate::placement::{self, Change, Declared, Index, NodeInfo, Plan};
use crate::stackfile::ServiceDef;
use crate::store::{Loaded, Op, StackRecord};

/// Assignments and stacks, kept with the rest of the state.
#[derive(Debug)]
pub struct Stacks {
    stacks: BTreeMap<(Label, Label), StackRecord>,
    /// Every assignment, indexed for placement.
    placed: Index,
    /// Raised on every change of any assignment (Consul-style blocking queries wait on it).
    index: u64,
    /// The index at which each node's assignments last changed.
    node_index: HashMap<Label, u64>,
    /// Nodes whose assignments changed since [`Stacks::take_touched`] was last called: the
    /// blocking queries to wake.
    touched: BTreeSet<Label>,
    /// Nodes whose stored assignments were applied since the last stored index.
    pending: BTreeSet<Label>,
}

impl Default for Stacks {
    fn default() -> Self {
        Stacks {
            stacks: BTreeMap::new(),
            placed: Index::new(&placement::DEFAULT_DYNAMIC_PORTS),
            index: 0,
            node_index: HashMap::new(),
            touched: BTreeSet::new(),
            pending: BTreeSet::new(),
        }
    }
}

impl Stacks {
    /// Takes the stacks and assignments out of what was loaded. Every node in `nodes` starts
    /// at the current index, so an agent holding an older one hears at once.
    pub fn from_loaded(loaded: &mut Loaded, nodes: impl IntoIterator<Item = Label>) -> Self {
        let stacks = std::mem::take(&mut loaded.stacks)
            .into_iter()
            .map(|record| ((record.user.clone(), record.stack.clone()), record))
            .collect();
        let assignments = std::mem::take(&mut loaded.assignments);
        let index = loaded.assignment_index;
        let node_index = (assignments.iter())
            .map(|a| a.node.clone())
            .chain(nodes)
            .map(|n| (n, index))
            .collect();
        Self {
            stacks,
            placed: Index::build(&[], assignments, &placement::DEFAULT_DYNAMIC_PORTS),
            index,
            node_index,
            touched: BTreeSet::new(),
            pending: BTreeSet::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.stacks.is_empty()
    }

    pub fn get(&self, user: &Label, stack: &Label) -> Option<&StackRecord> {
        self.stacks.get(&(user.clone(), stack.clone()))
    }

    /// The names of `user`'s stacks, in order.
    pub fn of_user<'a>(&'a self, user: &'a Label) -> impl Iterator<Item = &'a Label> + 'a {
        self.stacks.keys().filter(move |(u, _)| u == user).map(|(_, s)| s)
    }

    /// Every stack, as (user, stack), in order.
    pub fn all(&self) -> impl Iterator<Item = &(Label, Label)> {
        self.stacks.keys()
    }

    pub fn assignment(&self, key: &ContainerKey) -> Option<&Assignment> {
        self.placed.get(key)
    }

    /// How many containers placement gave `user`.
    pub fn assigned_to_user(&self, user: &Label) -> usize {
        self.placed.count_of_user(user)
    }

    /// The assignments of one stack.
    pub fn assignments_of_stack<'a>(
        &'a self,
        user: &'a Label,
        stack: &'a Label,
    ) -> impl Iterator<Item = &'a Assignment> + 'a {
        self.placed.of_stack(user, stack)
    }

    /// The assignments of one node, and the index they last changed at.
    pub fn assignments_of_node(&self, node: &Label) -> (u64, Vec<&Assignment>) {
        let index = self.node_index.get(node).copied().unwrap_or(0);
        (index, self.placed.of_node(node).collect())
    }

    /// The nodes whose assignments changed since the last call: whose blocking queries to wake.
    pub fn take_touched(&mut self) -> BTreeSet<Label> {
        std::mem::take(&mut self.touched)
    }

    /// Runs placement for `change` on the current assignments and `nodes`; `retired` gives
    /// the last generation of a name no longer assigned. Changes nothing: see
    /// [`Stacks::apply_plan`].
    pub fn plan(
        &mut self,
        nodes: Vec<NodeInfo>,
        retired: &dyn Fn(&ContainerKey) -> Option<u64>,
        change: &Change,
        explain: bool,
    ) -> Result<Plan, placement::PlacementError> {
        self.placed.set_nodes(nodes);
        let declared = DeclaredStacks {
            stacks: &self.stacks,
            retired,
        };
        self.placed.plan(&declared, change, explain)
    }

    /// Every declared service's key.
    pub fn declared_keys(&self) -> impl Iterator<Item = &ServiceKey> {
        self.stacks
            .values()
            .flat_map(|s| s.services.iter().map(|spec| &spec.key))
    }

    /// The ports of a declared service, `None` if no stack declares it. A declared service's
    /// names exist in DNS even before any container of it runs.
    pub fn declared_ports(&self, service: &ServiceKey) -> Option<Vec<PortSpec>> {
        let stack = self.get(&service.user, &service.stack)?;
        let spec = stack.services.iter().find(|spec| &spec.key == service)?;
        Some(spec.ports.clone())
    }

    /// What the Stackfile says about a service (image, command, environment).
    pub fn definition(&self, service: &ServiceKey) -> Option<&ServiceDef> {
        self.get(&service.user, &service.stack)?
            .file
            .services
            .get(&service.service)
    }

    /// Makes `plan` the current placement: stores what changed, bumps the indexes of the
    /// nodes whose assignments changed, and updates the stacks' targets.
    pub fn apply_plan(&mut self, plan: &Plan, changes: &mut Changes) -> Applied {
        let mut touched_nodes = BTreeSet::new();
        for change in &plan.assignments {
            changes.containers.insert(change.container.clone());
            changes.ops.push(match &change.after {
                Some(a) => Op::PutAssignment(a.clone()),
                None => Op::DeleteAssignment(change.container.clone()),
            });
            touched_nodes.extend(change.before.iter().map(|a| a.node.clone()));
            touched_nodes.extend(change.after.iter().map(|a| a.node.clone()));
        }
        self.placed.apply(plan);
        if !touched_nodes.is_empty() {
            self.index += 1;
            changes.ops.push(Op::AssignmentIndex(self.index));
            for node in &touched_nodes {
                self.node_index.insert(node.clone(), self.index);
            }
            self.touched.extend(touched_nodes);
        }

        // Targets follow the plan (a scale changes them; every_node has none of its own). A
        // stack applied for the first time is stored by the caller, after this.
        // Sorted by key, so each stack's services are together.
        let same_stack =
            |a: &(ServiceKey, _), b: &(ServiceKey, _)| a.0.user == b.0.user && a.0.stack == b.0.stack;
        for declared in plan.services.chunk_by(same_stack) {
            let key = &declared[0].0;
            let Some(record) = self.stacks.get_mut(&(key.user.clone(), key.stack.clone())) else {
                continue;
            };
            let mut services: BTreeMap<ServiceKey, ServiceSpec> = (record.services.iter())
                .map(|s| (s.key.clone(), s.clone()))
                .collect();
            for (key, spec) in declared {
                match spec {
                    Some(spec) => services.insert(key.clone(), spec.clone()),
                    None => services.remove(key),
                };
            }
            let services: Vec<ServiceSpec> = services.into_values().collect();
            if services != record.services {
                changes
                    .services
                    .extend(record.services.iter().map(|s| s.key.clone()));
                changes.services.extend(services.iter().map(|s| s.key.clone()));
                record.services = services;
                changes.ops.push(Op::PutStack(Box::new(record.clone())));
            }
        }
        let names = |keys: &[ContainerKey]| keys.iter().map(ToString::to_string).collect();
        Applied {
            added: names(&plan.added),
            removed: names(&plan.removed),
            moved: names(&plan.moved),
            redeployed: names(&plan.redeployed),
        }
    }

    /// Applies an assignment another instance stored; the nodes it concerns wake once the
    /// batch's [`Op::AssignmentIndex`] arrives ([`Stacks::stored_index`]).
    pub fn stored_assignment(&mut self, key: &ContainerKey, to: Option<Assignment>, changes: &mut Changes) {
        changes.containers.insert(key.clone());
        let after = to.as_ref().map(|a| a.node.clone());
        let before = self.placed.set(key, to).map(|a| a.node);
        self.pending.extend(before.into_iter().chain(after));
    }

    /// Applies the assignment index another instance stored: the nodes whose assignments its
    /// batch changed are at it now.
    pub fn stored_index(&mut self, index: u64) {
        self.index = index;
        for node in std::mem::take(&mut self.pending) {
            self.node_index.insert(node.clone(), index);
            self.touched.insert(node);
        }
    }

    /// Applies a stack record another instance stored (or removed).
    pub fn stored_stack(
        &mut self,
        user: &Label,
        stack: &Label,
        record: Option<StackRecord>,
        changes: &mut Changes,
    ) {
        let key = (user.clone(), stack.clone());
        let old = match record {
            Some(record) => {
                changes
                    .services
                    .extend(record.services.iter().map(|s| s.key.clone()));
                self.stacks.insert(key, record)
            }
            None => self.stacks.remove(&key),
        };
        if let Some(old) = old {
            changes
                .services
                .extend(old.services.iter().map(|s| s.key.clone()));
        }
    }

    /// Stores a stack's file and services (after its plan was applied).
    pub fn put(&mut self, stack: StackRecord, changes: &mut Changes) {
        let key = (stack.user.clone(), stack.stack.clone());
        if self.stacks.get(&key).is_some_and(|old| *old == stack) {
            return; // The same Stackfile again: nothing to store, no new serial.
        }
        if let Some(old) = self.stacks.get(&key) {
            changes
                .services
                .extend(old.services.iter().map(|s| s.key.clone()));
        }
        changes
            .services
            .extend(stack.services.iter().map(|s| s.key.clone()));
        changes.ops.push(Op::PutStack(Box::new(stack.clone())));
        self.stacks.insert(key, stack);
    }

    /// Forgets a stack (after the plan that removed its containers was applied).
    pub fn remove(&mut self, user: &Label, stack: &Label, changes: &mut Changes) -> Result<(), ControlError> {
        let Some(old) = self.stacks.remove(&(user.clone(), stack.clone())) else {
            return Err(ControlError::NotFound {
                what: "stack",
                name: format!("{user}/{stack}"),
            });
        };
        changes
            .services
            .extend(old.services.iter().map(|s| s.key.clone()));
        changes.ops.push(Op::DeleteStack(user.clone(), stack.clone()));
        Ok(())
    }
}

/// The declared stacks as placement reads them.
struct DeclaredStacks<'a> {
    stacks: &'a BTreeMap<(Label, Label), StackRecord>,
    retired: &'a dyn Fn(&ContainerKey) -> Option<u64>,
}

impl Declared for DeclaredStacks<'_> {
    fn spec(&self, key: &ServiceKey) -> Option<&ServiceSpec> {
        let stack = self.stacks.get(&(key.user.clone(), key.stack.clone()))?;
        stack.services.iter().find(|spec| &spec.key == key)
    }

    fn of_stack(&self, user: &Label, stack: &Label) -> Vec<&ServiceSpec> {
        (self.stacks.get(&(user.clone(), stack.clone())))
            .map(|s| s.services.iter().collect())
            .unwrap_or_default()
    }

    fn all(&self) -> Vec<&ServiceSpec> {
        self.stacks.values().flat_map(|s| s.services.iter()).collect()
    }

    fn retired(&self, key: &ContainerKey) -> Option<u64> {
        (self.retired)(key)
    }
}

/// The services placement works from, as a Stackfile declares them.
pub fn service_specs(user: &Label, stack: &Label, file: &crate::stackfile::Stackfile) -> Vec<ServiceSpec> {
    file.services
        .iter()
        .map(|(name, def)| ServiceSpec {
            key: ServiceKey {
                user: user.clone(),
                stack: stack.clone(),
                service: name.clone(),
            },
            target: def.target_num_containers,
            strategy: def.deployment_strategy,
            tags: def.tags.iter().cloned().collect(),
            ports: def.ports.clone(),
            mem_limit_mb: def.mem_limit_mb,
            spec_hash: def.spec_hash(),
        })
        .collect()
}
