//! The writer's in-memory copy of the stored state, plus node leases, and the rules for
//! changing it.
//!
//! Every operation validates first and mutates after, recording each mutation as a store
//! [`Op`]: a refused request leaves no trace, an accepted one is exactly what gets committed.
//! Leases live only here (a heartbeat is not worth an fsync); they restart their countdown
//! when the server starts, so a restart does not empty DNS.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::ControlError;
use crate::model::{Capacity, Container, ContainerKey, Label, Node, Port, ServiceKey};
use crate::store::{Loaded, Op};

/// Who sent a request, as far as the API could tell without the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin,
    /// A node's token, by its SHA-256 (hex), as the published token index knew it.
    Node {
        node: Label,
        token_sha256: String,
    },
    /// A user's token: it may act on that user's stacks only.
    User {
        user: Label,
        token_sha256: String,
    },
}

/// Whom a non-admin token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Node(Label),
    User(Label),
}

/// A registered node and its lease.
#[derive(Debug, Clone)]
pub struct NodeState {
    pub node: Node,
    pub last_seen: Instant,
    /// False once the lease lapsed (`lost`): its containers leave DNS.
    pub live: bool,
}

/// What an admin declares about a node.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub address: IpAddr,
    pub labels: BTreeMap<String, String>,
    pub tags: Vec<Label>,
    pub capacity: Option<Capacity>,
}

/// What an agent reports about one running container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub service: Label,
    pub address: Option<IpAddr>,
    pub ports: Vec<Port>,
    pub generation: u64,
}

/// Generations above this are refused: room is left above any reported one, so a
/// redeploy or a move can always go one higher.
pub const MAX_GENERATION: u64 = 1 << 53;

/// What one batch of operations changed: what to store, and which DNS names to recompute.
#[derive(Debug, Default)]
pub struct Changes {
    pub ops: Vec<Op>,
    /// Nodes whose address, existence or lease changed (their containers follow).
    pub nodes: BTreeSet<Label>,
    pub containers: BTreeSet<ContainerKey>,
    pub services: BTreeSet<ServiceKey>,
    /// A token was issued or revoked: the API's token index must be republished.
    pub tokens_changed: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.nodes.is_empty() && self.containers.is_empty() && self.services.is_empty()
    }
}

/// Whether an operation changed anything (an identical re-report does not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Created,
    Updated,
    Unchanged,
}

#[derive(Debug, Default)]
pub struct State {
    pub nodes: BTreeMap<Label, NodeState>,
    pub containers: BTreeMap<ContainerKey, Container>,
    /// Running and stopped containers last reported by each node.
    by_node: HashMap<Label, BTreeSet<ContainerKey>>,
    /// Running and stopped containers of each service.
    by_service: HashMap<ServiceKey, BTreeSet<ContainerKey>>,
    /// User token hashes and their users.
    user_tokens: HashMap<String, Label>,
    /// Declared stacks and where placement put their containers.
    pub stacks: super::stacks::Stacks,
}

impl State {
    /// Rebuilds the state as it was last published: nodes stored as lost are lost, the others
    /// live with a lease starting at `now`. See [`State::restart_leases`].
    pub fn from_loaded(loaded: Loaded, now: Instant) -> Self {
        let mut state = State::default();
        let lost: BTreeSet<Label> = loaded.lost.into_iter().collect();
        for node in loaded.nodes {
            let live = !lost.contains(&node.name);
            state.nodes.insert(
                node.name.clone(),
                NodeState {
                    node,
                    last_seen: now,
                    live,
                },
            );
        }
        for c in loaded.containers {
            state.index(&c);
            state.containers.insert(c.key.clone(), c);
        }
        state.user_tokens = loaded.user_tokens.into_iter().collect();
        state
    }

    /// Every live node's lease restarts its countdown at `now`, so a restart of stackdns does
    /// not empty DNS. Nodes that were lost stay lost until their agent sends a heartbeat.
    pub fn restart_leases(&mut self, now: Instant) {
        for n in self.nodes.values_mut().filter(|n| n.live) {
            n.last_seen = now;
        }
    }

