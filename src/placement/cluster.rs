//! The working state of one plan: the nodes, the assignments so far, and the indexes that
//! let a check or a ranking avoid rescanning them.
//!
//! Built once from the input, then updated container by container. Per node it keeps what is
//! claimed ([`NodeState`]); live nodes are kept ordered by container count, overall and per
//! (region, provider) group, so the strategies look at the best candidates first; per
//! service, its containers by number and, once it is placed, its counts per node, region and
//! provider. Input assignments are borrowed, not copied, and the keys changed are recorded,
//! so a plan that touches ten containers among a million costs ten comparisons in the diff.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use foldhash::fast::FixedState;

use super::node::{DynamicRange, NodeState};
use super::{Assignment, Input, NodeInfo, Refusal, ServiceSpec};
use crate::model::{ContainerKey, Label, Port, ServiceKey};

/// The label values `high_availability` spreads across, after spreading across nodes.
const REGION: &str = "region";
const PROVIDER: &str = "provider";

/// Lookups only, never iterated, so the order of the hash never reaches a plan; a fixed seed
/// all the same, so the engine holds no randomness at all.
pub(super) type Map<K, V> = HashMap<K, V, FixedState>;

/// An assignment (borrowed from the input until it changes) and its node's index (`None`: the
/// node is not in the input any more).
struct Placed<'a> {
    assignment: Cow<'a, Assignment>,
    node: Option<usize>,
}

/// One service's containers.
#[derive(Default)]
struct Members {
    /// By number; a name that is not `<service>-<n>` sorts last (number `u32::MAX`).
    numbers: BTreeSet<(u32, Label)>,
    /// Built on first placement for this service, then kept up to date.
    spread: Option<Spread>,
}

/// How many containers of one service run per node, region and provider.
pub(super) struct Spread {
    pub per_node: Vec<u32>,
    pub per_region: Vec<u32>,
    pub per_provider: Vec<u32>,
}

/// The live nodes sharing one (region, provider) pair, emptiest first.
pub(super) struct Group {
    pub region: usize,
    pub provider: usize,
    pub emptiest: BTreeSet<(u32, usize)>,
}

/// How the assignments differ from the input's, by container key.
#[derive(Default)]
pub(super) struct Diff {
    pub added: Vec<ContainerKey>,
    pub removed: Vec<ContainerKey>,
    pub moved: Vec<ContainerKey>,
    pub redeployed: Vec<ContainerKey>,
}

pub(super) struct Cluster<'a> {
    /// Sorted by name: index order is name order, which is every tie-break.
    pub nodes: Vec<NodeState<'a>>,
    index: Map<&'a str, usize>,
    /// Indices of the live nodes, in name order.
    live: Vec<usize>,
    dynamic: DynamicRange,
    assignments: BTreeMap<Cow<'a, ContainerKey>, Placed<'a>>,
    services: Map<ServiceKey, Members>,
    /// Live nodes by (containers, index): `emptiest_node` takes the first that fits.
    emptiest: BTreeSet<(u32, usize)>,
    groups: Vec<Group>,
    regions: usize,
    providers: usize,
    /// The input's assignments, sorted and without duplicate keys: the diff's "before".
    before: Vec<&'a Assignment>,
    /// Keys removed since the input was indexed (some may be back): with the assignments that
    /// are no longer borrowed, everything the diff must look at.
    removed: Vec<ContainerKey>,
}

