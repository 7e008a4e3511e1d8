//! Stacks and assignments in the writer's state: what users declared, where placement put
//! each container, and how a placement plan is applied.
//!
//! Placement itself is pure (`crate::placement`); this module builds its input from the state
//! and turns its plan into stored changes. Every plan is complete: the assignments it returns
//! replace the current ones, and the difference is what gets stored and told to the nodes.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::ControlError;
use super::state::{Changes, State};
use crate::model::{ContainerKey, Label, ServiceKey};
use crate::placement::{self, Assignment, Change, NodeInfo, Plan, ServiceSpec};
use crate::store::{Loaded, Op, StackRecord, StoreError};

/// Assignments and stacks, kept with the rest of the state.
#[derive(Debug, Default)]
pub struct Stacks {
    pub stacks: BTreeMap<(Label, Label), StackRecord>,
    pub assignments: BTreeMap<ContainerKey, Assignment>,
    /// Raised on every change of any assignment (Consul-style blocking queries wait on it).
    pub index: u64,
    /// The index at which each node's assignments last changed.
    pub node_index: HashMap<Label, u64>,
}

impl Stacks {
    /// Takes the stacks and assignments out of what was loaded, re-reading each Stackfile.
    pub fn from_loaded(loaded: &mut Loaded) -> Result<Self, StoreError> {
        let mut stacks = BTreeMap::new();
        // The parsed form is stored, so a stricter parser later cannot lose a stack.
        for record in std::mem::take(&mut loaded.stacks) {
            stacks.insert((record.user.clone(), record.stack.clone()), record);
        }
        let assignments: BTreeMap<ContainerKey, Assignment> = std::mem::take(&mut loaded.assignments)
            .into_iter()
            .map(|a| (a.container.clone(), a))
            .collect();
        let index = loaded.assignment_index;
        let node_index = assignments.values().map(|a| (a.node.clone(), index)).collect();
        Ok(Self {
            stacks,
            assignments,
            index,
            node_index,
        })
    }
}

/// What a plan did, for the response.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Applied {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub moved: Vec<String>,
    pub redeployed: Vec<String>,
}

impl State {
    /// Everything placement decides from, as of now.
    pub fn placement_nodes(&self) -> Vec<NodeInfo> {
        self.nodes
            .values()
            .map(|n| NodeInfo {
                name: n.node.name.clone(),
                live: n.live,
                tags: n.node.tags.iter().cloned().collect(),
                labels: n.node.labels.clone(),
                memory_mb: n.node.capacity.map(|c| c.memory_mb),
            })
            .collect()
    }

    /// Every declared service of every stack.
    pub fn declared_services(&self) -> Vec<ServiceSpec> {
        self.stacks
            .stacks
            .values()
            .flat_map(|s| s.services.iter().cloned())
            .collect()
    }

    /// The ports of a declared service, `None` if no stack declares it. A declared service's
    /// names exist in DNS even before any container of it runs.
    pub fn declared_ports(&self, service: &ServiceKey) -> Option<Vec<crate::model::PortSpec>> {
        let stack = self
            .stacks
            .stacks
            .get(&(service.user.clone(), service.stack.clone()))?;
        let spec = stack.services.iter().find(|spec| &spec.key == service)?;
        Some(spec.ports.clone())
    }

    /// Runs placement for `change` against the current state; `explain` asks for every node's
    /// verdict (dry runs).
    pub fn plan(&self, change: &Change, explain: bool) -> Result<Plan, ControlError> {
        let nodes = self.placement_nodes();
        let services = self.declared_services();
        let assignments: Vec<Assignment> = self.stacks.assignments.values().cloned().collect();
        // Names that lived before start above their last generation, so stale reports stay fenced.
        let retired: Vec<(ContainerKey, u64)> = self
            .containers
            .values()
            .map(|c| (c.key.clone(), c.generation))
            .collect();
        let mut input = placement::Input::new(&nodes, &services, &assignments);
        input.retired = &retired;
        input.explain = explain;
        placement::plan(&input, change).map_err(ControlError::from)
    }