    fn index(&mut self, c: &Container) {
        self.by_node
            .entry(c.node.clone())
            .or_default()
            .insert(c.key.clone());
        self.by_service
            .entry(c.service_key())
            .or_default()
            .insert(c.key.clone());
    }

    fn unindex(&mut self, c: &Container) {
        if let Some(keys) = self.by_node.get_mut(&c.node) {
            keys.remove(&c.key);
            if keys.is_empty() {
                self.by_node.remove(&c.node);
            }
        }
        let service = c.service_key();
        if let Some(keys) = self.by_service.get_mut(&service) {
            keys.remove(&c.key);
            if keys.is_empty() {
                self.by_service.remove(&service);
            }
        }
    }

    fn store_container(&mut self, c: Container, changes: &mut Changes) {
        if let Some(old) = self.containers.get(&c.key).cloned() {
            self.unindex(&old);
            changes.services.insert(old.service_key());
        }
        self.index(&c);
        changes.containers.insert(c.key.clone());
        changes.services.insert(c.service_key());
        changes.ops.push(Op::PutContainer(c.clone()));
        self.containers.insert(c.key.clone(), c);
    }

    /// Every node, container and service marked changed: for building DNS from scratch.
    pub fn everything(&self) -> Changes {
        Changes {
            ops: Vec::new(),
            nodes: self.nodes.keys().cloned().collect(),
            containers: self.containers.keys().cloned().collect(),
            services: self
                .by_service
                .keys()
                .cloned()
                .chain(self.declared_services().into_iter().map(|s| s.key))
                .collect(),
            tokens_changed: false,
        }
    }

    /// Where a container answers in DNS: only while it runs on a live node.
    pub fn live_address(&self, c: &Container) -> Option<IpAddr> {
        let node = self.nodes.get(&c.node).filter(|n| n.live && c.running)?;
        Some(c.address.unwrap_or(node.node.address))
    }

    /// Every known container (running or stopped) last reported by `node`.
    pub fn containers_of_node(&self, node: &Label) -> impl Iterator<Item = &ContainerKey> {
        self.by_node.get(node).into_iter().flatten()
    }

