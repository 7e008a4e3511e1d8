//! The bridge between the state and the pure placement engine: build its input, and follow
//! lost and joining nodes.

use crate::control::changes::Changes;
use crate::control::error::ControlError;
use crate::model::{Assignment, ContainerKey, ServiceSpec};
use crate::placement::{self, Change, NodeInfo, Plan};

use super::State;

impl State {
    /// Everything placement needs to know about the nodes, as of now.
    fn placement_nodes(&self) -> Vec<NodeInfo> {
        self.nodes
            .values()
            .map(|n| NodeInfo {
                name: n.node.name.clone(),
                live: n.live,
                tags: n.node.tags.iter().cloned().collect(),
                labels: n.node.labels.clone(),
                memory_mb: n.node.capacity.map(|c| c.memory_mb),
                tenants: n.node.tenant_set(),
            })
            .collect()
    }

    /// Runs placement for `change` against the current state; `explain` asks for every node's
    /// verdict (dry runs).
    pub fn plan(&self, change: &Change, explain: bool) -> Result<Plan, ControlError> {
        let nodes = self.placement_nodes();
        let services: Vec<ServiceSpec> = self.stacks.declared_services();
        let assignments: Vec<Assignment> = self.stacks.assignments().cloned().collect();
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

    /// Makes `plan` the current placement (see [`crate::control::stacks::Stacks::apply_plan`]).
    pub fn apply_plan(&mut self, plan: &Plan, changes: &mut Changes) -> crate::model::Applied {
        self.stacks.apply_plan(plan, changes)
    }

    /// Moves containers off lost nodes and makes `every_node` services follow the nodes.
    /// Never fails: what cannot move stays, and the reason is logged.
    pub fn reconcile(&mut self, changes: &mut Changes) {
        if self.stacks.is_empty() {
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
                let applied = self.stacks.apply_plan(&plan, changes);
                if !(applied.moved.is_empty() && applied.added.is_empty() && applied.removed.is_empty()) {
                    tracing::info!(moved = ?applied.moved, added = ?applied.added, removed = ?applied.removed, "placement reconciled");
                }
            }
            Err(e) => tracing::error!(error = %e, "reconcile failed"),
        }
    }

    /// Stores a stack record (after its plan was applied). A newly declared stack's names are
    /// recomputed: containers reported under it before it existed no longer answer.
    pub fn put_stack(&mut self, record: crate::store::StackRecord, changes: &mut Changes) {
        if self.stacks.get(&record.user, &record.stack).is_none() {
            let keys: Vec<_> = self
                .containers_of_stack(&record.user, &record.stack)
                .cloned()
                .collect();
            changes.containers.extend(keys);
        }
        self.stacks.put(record, changes);
    }

    /// Forgets a stack (after the plan that removed its containers was applied).
    pub fn remove_stack(
        &mut self,
        user: &crate::model::Label,
        stack: &crate::model::Label,
        changes: &mut Changes,
    ) -> Result<(), ControlError> {
        self.stacks.remove(user, stack, changes)?;
        let keys: Vec<_> = self.containers_of_stack(user, stack).cloned().collect();
        changes.containers.extend(keys);
        Ok(())
    }
}
