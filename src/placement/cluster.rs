//! The working state of one plan: the caller's [`Index`], changed in place, with a record of
//! what each changed container was before, so that the plan can be read off and the index put
//! back exactly as it was.
//!
//! On top of the index it keeps what only one plan needs: per placed service, its counts per
//! node, region and provider (a vector as long as the node list per service, so not worth
//! keeping for every service between plans).

use super::index::{Group, Index, Map};
use super::node::NodeState;
use super::{Assignment, ContainerChange, Refusal, ServiceSpec};
use crate::model::{ContainerKey, Label, Port, ServiceKey};

/// How many containers of one service run per node, region and provider.
pub(super) struct Spread {
    pub per_node: Vec<u32>,
    pub per_region: Vec<u32>,
    pub per_provider: Vec<u32>,
}

/// How the assignments differ from before the plan, by container key.
#[derive(Default)]
pub(super) struct Diff {
    pub changes: Vec<ContainerChange>,
    pub added: Vec<ContainerKey>,
    pub removed: Vec<ContainerKey>,
    pub moved: Vec<ContainerKey>,
    pub redeployed: Vec<ContainerKey>,
}

pub(super) struct Cluster<'i> {
    index: &'i mut Index,
    /// What every container changed so far was before the plan (`None`: not assigned). Hashed,
    /// not ordered: it is looked up on every change and sorted once, at the end.
    before: Map<ContainerKey, Option<Assignment>>,
    spreads: Map<ServiceKey, Spread>,
}

impl<'i> Cluster<'i> {
    pub fn new(index: &'i mut Index) -> Self {
        Cluster {
            index,
            before: Map::default(),
            spreads: Map::default(),
        }
    }

    /// The nodes, in name order.
    pub fn nodes(&self) -> &[NodeState] {
        &self.index.nodes
    }

    pub fn node_index(&self, name: &Label) -> Option<usize> {
        self.index.node_index(name)
    }

    /// Live nodes in name order.
    pub fn live(&self) -> &[usize] {
        self.index.live()
    }

