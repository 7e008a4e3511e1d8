//! The placement index: every assignment, and what it claims on its node, kept between plans.
//!
//! The caller owns one [`Index`] for the life of the process. A plan reads it and works on it
//! in place, then puts it back as it was ([`crate::placement::plan`]); the caller makes a plan
//! current with [`Index::apply`]. So a change that touches ten containers among a million
//! costs ten containers' work, not an indexing of the million: per node the claimed count,
//! memory, host ports and container keys ([`Load`]), live nodes ordered emptiest first (overall
//! and per (region, provider) group), and per service its containers by number.
//!
//! Nodes are identified by name; the node list is replaced whole ([`Index::set_nodes`], cheap
//! when it did not change) and the claims follow by name, so an assignment on a node that is
//! not registered (any more, or yet) is still counted and found there when it comes back.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::RangeInclusive;

use foldhash::fast::FixedState;

use super::node::{DynamicRange, Load, NodeState};
use super::{Assignment, NodeInfo, Plan};
use crate::model::{ContainerKey, Label, ServiceKey};

/// The label values `high_availability` spreads across, after spreading across nodes.
const REGION: &str = "region";
const PROVIDER: &str = "provider";

/// Lookups only, never iterated, so the order of the hash never reaches a plan; a fixed seed
/// all the same, so the engine holds no randomness at all.
pub(super) type Map<K, V> = HashMap<K, V, FixedState>;

/// The live nodes sharing one (region, provider) pair, emptiest first.
#[derive(Debug)]
pub(super) struct Group {
    pub region: usize,
    pub provider: usize,
    pub emptiest: BTreeSet<(u32, usize)>,
}

/// Every assignment and the claims it makes, indexed for placement (see the module header).
#[derive(Debug)]
pub struct Index {
    /// Registered nodes, sorted by name: index order is name order, which is every tie-break.
    pub(super) nodes: Vec<NodeState>,
    by_name: Map<Label, usize>,
    /// Indices of the live nodes, in name order.
    live: Vec<usize>,
    /// Live nodes by (containers, index): `emptiest_node` takes the first that fits.
    emptiest: BTreeSet<(u32, usize)>,
    groups: Vec<Group>,
    regions: usize,
    providers: usize,
    /// Claims on nodes that are not registered.
    elsewhere: BTreeMap<Label, Load>,
    pub(super) dynamic: DynamicRange,
    assignments: BTreeMap<ContainerKey, Assignment>,
    /// Each service's containers by number; a name that is not `<service>-<n>` sorts last
    /// (number `u32::MAX`).
    members: Map<ServiceKey, BTreeSet<(u32, Label)>>,
    /// How many containers each user has: quotas are checked on every plan.
    per_user: Map<Label, usize>,
}

impl Index {
    /// An empty index whose nodes hand out dynamic host ports from `dynamic_ports`.
    pub fn new(dynamic_ports: &RangeInclusive<u16>) -> Self {
        Index {
            nodes: Vec::new(),
            by_name: Map::default(),
            live: Vec::new(),
            emptiest: BTreeSet::new(),
            groups: Vec::new(),
            regions: 1,
            providers: 1,
            elsewhere: BTreeMap::new(),
            dynamic: DynamicRange::new(dynamic_ports),
            assignments: BTreeMap::new(),
            members: Map::default(),
            per_user: Map::default(),
        }
    }

    /// Indexes `nodes` and `assignments`. Duplicate node names or container keys keep their
    /// first occurrence.
    pub fn build(
        nodes: &[NodeInfo],
        assignments: impl IntoIterator<Item = Assignment>,
        dynamic_ports: &RangeInclusive<u16>,
    ) -> Self {
        let mut index = Index::new(dynamic_ports);
        index.set_nodes(nodes.to_vec());
        for a in assignments {
            if !index.assignments.contains_key(&a.container) {
                index.insert(a);
            }
        }
        index
    }

