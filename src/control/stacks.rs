//! Stacks and assignments in the writer's state: what users declared, and where placement put
//! each container.
//!
//! Placement itself is pure (`crate::placement`); `State::plan` builds its input, and
//! [`Stacks::apply_plan`] turns a plan into stored changes. Every plan is complete: the
//! assignments it returns replace the current ones, and the difference is what gets stored and
//! told to the nodes.

use std::collections::{BTreeMap, HashMap};

use super::changes::Changes;
use super::error::ControlError;
use crate::model::{Applied, Assignment, ContainerKey, Label, PortSpec, ServiceKey, ServiceSpec};
use crate::placement::Plan;
use crate::stackfile::ServiceDef;
use crate::store::{Loaded, Op, StackRecord};

/// Assignments and stacks, kept with the rest of the state.
#[derive(Debug, Default)]
pub struct Stacks {
    stacks: BTreeMap<(Label, Label), StackRecord>,
    assignments: BTreeMap<ContainerKey, Assignment>,
    /// Raised on every change of any assignment (Consul-style blocking queries wait on it).
    index: u64,
    /// The index at which each node's assignments last changed.
    node_index: HashMap<Label, u64>,
}

impl Stacks {
    /// Takes the stacks and assignments out of what was loaded. Every node in `nodes` starts
    /// at the current index, so an agent holding an older one hears at once.
    pub fn from_loaded(loaded: &mut Loaded, nodes: impl IntoIterator<Item = Label>) -> Self {
        let stacks = std::mem::take(&mut loaded.stacks)
            .into_iter()
            .map(|record| ((record.user.clone(), record.stack.clone()), record))
            .collect();
        let assignments: BTreeMap<ContainerKey, Assignment> = std::mem::take(&mut loaded.assignments)
            .into_iter()
            .map(|a| (a.container.clone(), a))
            .collect();
        let index = loaded.assignment_index;
        let node_index = assignments
            .values()
            .map(|a| a.node.clone())
            .chain(nodes)
            .map(|n| (n, index))
            .collect();
        Self {
            stacks,
            assignments,
            index,
            node_index,
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

    /// The assignment index after the latest change.
    pub fn index(&self) -> u64 {
        self.index
    }

    pub fn assignment(&self, key: &ContainerKey) -> Option<&Assignment> {
        self.assignments.get(key)
    }

    /// Every assignment, all stacks, by container.
    pub fn assignments(&self) -> impl Iterator<Item = &Assignment> {
        self.assignments.values()
    }

    /// The assignments of one stack.
    pub fn assignments_of_stack<'a>(
        &'a self,
        user: &'a Label,
        stack: &'a Label,
    ) -> impl Iterator<Item = &'a Assignment> + 'a {
        self.assignments
            .values()
            .filter(move |a| &a.service.user == user && &a.service.stack == stack)
    }

    /// The assignments of one node, and the index they last changed at.
    pub fn assignments_of_node(&self, node: &Label) -> (u64, Vec<&Assignment>) {
        let index = self.node_index.get(node).copied().unwrap_or(0);
        let list = self.assignments.values().filter(|a| &a.node == node).collect();
        (index, list)
    }

    /// Every declared service of every stack.
    pub fn declared_services(&self) -> Vec<ServiceSpec> {
        self.stacks
            .values()
            .flat_map(|s| s.services.iter().cloned())
            .collect()
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
        let mut touched_nodes = Vec::new();
        let new: BTreeMap<&ContainerKey, &Assignment> =
            plan.assignments.iter().map(|a| (&a.container, a)).collect();
        for (key, old) in &self.assignments {
            if !new.contains_key(key) {
                changes.ops.push(Op::DeleteAssignment(key.clone()));
                changes.containers.insert(key.clone());
                touched_nodes.push(old.node.clone());
            }
        }
        for (key, a) in &new {
            match self.assignments.get(*key) {
                Some(old) if old == *a => {}
                old => {
                    changes.ops.push(Op::PutAssignment((*a).clone()));
                    changes.containers.insert((*key).clone());
                    touched_nodes.push(a.node.clone());
                    touched_nodes.extend(old.map(|o| o.node.clone()));
                }
            }
        }
        self.assignments = plan
            .assignments
            .iter()
            .map(|a| (a.container.clone(), a.clone()))
            .collect();
        if !touched_nodes.is_empty() {
            self.index += 1;
            changes.ops.push(Op::AssignmentIndex(self.index));
            for node in touched_nodes {
                self.node_index.insert(node, self.index);
            }
        }

        // Targets follow the plan (a scale changes them; every_node has none of its own).
        for stack in self.stacks.values_mut() {
            let services: Vec<ServiceSpec> = plan
                .services
                .iter()
                .filter(|s| s.key.user == stack.user && s.key.stack == stack.stack)
                .cloned()
                .collect();
            if services != stack.services {
                changes
                    .services
                    .extend(stack.services.iter().map(|s| s.key.clone()));
                changes.services.extend(services.iter().map(|s| s.key.clone()));
                stack.services = services;
                changes.ops.push(Op::PutStack(Box::new(stack.clone())));
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