    /// Every known container (running or stopped) of `service`.
    pub fn containers_of_service(&self, service: &ServiceKey) -> impl Iterator<Item = &Container> {
        self.by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|k| self.containers.get(k))
    }

    /// Running containers last reported by `node`.
    pub fn running_on(&self, node: &Label) -> impl Iterator<Item = &Container> {
        self.by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|k| self.containers.get(k))
            .filter(|c| c.running)
    }

    /// Checks that `caller` may act on node `name`: the admin, or that node's own token.
    ///
    /// A token that no longer belongs to its node is 401; another node's token is 403.
    pub fn authorize_node(&self, caller: &Caller, name: &Label) -> Result<(), ControlError> {
        let (node, token_sha256) = match caller {
            Caller::Admin => return Ok(()),
            Caller::Node { node, token_sha256 } => (node, token_sha256),
            Caller::User { .. } => {
                return Err(ControlError::Forbidden(
                    "a user token may act on its own stacks only, not on nodes".to_owned(),
                ));
            }
        };
        // Checked again here: the token may have been rotated since the index was read.
        let current = self
            .nodes
            .get(node)
            .is_some_and(|n| &n.node.token_sha256 == token_sha256);
        if !current {
            return Err(ControlError::Unauthorized);
        }
        if node != name {
            return Err(ControlError::Forbidden(format!(
                "this token belongs to node {node}; it may only act on that node, not on {name}"
            )));
        }
        Ok(())
    }

    /// Node token hashes and their nodes, for the API to recognise callers without a job.
    pub fn token_index(&self) -> HashMap<String, Principal> {
        let nodes = self
            .nodes
            .values()
            .map(|n| (n.node.token_sha256.clone(), Principal::Node(n.node.name.clone())));
        let users = self
            .user_tokens
            .iter()
            .map(|(hash, user)| (hash.clone(), Principal::User(user.clone())));
        nodes.chain(users).collect()
    }

    /// Whether `caller` may act on `user`'s stacks. Anyone else is told the stack does not
    /// exist (404), so a user cannot learn which other users or stacks there are.
    pub fn may_act_for(&self, caller: &Caller, user: &Label) -> bool {
        match caller {
            Caller::Admin => true,
            Caller::User {
                user: u,
                token_sha256,
            } => u == user && self.user_tokens.get(token_sha256) == Some(u),
            Caller::Node { .. } => false,
        }
    }

    /// Issues a user token (by its hash).
    pub fn add_user_token(&mut self, user: &Label, token_sha256: String, changes: &mut Changes) {
        changes
            .ops
            .push(Op::PutUserToken(token_sha256.clone(), user.clone()));
        changes.tokens_changed = true;
        self.user_tokens.insert(token_sha256, user.clone());
    }

    /// Revokes every token of `user`; returns how many there were.
    pub fn revoke_user_tokens(&mut self, user: &Label, changes: &mut Changes) -> usize {
        let before = self.user_tokens.len();
        self.user_tokens.retain(|_, u| u != user);
        let revoked = before - self.user_tokens.len();
        if revoked > 0 {
            changes.ops.push(Op::DeleteUserTokens(user.clone()));
            changes.tokens_changed = true;
        }
        revoked
    }

    fn node(&self, name: &Label) -> Result<&NodeState, ControlError> {
        self.nodes.get(name).ok_or_else(|| ControlError::NotFound {
            what: "node",
            name: name.to_string(),
        })
    }

    /// Creates or updates a node. A new node gets `token_sha256`; an existing one keeps its own.
    pub fn put_node(
        &mut self,
        name: &Label,
        spec: NodeSpec,
        token_sha256: String,
        now: Instant,
        changes: &mut Changes,
    ) -> Effect {
        let existing = self.nodes.get(name);
        let node = Node {
            name: name.clone(),
            address: spec.address,
            labels: spec.labels,
            tags: spec.tags,
            capacity: spec.capacity,
            token_sha256: existing.map_or(token_sha256, |n| n.node.token_sha256.clone()),
        };
        let effect = match existing {
            None => Effect::Created,
            Some(n) if n.node == node => return Effect::Unchanged,
            Some(_) => Effect::Updated,
        };
        changes.ops.push(Op::PutNode(node.clone()));
        changes.nodes.insert(name.clone());
        let (last_seen, live) = existing.map_or((now, true), |n| (n.last_seen, n.live));
        self.nodes.insert(
            name.clone(),
            NodeState {
                node,
                last_seen,
                live,
            },
        );
        effect
    }

    /// Replaces a node's token hash (the old token stops working).
    pub fn set_node_token(
        &mut self,
        name: &Label,
        token_sha256: String,
        changes: &mut Changes,
    ) -> Result<(), ControlError> {
        self.node(name)?;
        if let Some(n) = self.nodes.get_mut(name) {
            n.node.token_sha256 = token_sha256;
            changes.ops.push(Op::PutNode(n.node.clone()));
        }
        Ok(())
    }

    /// Removes a node; its containers stay as tombstones so stale reports stay fenced.
    pub fn delete_node(&mut self, name: &Label, changes: &mut Changes) -> Result<Node, ControlError> {
        self.node(name)?;
        let running: Vec<Container> = self.running_on(name).cloned().collect();
        for mut c in running {
            c.running = false;
            self.store_container(c, changes);
        }
        changes.ops.push(Op::DeleteNode(name.clone()));
        changes.ops.push(Op::SetLost(name.clone(), false));
        changes.nodes.insert(name.clone());
        let removed = self.nodes.remove(name).map(|n| n.node);
        removed.ok_or_else(|| ControlError::NotFound {
            what: "node",
            name: name.to_string(),
        })
    }

    /// Renews a node's lease; a lost node comes back (and so do its containers in DNS).
    pub fn heartbeat(
        &mut self,
        name: &Label,
        now: Instant,
        changes: &mut Changes,
    ) -> Result<(), ControlError> {
        self.node(name)?;
        if let Some(n) = self.nodes.get_mut(name) {
            n.last_seen = now;
            if !n.live {
                n.live = true;
                changes.nodes.insert(name.clone());
                changes.ops.push(Op::SetLost(name.clone(), false));
                tracing::info!(node = %name, "node lease renewed; node is live again");
            }
        }
        Ok(())
    }

    /// Marks nodes whose last heartbeat is older than `ttl` as lost.
    pub fn expire_leases(&mut self, now: Instant, ttl: Duration, changes: &mut Changes) {
        for n in self.nodes.values_mut() {
            if n.live && now.saturating_duration_since(n.last_seen) > ttl {
                n.live = false;
                changes.nodes.insert(n.node.name.clone());
                changes.ops.push(Op::SetLost(n.node.name.clone(), true));
                tracing::warn!(node = %n.node.name, ttl_s = ttl.as_secs_f64(), "node lease lapsed; node is lost and its containers leave DNS");
            }
        }
    }

    /// Checks a report against the fence without changing anything.
    fn check_report(&self, node: &Label, key: &ContainerKey, generation: u64) -> Result<(), ControlError> {
        if generation > MAX_GENERATION {
            return Err(ControlError::Invalid {
                field: "generation",
                message: format!("{generation} is beyond the largest generation, {MAX_GENERATION}"),
            });
        }
        // A placed container may only be reported by the node it is assigned to, at most at
        // the generation placement gave it: no node can take over another's containers.
        if let Some(a) = self.stacks.assignments.get(key) {
            if &a.node != node || generation > a.generation {
                return Err(ControlError::StaleGeneration {
                    container: key.to_string(),
                    stored: a.generation,
                    reported: generation,
                    detail: format!("it is assigned to node {} at generation {}", a.node, a.generation),
                });
            }
        }
        let Some(stored) = self.containers.get(key) else {
            return Ok(());
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
        self.check_report(node, &key, report.generation)?;
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
        let container = Container {
            key,
            node: node.clone(),
            service: report.service,
            address: report.address,
            ports: report.ports,
            generation: report.generation,
            running: true,
        };
        let effect = match self.containers.get(&container.key) {
            Some(old) if *old == container => return (container, Effect::Unchanged),
            Some(old) if old.running => Effect::Updated,
            _ => Effect::Created,
        };
        self.store_container(container.clone(), changes);
        (container, effect)
    }

    /// Records that `key` stopped on `node`. Without a generation, the stored one is used.
    pub fn delete_container(
        &mut self,
        node: &Label,
        key: &ContainerKey,
        generation: Option<u64>,
        now: Instant,
        changes: &mut Changes,
    ) -> Result<(Container, Effect), ControlError> {
        self.node(node)?;
        let stored = self.containers.get(key).ok_or_else(|| ControlError::NotFound {
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
        if let Some(a) = self.stacks.assignments.get(key) {
            if &a.node != node || generation > a.generation {
                return Err(stale(format!(
                    "it is assigned to node {} at generation {}",
                    a.node, a.generation
                )));
            }
        }
        if generation > MAX_GENERATION {
            return Err(ControlError::Invalid {
                field: "generation",
                message: format!("{generation} is beyond the largest generation, {MAX_GENERATION}"),
            });
        }
        if !stored.running && generation == stored.generation {
            let stopped = stored.clone();
            self.heartbeat(node, now, changes)?;
            return Ok((stopped, Effect::Unchanged));
        }
        let mut stopped = stored.clone();
        stopped.running = false;
        stopped.generation = generation;
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
            self.check_report(node, key, report.generation)?;
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

/// What an anti-entropy report changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ReplaceSummary {
    pub started: usize,
    pub updated: usize,
    pub stopped: usize,
    pub unchanged: usize,
}

#[cfg(test)]
mod tests;