    /// Live nodes, emptiest first, ties by name.
    pub fn emptiest(&self) -> impl Iterator<Item = usize> + '_ {
        self.index.emptiest()
    }

    /// The (region, provider) groups with live nodes.
    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.index.groups()
    }

    pub fn get(&self, key: &ContainerKey) -> Option<&Assignment> {
        self.index.get(key)
    }

    /// The node index of a container, `None` if it is not assigned or its node is gone.
    pub fn node_of(&self, key: &ContainerKey) -> Option<usize> {
        self.index.get(key).and_then(|a| self.node_index(&a.node))
    }

    /// A service's containers, by number (a copy, so the caller may change the cluster).
    pub fn members(&self, service: &ServiceKey) -> Vec<(u32, ContainerKey)> {
        let Some(members) = self.index.members(service) else {
            return Vec::new();
        };
        members
            .iter()
            .map(|(n, name)| (*n, container_key(service, name.clone())))
            .collect()
    }

    /// The assignments on nodes that are not live, no longer exist, or no longer serve the
    /// container's user (an admin closed the node to them): Reconcile moves them. Looks at
    /// those nodes' containers only.
    pub fn off_live_nodes(&self) -> Vec<&Assignment> {
        let mut off: Vec<&Assignment> = Vec::new();
        for node in self.nodes() {
            let closed = node.info.tenants.is_some();
            if node.info.live && !closed {
                continue;
            }
            let moving = (node.load.keys.iter())
                .filter_map(|k| self.index.get(k))
                .filter(|a| !node.info.live || !node.info.serves(&a.service.user));
            off.extend(moving);
        }
        off.extend(self.index.unregistered().filter_map(|k| self.index.get(k)));
        off
    }

    /// Every container of a stack, whatever service it claims to belong to.
    pub fn stack_containers(&self, user: &Label, stack: &Label) -> Vec<ContainerKey> {
        (self.index.of_stack(user, stack))
            .map(|a| a.container.clone())
            .collect()
    }

    /// Node `i`'s verdict on one more container of `spec`.
    pub fn check(&self, i: usize, spec: &ServiceSpec) -> Result<(), Refusal> {
        self.index.nodes[i].check(spec, self.index.dynamic)
    }

    /// The ports of a container of `spec` on node `i`, host ports chosen.
    pub fn allocate(&self, i: usize, spec: &ServiceSpec) -> Result<Vec<Port>, Refusal> {
        self.index.nodes[i].allocate(spec, self.index.dynamic)
    }

    /// Records an assignment (replacing one with the same key) and claims its resources.
    pub fn insert(&mut self, a: Assignment) {
        let (key, node, service) = (a.container.clone(), self.node_index(&a.node), a.service.clone());
        let old = self.index.insert(a);
        if let Some(old) = &old {
            self.count(&old.service, self.node_index(&old.node), false);
        }
        self.count(&service, node, true);
        self.before.entry(key).or_insert(old);
    }

    /// Drops an assignment and releases its resources.
    pub fn remove(&mut self, key: &ContainerKey) -> Option<Assignment> {
        let old = self.index.remove(key)?;
        self.count(&old.service, self.node_index(&old.node), false);
        self.before
            .entry(key.clone())
            .or_insert_with(|| Some(old.clone()));
        Some(old)
    }

    /// Counts a container of `service` on node `i` in or out of the service's spread.
    fn count(&mut self, service: &ServiceKey, i: Option<usize>, add: bool) {
        let (Some(spread), Some(i)) = (self.spreads.get_mut(service), i) else {
            return;
        };
        let node = &self.index.nodes[i];
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

    /// Builds the service's per node, region and provider counts if they are not kept yet.
    pub fn track_spread(&mut self, service: &ServiceKey) {
        if self.spreads.contains_key(service) {
            return;
        }
        let mut spread = Spread {
            per_node: vec![0; self.index.nodes.len()],
            per_region: vec![0; self.index.regions()],
            per_provider: vec![0; self.index.providers()],
        };
        for (_, key) in self.members(service) {
            if let Some(i) = self.node_of(&key) {
                let node = &self.index.nodes[i];
                spread.per_node[i] += 1;
                spread.per_region[node.region] += 1;
                spread.per_provider[node.provider] += 1;
            }
        }
        self.spreads.insert(service.clone(), spread);
    }

    /// The service's counts, if [`track_spread`](Self::track_spread) was called for it.
    pub fn spread(&self, service: &ServiceKey) -> Option<&Spread> {
        self.spreads.get(service)
    }

    /// Containers of the service on node `i` (0 unless its spread is tracked).
    pub fn of_service(&self, service: &ServiceKey, i: usize) -> u32 {
        self.spread(service).map_or(0, |s| s.per_node[i])
    }

    /// The generation `key` had before the plan, if it was assigned.
    pub fn input_generation(&self, key: &ContainerKey) -> Option<u64> {
        match self.before.get(key) {
            Some(before) => before.as_ref().map(|a| a.generation),
            None => self.index.get(key).map(|a| a.generation),
        }
    }

    /// Says how the plan differs from the index as it was before: each changed container
    /// (sorted by key) and the added, removed, moved and redeployed ones. With `restore`, puts
    /// the index back as it was; without, leaves it as planned (an index about to be dropped).
    pub fn finish(self, restore: bool) -> Diff {
        let mut diff = Diff::default();
        let mut changed: Vec<(ContainerKey, Option<Assignment>)> = self.before.into_iter().collect();
        changed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (key, before) in changed {
            let after = if restore {
                self.index.set(&key, before.clone())
            } else {
                self.index.get(&key).cloned()
            };
            match (&before, &after) {
                (None, None) => continue,
                (None, Some(_)) => diff.added.push(key.clone()),
                (Some(_), None) => diff.removed.push(key.clone()),
                (Some(old), Some(new)) if old.node != new.node => diff.moved.push(key.clone()),
                (Some(old), Some(new)) if old != new => diff.redeployed.push(key.clone()),
                (Some(_), Some(_)) => continue,
            }
            diff.changes.push(ContainerChange {
                container: key,
                before,
                after,
            });
        }
        diff
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
