//! Containers as agents report them: generation fencing (design §4), stops, and the
//! anti-entropy replace of a node's whole list.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Instant;

use super::State;
use crate::control::changes::{Changes, Effect};
use crate::control::error::ControlError;
use crate::model::{Container, ContainerKey, Label, Port};

/// What an agent reports about one running container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub service: Label,
    pub address: Option<IpAddr>,
    pub ports: Vec<Port>,
    pub generation: u64,
    /// False: running, but keep it out of DNS (failing its health check, or draining).
    pub ready: bool,
    pub detail: Option<String>,
}

/// Generations above this are refused: room is left above any reported one, so a
/// redeploy or a move can always go one higher.
pub const MAX_GENERATION: u64 = 1 << 53;

/// What an anti-entropy report changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ReplaceSummary {
    pub started: usize,
    pub updated: usize,
    pub stopped: usize,
    pub unchanged: usize,
}

impl State {
    /// Checks a report against the fence without changing anything.
    fn check_report(
        &self,
        node: &Label,
        key: &ContainerKey,
        generation: u64,
        ready: bool,
    ) -> Result<(), ControlError> {
        if generation > MAX_GENERATION {
            return Err(ControlError::Invalid {
                field: "generation",
                message: format!("{generation} is beyond the largest generation, {MAX_GENERATION}"),
            });
        }
        // A placed container may only be reported by the node it is assigned to, at most at
        // the generation placement gave it: no node can take over another's containers.
        if let Some(a) = self.stacks.assignment(key) {
            let withdrawal = !ready && self.withdraws(node, key, generation);
            if (&a.node != node || generation > a.generation) && !withdrawal {
                return Err(ControlError::StaleGeneration {
                    container: key.to_string(),
                    stored: a.generation,
                    reported: generation,
                    detail: format!("it is assigned to node {} at generation {}", a.node, a.generation),
                });
            }
        }
        self.check_ownership(node, key, ready)?;
        let Some(stored) = self.container(key) else {
            return self.check_floor(node, key, generation);
        };
        let same_place = stored.running && &stored.node == node;
        if generation < stored.generation || (generation == stored.generation && !same_place) {
            return Err(ControlError::StaleGeneration {
                container: key.to_string(),
                stored: stored.generation,
                reported: generation,
                detail: if stored.running {
                    format!("it is running on node {}", stored.node)
                } else {
                    "it was stopped".to_owned()
                },
            });
        }
        Ok(())
    }

    /// A container with no record, reported by `node` at or below the node's floor: its record
    /// may have been a tombstone removed after its retention, so the report may be from before
    /// the stop. Only its assignment itself (to this node at exactly this generation) gets
    /// through: a name placed again after its tombstone went starts over at 1.
    fn check_floor(&self, node: &Label, key: &ContainerKey, generation: u64) -> Result<(), ControlError> {
        let Some(floor) = self.floor(node) else {
            return Ok(());
        };
        let assigned_here = self
            .stacks
            .assignment(key)
            .is_some_and(|a| &a.node == node && a.generation == generation);
        if generation > floor || assigned_here {
            return Ok(());
        }
        Err(ControlError::StaleGeneration {
            container: key.to_string(),
            stored: floor,
            reported: generation,
            detail: format!(
                "node {node} ran containers up to generation {floor} whose tombstones were removed \
                 after their retention; a container new to the server must come with a higher generation"
            ),
        })
    }

    /// Whether `node` still holds the running record of `key` at `generation`: it may take it
    /// out of DNS (not ready, or stopped) even after placement moved the name elsewhere, so the
    /// old container drains while the new node has not reported yet.
    fn withdraws(&self, node: &Label, key: &ContainerKey, generation: u64) -> bool {
        self.container(key)
            .is_some_and(|c| c.running && &c.node == node && c.generation == generation)
    }