impl<'a> Cluster<'a> {
    /// Indexes the input. Duplicate node names or container keys keep their first occurrence.
    pub fn new(input: &Input<'a>) -> Self {
        let mut infos: Vec<&'a NodeInfo> = input.nodes.iter().collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        infos.dedup_by(|a, b| a.name == b.name);
        let (regions, region_of) = intern(&infos, REGION);
        let (providers, provider_of) = intern(&infos, PROVIDER);
        let pairs: BTreeSet<(usize, usize)> = region_of
            .iter()
            .copied()
            .zip(provider_of.iter().copied())
            .collect();
        let group_of: BTreeMap<(usize, usize), usize> =
            pairs.iter().enumerate().map(|(g, p)| (*p, g)).collect();
        let mut groups: Vec<Group> = pairs
            .iter()
            .map(|&(region, provider)| Group {
                region,
                provider,
                emptiest: BTreeSet::new(),
            })
            .collect();
        let mut nodes = Vec::with_capacity(infos.len());
        for (i, info) in infos.into_iter().enumerate() {
            let (region, provider) = (region_of[i], provider_of[i]);
            let group = group_of.get(&(region, provider)).copied().unwrap_or(0);
            if info.live {
                groups[group].emptiest.insert((0, i));
            }
            nodes.push(NodeState::new(info, region, provider, group));
        }
        let index = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.info.name.as_str(), i))
            .collect();
        let live: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].info.live).collect();
        let emptiest = live.iter().map(|&i| (0, i)).collect();
        let mut before: Vec<&'a Assignment> = input.assignments.iter().collect();
        before.sort_by(|a, b| a.container.cmp(&b.container));
        before.dedup_by(|a, b| a.container == b.container);
        let mut cluster = Cluster {
            nodes,
            index,
            live,
            dynamic: DynamicRange::new(&input.dynamic_ports),
            assignments: BTreeMap::new(),
            services: Map::default(),
            emptiest,
            groups,
            regions,
            providers,
            before: Vec::new(),
            removed: Vec::new(),
        };
        for &a in &before {
            cluster.place(Cow::Borrowed(a));
        }
        cluster.before = before;
        cluster
    }

    pub fn node_index(&self, name: &Label) -> Option<usize> {
        self.index.get(name.as_str()).copied()
    }

    /// Live nodes in name order.
    pub fn live(&self) -> &[usize] {
        &self.live
    }

    /// Live nodes, emptiest first, ties by name.
    pub fn emptiest(&self) -> impl Iterator<Item = usize> + '_ {
        self.emptiest.iter().map(|&(_, i)| i)
    }

    /// The (region, provider) groups with live nodes.
    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.iter().filter(|g| !g.emptiest.is_empty())
    }

    pub fn get(&self, key: &ContainerKey) -> Option<&Assignment> {
        self.assignments.get(key).map(|p| p.assignment.as_ref())
    }

    /// The node index of a container, `None` if it is not assigned or its node is gone.
    pub fn node_of(&self, key: &ContainerKey) -> Option<usize> {
        self.assignments.get(key).and_then(|p| p.node)
    }

    /// A service's containers, by number (a copy, so the caller may change the cluster).
    pub fn members(&self, service: &ServiceKey) -> Vec<(u32, ContainerKey)> {
        let Some(members) = self.services.get(service) else {
            return Vec::new();
        };
        members
            .numbers
            .iter()
            .map(|(n, name)| (*n, container_key(service, name.clone())))
            .collect()
    }

    /// The assignments on nodes that are not live, no longer exist, or no longer serve the
    /// container's user (an admin closed the node to them): Reconcile moves them.
    pub fn off_live_nodes(&self) -> impl Iterator<Item = &Assignment> {
        (self.assignments.values())
            .filter(|p| {
                p.node.is_none_or(|i| {
                    let info = &self.nodes[i].info;
                    !info.live || !info.serves(&p.assignment.service.user)
                })
            })
            .map(|p| p.assignment.as_ref())
    }

    /// Every container of a stack, whatever service it claims to belong to.
    pub fn stack_containers(&self, user: &Label, stack: &Label) -> Vec<ContainerKey> {
        (self.assignments.keys())
            .filter(|k| &k.user == user && &k.stack == stack)
            .map(|k| k.as_ref().clone())
            .collect()
    }

    /// Node `i`'s verdict on one more container of `spec`.
    pub fn check(&self, i: usize, spec: &ServiceSpec) -> Result<(), Refusal> {
        self.nodes[i].check(spec, self.dynamic)
    }

    /// The ports of a container of `spec` on node `i`, host ports chosen.
    pub fn allocate(&self, i: usize, spec: &ServiceSpec) -> Result<Vec<Port>, Refusal> {
        self.nodes[i].allocate(spec, self.dynamic)
    }

    /// Records an assignment (replacing one with the same key) and claims its resources.
    pub fn insert(&mut self, a: Assignment) {
        self.place(Cow::Owned(a));
    }

    fn place(&mut self, a: Cow<'a, Assignment>) {
        let node = self.node_index(&a.node);
        if let Some(i) = node {
            self.claim(i, &a, true);
        }
        if !self.services.contains_key(&a.service) {
            self.services.insert(a.service.clone(), Members::default());
        }
        if let Some(members) = self.services.get_mut(&a.service) {
            members.numbers.insert((
                number_in(&a.service.service, &a.container.name),
                a.container.name.clone(),
            ));
            if let (Some(spread), Some(i)) = (members.spread.as_mut(), node) {
                count(spread, &self.nodes[i], i, true);
            }
        }
        let key = match &a {
            Cow::Borrowed(b) => {
                let b: &'a Assignment = b;
                Cow::Borrowed(&b.container)
            }
            Cow::Owned(o) => Cow::Owned(o.container.clone()),
        };
        if let Some(old) = self.assignments.insert(key, Placed { assignment: a, node }) {
            // Replaced: release what the old one claimed. Its number is the new one's.
            if let Some(i) = old.node {
                self.claim(i, &old.assignment, false);
                let spread = self
                    .services
                    .get_mut(&old.assignment.service)
                    .and_then(|m| m.spread.as_mut());
                if let Some(spread) = spread {
                    count(spread, &self.nodes[i], i, false);
                }
            }
        }
    }

    /// Drops an assignment and releases its resources.
    pub fn remove(&mut self, key: &ContainerKey) -> Option<Assignment> {
        let Placed { assignment: a, node } = self.assignments.remove(key)?;
        self.removed.push(key.clone());
        if let Some(i) = node {
            self.claim(i, &a, false);
        }
        if let Some(members) = self.services.get_mut(&a.service) {
            members.numbers.remove(&(
                number_in(&a.service.service, &a.container.name),
                a.container.name.clone(),
            ));
            if let (Some(spread), Some(i)) = (members.spread.as_mut(), node) {
                count(spread, &self.nodes[i], i, false);
            }
        }
        Some(a.into_owned())
    }

    /// Claims or releases a container on node `i`, keeping the emptiest-first orders in step.
    fn claim(&mut self, i: usize, a: &Assignment, claim: bool) {
        let node = &mut self.nodes[i];
        let before = (node.containers, i);
        node.claim(a, self.dynamic, claim);
        let after = (node.containers, i);
        if node.info.live {
            self.emptiest.remove(&before);
            self.emptiest.insert(after);
            let group = &mut self.groups[node.group].emptiest;
            group.remove(&before);
            group.insert(after);
        }
    }

    /// Builds the service's per node, region and provider counts if they are not kept yet.
    pub fn track_spread(&mut self, service: &ServiceKey) {
        if !self.services.contains_key(service) {
            self.services.insert(service.clone(), Members::default());
        }
        let Some(members) = self.services.get_mut(service) else {
            return;
        };
        if members.spread.is_some() {
            return;
        }
        let mut spread = Spread {
            per_node: vec![0; self.nodes.len()],
            per_region: vec![0; self.regions],
            per_provider: vec![0; self.providers],
        };
        for (_, name) in &members.numbers {
            let key = container_key(service, name.clone());
            if let Some(i) = self.assignments.get(&key).and_then(|p| p.node) {
                count(&mut spread, &self.nodes[i], i, true);
            }
        }
        members.spread = Some(spread);
    }

    /// The service's counts, if [`track_spread`](Self::track_spread) was called for it.
    pub fn spread(&self, service: &ServiceKey) -> Option<&Spread> {
        self.services.get(service).and_then(|m| m.spread.as_ref())
    }

    /// Containers of the service on node `i` (0 unless its spread is tracked).
    pub fn of_service(&self, service: &ServiceKey, i: usize) -> u32 {
        self.spread(service).map_or(0, |s| s.per_node[i])
    }

    /// The generation `key` had in the input, if it was assigned.
    pub fn input_generation(&self, key: &ContainerKey) -> Option<u64> {
        self.input(key).map(|a| a.generation)
    }

    /// Added, removed, moved and redeployed containers, each sorted by key. Only assignments
    /// no longer borrowed from the input, and removed keys, can differ from the input.
    pub fn diff(&self) -> Diff {
        let mut diff = Diff::default();
        for (key, placed) in &self.assignments {
            let Cow::Owned(new) = &placed.assignment else {
                continue;
            };
            match self.input(key) {
                None => diff.added.push(new.container.clone()),
                Some(old) if old.node != new.node => diff.moved.push(new.container.clone()),
                Some(old) if old != new => diff.redeployed.push(new.container.clone()),
                Some(_) => {}
            }
        }
        let mut removed: Vec<&ContainerKey> = (self.removed.iter())
            .filter(|k| !self.assignments.contains_key(*k) && self.input(k).is_some())
            .collect();
        removed.sort_unstable();
        removed.dedup();
        diff.removed = removed.into_iter().cloned().collect();
        diff
    }

    /// The input's assignment of `key`, if any.
    fn input(&self, key: &ContainerKey) -> Option<&'a Assignment> {
        let i = self.before.binary_search_by(|a| a.container.cmp(key)).ok()?;
        Some(self.before[i])
    }

    /// The final assignments, sorted by container.
    pub fn into_assignments(self) -> Vec<Assignment> {
        self.assignments
            .into_values()
            .map(|p| p.assignment.into_owned())
            .collect()
    }
}

/// Counts one container of a service on node `i` in, or out.
fn count(spread: &mut Spread, node: &NodeState, i: usize, add: bool) {
    for slot in [
        &mut spread.per_node[i],
        &mut spread.per_region[node.region],
        &mut spread.per_provider[node.provider],
    ] {
        *slot = if add {
            slot.saturating_add(1)
        } else {
            slot.saturating_sub(1)
        };
    }
}

/// The container key of `name` in the service's stack.
pub(super) fn container_key(service: &ServiceKey, name: Label) -> ContainerKey {
    ContainerKey {
        user: service.user.clone(),
        stack: service.stack.clone(),
        name,
    }
}

/// The container's `n` of `<service>-<n>` (see [`number_in`]).
pub(super) fn number(a: &Assignment) -> u32 {
    number_in(&a.service.service, &a.container.name)
}

/// `n` of `<service>-<n>`, written without leading zeros; anything else is `u32::MAX`.
fn number_in(service: &Label, name: &Label) -> u32 {
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
    (ids.len(), of)
}