    /// Replaces the node list (placement's view of registrations and leases). Nothing is done
    /// when it is the same list; otherwise O(nodes): claims move by name, no assignment is
    /// looked at. Duplicate names keep their first occurrence.
    pub fn set_nodes(&mut self, mut infos: Vec<NodeInfo>) {
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        infos.dedup_by(|a, b| a.name == b.name);
        if infos.len() == self.nodes.len() && infos.iter().zip(&self.nodes).all(|(a, b)| *a == b.info) {
            return;
        }
        let mut loads = std::mem::take(&mut self.elsewhere);
        for node in std::mem::take(&mut self.nodes) {
            loads.insert(node.info.name, node.load);
        }
        let refs: Vec<&NodeInfo> = infos.iter().collect();
        let (regions, region_of) = intern(&refs, REGION);
        let (providers, provider_of) = intern(&refs, PROVIDER);
        let pairs: BTreeSet<(usize, usize)> = region_of
            .iter()
            .copied()
            .zip(provider_of.iter().copied())
            .collect();
        let group_of: BTreeMap<(usize, usize), usize> =
            pairs.iter().enumerate().map(|(g, p)| (*p, g)).collect();
        self.groups = pairs
            .iter()
            .map(|&(region, provider)| Group {
                region,
                provider,
                emptiest: BTreeSet::new(),
            })
            .collect();
        self.nodes = Vec::with_capacity(infos.len());
        for (i, info) in infos.into_iter().enumerate() {
            let (region, provider) = (region_of[i], provider_of[i]);
            let group = group_of.get(&(region, provider)).copied().unwrap_or(0);
            let load = loads.remove(&info.name).unwrap_or_default();
            self.nodes
                .push(NodeState::new(info, load, region, provider, group));
        }
        // What is left is claimed on nodes no longer registered; empty loads are not kept.
        loads.retain(|_, load| !load.keys.is_empty());
        self.elsewhere = loads;
        self.regions = regions;
        self.providers = providers;
        self.by_name = (self.nodes.iter().enumerate())
            .map(|(i, n)| (n.info.name.clone(), i))
            .collect();
        self.live = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].info.live)
            .collect();
        self.emptiest.clear();
        for &i in &self.live {
            let node = &self.nodes[i];
            self.emptiest.insert((node.containers(), i));
            self.groups[node.group].emptiest.insert((node.containers(), i));
        }
    }

    /// Makes a plan current: every container it changed gets its new assignment (or none).
    pub fn apply(&mut self, plan: &Plan) {
        for change in &plan.assignments {
            self.set(&change.container, change.after.clone());
        }
    }

    /// The assignment of `key`.
    pub fn get(&self, key: &ContainerKey) -> Option<&Assignment> {
        self.assignments.get(key)
    }

    /// How many containers are assigned.
    pub fn len(&self) -> usize {
        self.assignments.len()
    }

    pub fn is_empty(&self) -> bool {
        self.assignments.is_empty()
    }

    /// Every assignment, by container.
    pub fn assignments(&self) -> impl Iterator<Item = &Assignment> {
        self.assignments.values()
    }

    /// How many containers `user` has.
    pub fn count_of_user(&self, user: &Label) -> usize {
        self.per_user.get(user).copied().unwrap_or(0)
    }

    /// The assignments of one stack's containers, by container.
    pub fn of_stack<'a>(
        &'a self,
        user: &'a Label,
        stack: &'a Label,
    ) -> impl Iterator<Item = &'a Assignment> + 'a {
        let from = ContainerKey {
            user: user.clone(),
            stack: stack.clone(),
            name: Label::LOWEST,
        };
        (self.assignments.range(from..))
            .take_while(move |(k, _)| &k.user == user && &k.stack == stack)
            .map(|(_, a)| a)
    }

    /// The assignments on node `name` (registered or not), by container.
    pub fn of_node<'a>(&'a self, name: &Label) -> impl Iterator<Item = &'a Assignment> + 'a {
        let load = match self.by_name.get(name) {
            Some(&i) => Some(&self.nodes[i].load),
            None => self.elsewhere.get(name),
        };
        (load.into_iter())
            .flat_map(|l| l.keys.iter())
            .filter_map(|k| self.assignments.get(k))
    }

    pub(super) fn node_index(&self, name: &Label) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    pub(super) fn live(&self) -> &[usize] {
        &self.live
    }

    pub(super) fn emptiest(&self) -> impl Iterator<Item = usize> + '_ {
        self.emptiest.iter().map(|&(_, i)| i)
    }

    pub(super) fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.iter().filter(|g| !g.emptiest.is_empty())
    }

    pub(super) fn regions(&self) -> usize {
        self.regions
    }

    pub(super) fn providers(&self) -> usize {
        self.providers
    }

    /// A service's containers by number.
    pub(super) fn members(&self, service: &ServiceKey) -> Option<&BTreeSet<(u32, Label)>> {
        self.members.get(service)
    }

    /// Keys of the containers on nodes that are not registered.
    pub(super) fn unregistered(&self) -> impl Iterator<Item = &ContainerKey> {
        self.elsewhere.values().flat_map(|l| l.keys.iter())
    }

    /// Gives `key` the assignment `to` (`None`: none), releasing what the old one claimed.
    /// Returns the old one.
    /// Makes `to` the assignment of `key` (or none); returns the one it replaced. How an
    /// instance following another's commits applies a stored assignment.
    pub fn set(&mut self, key: &ContainerKey, to: Option<Assignment>) -> Option<Assignment> {
        match to {
            Some(a) => self.insert(a),
            None => self.remove(key),
        }
    }

    /// Records an assignment (replacing one with the same key) and claims its resources.
    /// Returns the one it replaced, whose claims are released first.
    pub(super) fn insert(&mut self, a: Assignment) -> Option<Assignment> {
        let old = self.remove(&a.container);
        self.claim(&a, true);
        (self.members.entry(a.service.clone()).or_default()).insert((number(&a), a.container.name.clone()));
        *self.per_user.entry(a.container.user.clone()).or_default() += 1;
        self.assignments.insert(a.container.clone(), a);
        old
    }

    /// Drops an assignment and releases its resources.
    pub(super) fn remove(&mut self, key: &ContainerKey) -> Option<Assignment> {
        let a = self.assignments.remove(key)?;
        self.claim(&a, false);
        if let Some(members) = self.members.get_mut(&a.service) {
            members.remove(&(number(&a), a.container.name.clone()));
            if members.is_empty() {
                self.members.remove(&a.service);
            }
        }
        if let Some(count) = self.per_user.get_mut(&a.container.user) {
            *count -= 1;
            if *count == 0 {
                self.per_user.remove(&a.container.user);
            }
        }
        Some(a)
    }

    /// Claims or releases a container on its node, keeping the emptiest-first orders in step.
    fn claim(&mut self, a: &Assignment, claim: bool) {
        let Some(i) = self.node_index(&a.node) else {
            let load = self.elsewhere.entry(a.node.clone()).or_default();
            load.claim(a, self.dynamic, claim);
            if load.keys.is_empty() {
                self.elsewhere.remove(&a.node);
            }
            return;
        };
        let node = &mut self.nodes[i];
        let before = (node.containers(), i);
        node.load.claim(a, self.dynamic, claim);
        let after = (node.containers(), i);
        if node.info.live {
            self.emptiest.remove(&before);
            self.emptiest.insert(after);
            let group = &mut self.groups[node.group].emptiest;
            group.remove(&before);
            group.insert(after);
        }
    }
}