    /// What a node may publish: a name of a declared stack only where placement put it (or,
    /// once its assignment is gone, the node still running it while it drains); a
    /// discovery-only container only of a user the node serves.
    fn check_ownership(&self, node: &Label, key: &ContainerKey, ready: bool) -> Result<(), ControlError> {
        if self.stacks.assignment(key).is_some() {
            return Ok(()); // Checked against the assignment already.
        }
        if self.stacks.get(&key.user, &key.stack).is_some() {
            // Only out of DNS: a removed container may drain, not come back.
            let draining = !ready
                && self
                    .container(key)
                    .is_some_and(|c| c.running && c.placed && &c.node == node);
            if draining {
                return Ok(());
            }
            return Err(ControlError::ReportRefused {
                code: "not_assigned",
                message: format!(
                    "container {key} is not placed on node {node}: stack {}/{} is declared, and only \
                     the node placement assigns a container to may report it",
                    key.user, key.stack
                ),
            });
        }
        let serves = self.nodes.get(node).is_none_or(|n| n.node.serves(&key.user));
        if !serves {
            let whom = self
                .nodes
                .get(node)
                .and_then(|n| n.node.tenant_set())
                .map(|users| {
                    users
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            return Err(ControlError::ReportRefused {
                code: "not_a_tenant",
                message: format!(
                    "node {node} may report containers of {whom} only, not of user {}",
                    key.user
                ),
            });
        }
        Ok(())
    }

    /// Records that `key` runs on `node` as reported (generation-fenced).
    pub fn put_container(
        &mut self,
        node: &Label,
        key: ContainerKey,
        report: Report,
        now: Instant,
        changes: &mut Changes,
    ) -> Result<(Container, Effect), ControlError> {
        self.node(node)?;
        self.check_report(node, &key, report.generation, report.ready)?;
        self.heartbeat(node, now, changes)?;
        Ok(self.apply_report(node, key, report, changes))
    }

    fn apply_report(
        &mut self,
        node: &Label,
        key: ContainerKey,
        report: Report,
        changes: &mut Changes,
    ) -> (Container, Effect) {
        // Where placement put it, at its generation; or still the container placement put
        // here, being drained after its assignment went.
        let assigned = self
            .stacks
            .assignment(&key)
            .is_some_and(|a| &a.node == node && a.generation == report.generation);
        let was_placed = self
            .container(&key)
            .is_some_and(|c| c.placed && &c.node == node && c.generation == report.generation);
        let container = Container {
            key,
            node: node.clone(),
            service: report.service,
            address: report.address,
            ports: report.ports,
            generation: report.generation,
            running: true,
            ready: report.ready,
            detail: report.detail,
            placed: assigned || was_placed,
            stopped_at: None,
        };
        let effect = match self.container(&container.key) {
            Some(old) if *old == container => return (container, Effect::Unchanged),
            Some(old) if old.running => Effect::Updated,
            _ => Effect::Created,
        };
        self.store_container(container.clone(), changes);
        (container, effect)
    }

    /// Records that `key` stopped on `node` (`detail`: why, if the agent said). Without a
    /// generation, the stored one is used.
    #[allow(clippy::too_many_arguments)]
    pub fn delete_container(
        &mut self,
        node: &Label,
        key: &ContainerKey,
        generation: Option<u64>,
        detail: Option<String>,
        now: Instant,
        changes: &mut Changes,
    ) -> Result<(Container, Effect), ControlError> {
        self.node(node)?;
        let stored = self.container(key).ok_or_else(|| ControlError::NotFound {
            what: "container",
            name: key.to_string(),
        })?;
        let generation = generation.unwrap_or(stored.generation);
        let stale = |detail: String| ControlError::StaleGeneration {
            container: key.to_string(),
            stored: stored.generation,
            reported: generation,
            detail,
        };
        if generation < stored.generation {
            return Err(stale("a newer report exists".to_owned()));
        }
        // Only the node running a container may stop it, whatever generation it claims; a
        // placed container only by its assigned node, within the generation it was given.
        if stored.running && &stored.node != node {
            return Err(stale(format!("it is running on node {}", stored.node)));
        }
        if let Some(a) = self.stacks.assignment(key)
            && (&a.node != node || generation > a.generation)
            && !self.withdraws(node, key, generation)
        {
            return Err(stale(format!(
                "it is assigned to node {} at generation {}",
                a.node, a.generation
            )));
        }
        if generation > MAX_GENERATION {
            return Err(ControlError::Invalid {
                field: "generation",
                message: format!("{generation} is beyond the largest generation, {MAX_GENERATION}"),
            });
        }
        if !stored.running && generation == stored.generation && (detail.is_none() || detail == stored.detail)
        {
            let stopped = stored.clone();
            self.heartbeat(node, now, changes)?;
            return Ok((stopped, Effect::Unchanged));
        }
        let mut stopped = stored.clone();
        // A new stop (of a running container, or of a newer life of a stopped one) is dated
        // now and belongs to the node that stopped it, whose floor it raises once swept.
        if stored.running || generation > stored.generation || stored.stopped_at.is_none() {
            stopped.stopped_at = Some(super::unix_now());
            stopped.node = node.clone();
        }
        stopped.running = false;
        stopped.ready = false;
        stopped.generation = generation;
        if detail.is_some() {
            stopped.detail = detail;
        }
        self.heartbeat(node, now, changes)?;
        self.store_container(stopped.clone(), changes);
        Ok((stopped, Effect::Updated))
    }

    /// Anti-entropy: `reports` is everything running on `node`; anything else the node had
    /// is stopped. All or nothing: one stale report refuses the whole list.
    pub fn replace_containers(
        &mut self,
        node: &Label,
        reports: Vec<(ContainerKey, Report)>,
        now: Instant,
        changes: &mut Changes,
    ) -> Result<ReplaceSummary, ControlError> {
        self.node(node)?;
        let mut seen = BTreeSet::new();
        for (key, report) in &reports {
            if !seen.insert(key.clone()) {
                return Err(ControlError::Invalid {
                    field: "containers",
                    message: format!("container {key} is listed twice"),
                });
            }
            self.check_report(node, key, report.generation, report.ready)?;
        }
        self.heartbeat(node, now, changes)?;
        let gone: Vec<Container> = self
            .running_on(node)
            .filter(|c| !seen.contains(&c.key))
            .cloned()
            .collect();
        let mut summary = ReplaceSummary::default();
        for mut c in gone {
            c.running = false;
            c.stopped_at = Some(super::unix_now());
            self.store_container(c, changes);
            summary.stopped += 1;
        }
        for (key, report) in reports {
            match self.apply_report(node, key, report, changes).1 {
                Effect::Created => summary.started += 1,
                Effect::Updated => summary.updated += 1,
                Effect::Unchanged => summary.unchanged += 1,
            }
        }
        Ok(summary)
    }
}
