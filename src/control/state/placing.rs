//! The bridge between the state and the pure placement engine: the nodes and retired names it
//! reads, the quotas checked around a plan, and following lost and joining nodes.

use crate::control::changes::Changes;
use crate::control::error::ControlError;
use crate::model::{ContainerKey, Label, ServiceSpec};
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
    /// verdict (dry runs). Changes nothing until [`State::apply_plan`].
    pub fn plan(&mut self, change: &Change, explain: bool) -> Result<Plan, ControlError> {
        let nodes = self.placement_nodes();
        let containers = &self.containers;
        // Names that lived before start above their last generation, so stale reports stay
        // fenced. (A name whose tombstone was removed starts again at 1: its node's floor lets
        // the assignment itself through, and refuses any other report at or below it.)
        let retired = |key: &ContainerKey| containers.get(key).map(|held| held.0.generation);
        (self.stacks.plan(nodes, &retired, change, explain)).map_err(ControlError::from)
    }

    /// Refuses a change that would take `user` over a limit: `containers` assigned after it,
    /// `stacks` declared after it. Checked before placement runs (on the declared targets, so
    /// an oversized request costs nothing) and again on the plan.
    pub fn check_quota(&self, user: &Label, containers: u64, stacks: u64) -> Result<(), ControlError> {
        let limits = self.limits_of(user);
        let (now_containers, now_stacks) = self.usage_of(user);
        if stacks > u64::from(limits.max_stacks) && stacks > u64::from(now_stacks) {
            return Err(ControlError::QuotaExceeded {
                message: format!(
                    "user {user} may declare at most {} stacks and has {now_stacks}; remove a stack, \
                     or ask an admin to raise the limit (PUT /v1/users/{user}/limits)",
                    limits.max_stacks
                ),
            });
        }
        if containers > u64::from(limits.max_containers) && containers > u64::from(now_containers) {
            return Err(ControlError::QuotaExceeded {
                message: format!(
                    "user {user} may run at most {} containers and runs {now_containers}; this change \
                     needs {containers}; lower target_num_containers, or ask an admin to raise the limit \
                     (PUT /v1/users/{user}/limits)",
                    limits.max_containers
                ),
            });
        }
        Ok(())
    }

    /// What a set of declared services would run for `user`, at most: the targets, and one
    /// per node serving the user for `every_node` services. Other stacks count as they are.
    pub fn declared_load(&self, user: &Label, replaced: &Label, services: &[ServiceSpec]) -> u64 {
        let here_now = self.stacks.assignments_of_stack(user, replaced).count();
        let others = self.stacks.assigned_to_user(user).saturating_sub(here_now) as u64;
        // An every_node service runs one per live node that serves the user and carries its tags.
        let matching = |s: &ServiceSpec| {
            self.nodes
                .values()
                .filter(|n| n.live && n.node.serves(user) && s.tags.iter().all(|t| n.node.tags.contains(t)))
                .count() as u64
        };
        let here: u64 = services
            .iter()
            .map(|s| match s.strategy {
                crate::model::Strategy::EveryNode => matching(s),
                _ => u64::from(s.target),
            })
            .sum();
        others + here
    }

    /// Containers of `user` once `plan` is applied.
    pub fn planned_for(&self, plan: &Plan, user: &Label) -> u64 {
        let now = u64::from(self.usage_of(user).0);
        let of_user = |keys: &[ContainerKey]| keys.iter().filter(|k| &k.user == user).count() as u64;
        (now + of_user(&plan.added)).saturating_sub(of_user(&plan.removed))
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
                let applied = self.apply_plan(&plan, changes);
                if !applied.is_empty() {
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