/// The container's `n` of `<service>-<n>` (see [`number_in`]).
pub(super) fn number(a: &Assignment) -> u32 {
    number_in(&a.service.service, &a.container.name)
}

/// `n` of `<service>-<n>`, written without leading zeros; anything else is `u32::MAX`.
pub(super) fn number_in(service: &Label, name: &Label) -> u32 {
    (name.as_str().strip_prefix(service.as_str()))
        .and_then(|rest| rest.strip_prefix('-'))
        .filter(|n| !n.starts_with('0'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(u32::MAX)
}

/// Numbers the distinct values of label `key` over `nodes` in sorted order (a missing label
/// is a value of its own): how many values, and each node's.
fn intern(nodes: &[&NodeInfo], key: &str) -> (usize, Vec<usize>) {
    fn value<'n>(n: &'n NodeInfo, key: &str) -> Option<&'n str> {
        n.labels.get(key).map(String::as_str)
    }
    let values: BTreeSet<Option<&str>> = nodes.iter().map(|n| value(n, key)).collect();
    let ids: BTreeMap<Option<&str>, usize> = values.into_iter().enumerate().map(|(i, v)| (v, i)).collect();
    let of = nodes
        .iter()
        .map(|n| ids.get(&value(n, key)).copied().unwrap_or(0))
        .collect();
    (ids.len().max(1), of)
}
