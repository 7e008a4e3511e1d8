//! The writer's in-memory copy of the stored state, plus node leases, and the rules for
//! changing it.
//!
//! Every operation validates first and mutates after, recording each mutation as a store
//! [`Op`] in [`Changes`]: a refused request leaves no trace, an accepted one is exactly what
//! gets committed. Leases live only here (a heartbeat is not worth an fsync); they restart
//! their countdown when the server starts, so a restart does not empty DNS.
//!
//! Split by concern: this file holds nodes, leases, tokens and who may do what;
//! [`reports`] the containers agents report (generation fencing); [`placing`] the bridge to
//! the placement engine; [`stored`] applies batches other instances committed to a shared store.

mod placing;
mod reports;
mod stored;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::auth::{Caller, Principal};
use super::changes::{Changes, Effect};
use super::error::ControlError;
use super::stacks::Stacks;
use crate::model::{Capacity, Container, ContainerKey, Label, Limits, Node, ServiceKey};
use crate::store::{Loaded, Op};

pub use reports::{MAX_GENERATION, ReplaceSummary, Report};

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
    /// A platform node's users (`None`: all); only an admin may set it.
    pub tenants: Option<Vec<Label>>,
}

/// A stored container, ordered and found by its key, so the key is not held twice.
#[derive(Debug)]
struct Held(Container);

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}

impl Eq for Held {}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.key.cmp(&other.0.key)
    }
}

impl std::borrow::Borrow<ContainerKey> for Held {
    fn borrow(&self) -> &ContainerKey {
        &self.0.key
    }
}

/// Container names of one service.
type NameSet = std::collections::HashSet<Label, foldhash::fast::RandomState>;

/// The lease of one node, kept across a reload of the state.
pub type Lease = (Label, Instant, bool);

#[derive(Debug, Default)]
pub struct State {
    nodes: BTreeMap<Label, NodeState>,
    containers: BTreeSet<Held>,
    /// Running and stopped containers last reported by each node.
    by_node: HashMap<Label, BTreeSet<ContainerKey>>,
    /// Running and stopped containers of each service, by name (their user and stack are the
    /// service's): a few bytes per container, where a set of whole keys took a B-tree node
    /// per service.
    by_service: HashMap<ServiceKey, NameSet>,
    /// User token hashes and their users.
    user_tokens: HashMap<String, Label>,
    /// Limits an admin set for a user; the others have `default_limits`.
    user_limits: HashMap<Label, Limits>,
    pub default_limits: Limits,
    /// Declared stacks and where placement put their containers.
    stacks: Stacks,
    /// Per node, the highest generation of its containers whose tombstones were removed
    /// (see [`State::sweep_tombstones`]).
    floors: HashMap<Label, u64>,
}

/// Seconds since the Unix epoch: when a container stopped.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a sweep of old tombstones did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub removed: usize,
    /// Tombstones stored without a stop time, given one now.
    pub stamped: usize,
}

impl State {
    /// Rebuilds the state as it was last published: nodes stored as lost are lost, the others
    /// live with a lease starting at `now`. See [`State::restart_leases`].
    pub fn from_loaded(mut loaded: Loaded, now: Instant) -> Self {
        let names: Vec<Label> = loaded.nodes.iter().map(|n| n.name.clone()).collect();
        let mut state = State {
            stacks: Stacks::from_loaded(&mut loaded, names),
            ..State::default()
        };
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
        let mut containers = loaded.containers;
        for c in &mut containers {
            // Records stored before `placed` existed: where they match their assignment, they
            // are the placed container (so they drain, rather than vanish, once it goes).
            c.placed |= state
                .stacks
                .assignment(&c.key)
                .is_some_and(|a| a.node == c.node && a.generation == c.generation);
            state.index(c);
        }
        // Collected in bulk (sorted once, then built in one pass), not by a million inserts.
        state.containers = containers.into_iter().map(Held).collect();
        state.floors = loaded.floors.into_iter().collect();
        state.user_tokens = loaded.user_tokens.into_iter().collect();
        state.user_limits = loaded.user_limits.into_iter().collect();
        state
    }

    /// Every live node's lease restarts its countdown at `now`, so a restart of stackdns does
    /// not empty DNS. Nodes that were lost stay lost until their agent sends a heartbeat.
    pub fn restart_leases(&mut self, now: Instant) {
        for n in self.nodes.values_mut().filter(|n| n.live) {
            n.last_seen = now;
        }
    }