    /// Makes `plan` the current placement: stores what changed, bumps the indexes of the
    /// nodes whose assignments changed, and updates the stacks' targets.
    pub fn apply_plan(&mut self, plan: &Plan, changes: &mut Changes) -> Applied {
        let mut touched_nodes = Vec::new();
        let new: BTreeMap<&ContainerKey, &Assignment> =
            plan.assignments.iter().map(|a| (&a.container, a)).collect();
        for (key, old) in &self.stacks.assignments {
            if !new.contains_key(key) {
                changes.ops.push(Op::DeleteAssignment(key.clone()));
                touched_nodes.push(old.node.clone());
            }
        }
        for (key, a) in &new {
            match self.stacks.assignments.get(*key) {
                Some(old) if old == *a => {}
                old => {
                    changes.ops.push(Op::PutAssignment((*a).clone()));
                    touched_nodes.push(a.node.clone());
                    touched_nodes.extend(old.map(|o| o.node.clone()));
                }
            }
        }
        self.stacks.assignments = plan
            .assignments
            .iter()
            .map(|a| (a.container.clone(), a.clone()))
            .collect();
        if !touched_nodes.is_empty() {
            self.stacks.index += 1;
            changes.ops.push(Op::AssignmentIndex(self.stacks.index));
            for node in touched_nodes {
                self.stacks.node_index.insert(node, self.stacks.index);
            }
        }

        // Targets follow the plan (a scale changes them; every_node has none of its own).
        for stack in self.stacks.stacks.values_mut() {
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
    pub fn put_stack(&mut self, stack: StackRecord, changes: &mut Changes) {
        let key = (stack.user.clone(), stack.stack.clone());
        if self.stacks.stacks.get(&key).is_some_and(|old| *old == stack) {
            return; // The same Stackfile again: nothing to store, no new serial.
        }
        if let Some(old) = self.stacks.stacks.get(&key) {
            changes
                .services
                .extend(old.services.iter().map(|s| s.key.clone()));
        }
        changes
            .services
            .extend(stack.services.iter().map(|s| s.key.clone()));
        changes.ops.push(Op::PutStack(Box::new(stack.clone())));
        self.stacks.stacks.insert(key, stack);
    }

    /// Forgets a stack (after the plan that removed its containers was applied).
    pub fn remove_stack(
        &mut self,
        user: &Label,
        stack: &Label,
        changes: &mut Changes,
    ) -> Result<(), ControlError> {
        let Some(old) = self.stacks.stacks.remove(&(user.clone(), stack.clone())) else {
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

    /// Moves containers off lost nodes and makes `every_node` services follow the nodes.
    /// Never fails: what cannot move stays, and the reason is logged.
    pub fn reconcile(&mut self, changes: &mut Changes) {
        if self.stacks.stacks.is_empty() {
            return;
        }
        match self.plan(&Change::Reconcile, false) {
            Ok(plan) => {
                for v in plan
                    .verdicts
                    .iter()
                    .filter(|v| matches!(v.verdict, placement::Verdict::Stranded))
                {
                    tracing::warn!(container = %v.container, node = %v.node, "no live node can take this container; it stays assigned to its lost node");
                }
                let applied = self.apply_plan(&plan, changes);
                if !(applied.moved.is_empty() && applied.added.is_empty() && applied.removed.is_empty()) {
                    tracing::info!(moved = ?applied.moved, added = ?applied.added, removed = ?applied.removed, "placement reconciled");
                }
            }
            Err(e) => tracing::error!(error = %e, "reconcile failed"),
        }
    }

    /// The assignments of one node, and the index they last changed at.
    pub fn assignments_of(&self, node: &Label) -> (u64, Vec<&Assignment>) {
        let index = self.stacks.node_index.get(node).copied().unwrap_or(0);
        let list = self
            .stacks
            .assignments
            .values()
            .filter(|a| &a.node == node)
            .collect();
        (index, list)
    }
}