    /// Every node's lease, to carry over a reload.
    pub fn leases(&self) -> Vec<Lease> {
        self.nodes
            .iter()
            .map(|(k, n)| (k.clone(), n.last_seen, n.live))
            .collect()
    }

    /// Puts back leases taken with [`State::leases`] (nodes since deleted are skipped).
    pub fn restore_leases(&mut self, leases: Vec<Lease>) {
        for (name, last_seen, live) in leases {
            if let Some(n) = self.nodes.get_mut(&name) {
                n.last_seen = last_seen;
                n.live = live;
            }
        }
    }

    /// Puts back when each node was last heard from, keeping whether it is lost as it is now
    /// (as stored, after a shared store was read again: a flag only memory held is gone).
    pub fn restore_last_seen(&mut self, leases: Vec<Lease>) {
        for (name, last_seen, _) in leases {
            if let Some(n) = self.nodes.get_mut(&name) {
                n.last_seen = last_seen;
            }
        }
    }

    /// A store op per node recording whether it is lost, for when the stored lease flags may
    /// lag behind memory.
    pub fn lease_ops(&self) -> impl Iterator<Item = Op> + '_ {
        self.nodes
            .values()
            .map(|n| Op::SetLost(n.node.name.clone(), !n.live))
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeState> {
        self.nodes.values()
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn containers(&self) -> impl Iterator<Item = &Container> {
        self.containers.iter().map(|h| &h.0)
    }

    pub fn container(&self, key: &ContainerKey) -> Option<&Container> {
        self.containers.get(key).map(|h| &h.0)
    }

    pub fn stacks(&self) -> &Stacks {
        &self.stacks
    }

    /// The nodes whose assignments changed since the last call (see [`Stacks::take_touched`]).
    pub fn take_touched_nodes(&mut self) -> std::collections::BTreeSet<Label> {
        self.stacks.take_touched()
    }

    fn index(&mut self, c: &Container) {
        self.by_node
            .entry(c.node.clone())
            .or_default()
            .insert(c.key.clone());
        self.by_service
            .entry(c.service_key())
            .or_default()
            .insert(c.key.name.clone());
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
            keys.remove(&c.key.name);
            if keys.is_empty() {
                self.by_service.remove(&service);
            }
        }
    }

    fn store_container(&mut self, c: Container, changes: &mut Changes) {
        changes.ops.push(Op::PutContainer(c.clone()));
        self.hold(c, changes);
    }

    /// Puts `c` in memory and in the indexes, replacing the record of the same key, and marks
    /// the names it and the one it replaces touch (without recording a store op).
    fn hold(&mut self, c: Container, changes: &mut Changes) {
        if let Some(old) = self.container(&c.key).cloned() {
            self.unindex(&old);
            changes.services.insert(old.service_key());
        }
        self.index(&c);
        changes.containers.insert(c.key.clone());
        changes.services.insert(c.service_key());
        self.containers.replace(Held(c));
    }

    /// Removes the tombstones that stopped more than `retention` before `now` (Unix seconds),
    /// at most `max` of them, first raising the floor of each one's node to its generation, so
    /// a late report from before its stop is still refused ([`State::check_floor`]). Tombstones
    /// stored without a stop time get `now`, so they go one retention later.
    pub fn sweep_tombstones(
        &mut self,
        retention: Duration,
        now: u64,
        max: usize,
        changes: &mut Changes,
    ) -> Swept {
        // Stop times are whole seconds: strictly before the cutoff keeps every tombstone at
        // least `retention`.
        let cutoff = now.saturating_sub(retention.as_secs());
        let mut expired = Vec::new();
        let mut unstamped = Vec::new();
        for c in self.containers().filter(|c| !c.running) {
            if expired.len() + unstamped.len() >= max {
                break;
            }
            match c.stopped_at {
                Some(at) if at < cutoff => expired.push(c.key.clone()),
                Some(_) => {}
                None => unstamped.push(c.key.clone()),
            }
        }
        let swept = Swept {
            removed: expired.len(),
            stamped: unstamped.len(),
        };
        for key in unstamped {
            if let Some(mut c) = self.container(&key).cloned() {
                c.stopped_at = Some(now);
                self.store_container(c, changes);
            }
        }
        let mut raised = BTreeMap::new();
        for key in expired {
            let Some(Held(c)) = self.containers.take(&key) else {
                continue;
            };
            self.unindex(&c);
            // Stored whenever it is new or higher, a floor of 0 included: memory and the
            // database must agree after a restart.
            if self.floors.get(&c.node).is_none_or(|&floor| c.generation > floor) {
                self.floors.insert(c.node.clone(), c.generation);
                raised.insert(c.node.clone(), c.generation);
            }
            changes.containers.insert(c.key.clone());
            changes.services.insert(c.service_key());
            changes.ops.push(Op::DeleteContainer(c.key));
        }
        for (node, floor) in raised {
            changes.ops.push(Op::PutFloor(node, floor));
        }
        swept
    }

    /// A node's floor, if tombstones of its containers were removed.
    pub fn floor(&self, node: &Label) -> Option<u64> {
        self.floors.get(node).copied()
    }

    /// Every service with a name in DNS: those with known containers, then the declared ones
    /// without any.
    pub fn services(&self) -> impl Iterator<Item = ServiceKey> + '_ {
        let declared = self
            .stacks
            .declared_keys()
            .filter(|k| !self.by_service.contains_key(*k))
            .cloned();
        self.by_service.keys().cloned().chain(declared)
    }

    /// Where a container answers in DNS: only while it runs, ready, on a live node; in a
    /// declared stack, only where placement put it (or while it drains there).
    pub fn live_address(&self, c: &Container) -> Option<IpAddr> {
        let node = self
            .nodes
            .get(&c.node)
            .filter(|n| n.live && c.running && c.ready)?;
        let declared = self.stacks.get(&c.key.user, &c.key.stack).is_some();
        // A discovery container answers only while its node serves its user.
        if !declared && !node.node.serves(&c.key.user) {
            return None;
        }
        if !c.placed && declared {
            let assigned = self
                .stacks
                .assignment(&c.key)
                .is_some_and(|a| a.node == c.node && a.generation == c.generation);
            if !assigned {
                return None;
            }
        }
        Some(c.address.unwrap_or(node.node.address))
    }

    /// Every stored container of stack `user`/`stack`, in name order.
    pub fn containers_of_stack<'a>(
        &'a self,
        user: &'a Label,
        stack: &'a Label,
    ) -> impl Iterator<Item = &'a ContainerKey> + 'a {
        // "0" sorts before every other label, so the range starts at the stack's first name.
        let first = Label::parse("container", "0").ok().map(|name| ContainerKey {
            user: user.clone(),
            stack: stack.clone(),
            name,
        });
        first
            .into_iter()
            .flat_map(move |first| {
                self.containers
                    .range::<ContainerKey, _>(first..)
                    .map(|h| &h.0.key)
            })
            .take_while(move |k| &k.user == user && &k.stack == stack)
    }

    /// Whether `node` exists and its lease is current.
    pub fn node_is_live(&self, node: &Label) -> bool {
        self.nodes.get(node).is_some_and(|n| n.live)
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
            .filter_map(|name| {
                self.container(&ContainerKey {
                    user: service.user.clone(),
                    stack: service.stack.clone(),
                    name: name.clone(),
                })
            })
    }

    /// Running containers last reported by `node`.
    pub fn running_on(&self, node: &Label) -> impl Iterator<Item = &Container> {
        self.by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|k| self.container(k))
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

    /// Checks that `caller` may register, change or remove node `name`: the admin any node;
    /// a user only a node of their own (a new one becomes theirs). Answers the owner the node
    /// has (or gets).
    pub fn authorize_node_admin(
        &self,
        caller: &Caller,
        name: &Label,
        spec: Option<&NodeSpec>,
    ) -> Result<Option<Label>, ControlError> {
        let existing = self.nodes.get(name).map(|n| &n.node);
        match caller {
            Caller::Admin => Ok(existing.and_then(|n| n.owner.clone())),
            Caller::User { user, .. } if self.may_act_for(caller, user) => {
                if spec.is_some_and(|s| s.tenants.is_some()) {
                    return Err(ControlError::Forbidden(
                        "tenants: only an admin opens a platform node to users; a user's node serves that user alone"
                            .to_owned(),
                    ));
                }
                match existing {
                    // Reading or removing another's node looks like a missing one; registering
                    // a taken name must say it is taken.
                    Some(n) if n.owner.as_ref() != Some(user) && spec.is_none() => {
                        Err(ControlError::NotFound {
                            what: "node",
                            name: name.to_string(),
                        })
                    }
                    Some(n) if n.owner.as_ref() != Some(user) => Err(ControlError::Forbidden(format!(
                        "node name {name} is taken: a user token acts on the nodes it registered"
                    ))),
                    None if spec.is_none() => Err(ControlError::NotFound {
                        what: "node",
                        name: name.to_string(),
                    }),
                    None => {
                        let owned = self
                            .nodes
                            .values()
                            .filter(|n| n.node.owner.as_ref() == Some(user))
                            .count();
                        let max = self.limits_of(user).max_nodes;
                        if owned as u64 >= u64::from(max) {
                            return Err(ControlError::QuotaExceeded {
                                message: format!(
                                    "user {user} may register at most {max} nodes and has {owned}; remove one, \
                                     or ask an admin to raise the limit (PUT /v1/users/{user}/limits)"
                                ),
                            });
                        }
                        Ok(Some(user.clone()))
                    }
                    _ => Ok(Some(user.clone())),
                }
            }
            Caller::User { .. } => Err(ControlError::Unauthorized),
            Caller::Node { .. } => Err(ControlError::Forbidden(
                "this endpoint needs the admin token, or the token of the user who owns the node".to_owned(),
            )),
        }
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

    /// Checks that `caller` may act on `user`'s stacks: the admin, or that user's own token.
    /// A node token is 403; anyone else is told the stack does not exist (404), so a user
    /// cannot learn which other users or stacks there are.
    pub fn authorize_stacks(&self, caller: &Caller, user: &Label, stack: &Label) -> Result<(), ControlError> {
        match caller {
            Caller::Node { .. } => Err(ControlError::Forbidden(
                "a node token cannot act on stacks".to_owned(),
            )),
            _ if self.may_act_for(caller, user) => Ok(()),
            _ => Err(ControlError::NotFound {
                what: "stack",
                name: format!("{user}/{stack}"),
            }),
        }
    }

    /// Whether `caller` may act on `user`'s stacks.
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

    /// What `user` may run.
    pub fn limits_of(&self, user: &Label) -> Limits {
        self.user_limits.get(user).copied().unwrap_or(self.default_limits)
    }

    /// Sets `user`'s limits (an admin's decision; existing containers above them stay).
    pub fn set_limits(&mut self, user: &Label, limits: Limits, changes: &mut Changes) {
        if self.user_limits.get(user) != Some(&limits) {
            self.user_limits.insert(user.clone(), limits);
            changes.ops.push(Op::PutUserLimits(user.clone(), limits));
        }
    }

    /// How much `user` runs: (containers placement assigned, stacks declared).
    pub fn usage_of(&self, user: &Label) -> (u32, u32) {
        let containers = self.stacks.assigned_to_user(user);
        let stacks = self.stacks.all().filter(|(u, _)| u == user).count();
        (containers as u32, stacks as u32)
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

    /// The node called `name`, or NotFound.
    pub fn node(&self, name: &Label) -> Result<&NodeState, ControlError> {
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
        owner: Option<Label>,
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
            owner,
            tenants: spec.tenants,
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
            c.stopped_at = Some(unix_now());
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

    /// Marks nodes whose last heartbeat is older than `ttl` as lost; returns how many.
    pub fn expire_leases(&mut self, now: Instant, ttl: Duration, changes: &mut Changes) -> u64 {
        let mut lost = 0;
        for n in self.nodes.values_mut() {
            if n.live && now.saturating_duration_since(n.last_seen) > ttl {
                lost += 1;
                n.live = false;
                changes.nodes.insert(n.node.name.clone());
                changes.ops.push(Op::SetLost(n.node.name.clone(), true));
                tracing::warn!(node = %n.node.name, ttl_s = ttl.as_secs_f64(), "node lease lapsed; node is lost and its containers leave DNS");
            }
        }
        lost
    }
}

/// Only the admin token may do this.
pub fn require_admin(caller: &Caller) -> Result<(), ControlError> {
    match caller {
        Caller::Admin => Ok(()),
        Caller::Node { .. } | Caller::User { .. } => Err(ControlError::Forbidden(
            "this endpoint needs the admin token; node and user tokens act on their own node or stacks"
                .to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests;
