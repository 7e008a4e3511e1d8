//! The placement engine: decides which node runs each container of every declared service.
//!
//! Pure and deterministic (design §5, §6): no I/O, no clock, no randomness. The same index,
//! declared services and [`Change`] always give the same [`Plan`], whatever order the node and
//! assignment lists came in.
//!
//! # Architecture
//!
//! ```text
//! Index (kept by the caller between plans): nodes, per node what is claimed (node::Load),
//!        |  live nodes emptiest first, each service's containers by number (index)
//!        |
//! Index::plan(Declared, Change: Apply | Scale | DeleteStack | Reconcile)
//!        |
//! change::Planner on cluster::Cluster, the index changed in place with a record of what
//!        |  each changed container was:
//!        |    1. release: containers of removed or changed services, scale-downs
//!        |    2. place, most constrained service first (every_node, fixed ports, rest):
//!        |       NodeState::check filters a node, strategy::choose ranks
//!        v
//! Cluster::finish puts the index back and reads off the difference:
//! Plan {services, assignments (before, after), added, removed, moved, redeployed, verdicts}
//!        or PlacementError naming the container, the resource, the nodes and the fix (error)
//!        |
//! Index::apply(&plan) makes it current, once the caller has stored it
//! ```
//!
//! So a plan costs what it changes, not what exists: scaling one service among a million
//! containers looks at that service and at a few nodes. [`plan`] is the same engine on a
//! fresh index built from plain lists (tests, benchmarks, anything without an index).
//!
//! The engine knows every service's declared spec ([`Declared`]) because scaling and
//! following nodes (`every_node`) need the strategy, tags, ports and memory limit, which the
//! assignments only partly carry; the plan returns the declared specs the change sets
//! ([`Plan::services`]) so the caller stores specs and assignments together.
//!
//! Apply and Scale are all-or-nothing: one container that cannot be placed makes the whole
//! call an `Err`, and no partial plan exists. Reconcile never fails: a container that cannot be
//! moved off a node that is not live stays where it is and is reported in the verdicts.
//! `docs/placement.md` is the user-facing description of the same rules.

mod change;
mod cluster;
mod error;
mod index;
mod node;
mod strategy;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use crate::model::{ContainerKey, Label, ServiceKey};

pub use crate::model::{Assignment, ServiceSpec};
pub use error::{PlacementError, Refusal};
pub use index::Index;

/// The host ports a node hands out for `"80"`-style (dynamic) ports unless configured otherwise:
/// Linux's default ephemeral range, as Docker uses.
pub const DEFAULT_DYNAMIC_PORTS: RangeInclusive<u16> = 32768..=60999;

/// The most containers one service may ask for: a guard against a typo like
/// `target_num_containers: 1000000` making the engine work for minutes before it fails.
pub const MAX_CONTAINERS_PER_SERVICE: u32 = 10_000;

/// What placement needs to know about a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: Label,
    /// Lease current: only live nodes receive new containers.
    pub live: bool,
    /// Deploy tags: a service's tags must all be among them.
    pub tags: BTreeSet<Label>,
    /// `region` and `provider` spread `high_availability` services.
    pub labels: BTreeMap<String, String>,
    /// Memory the node offers; `None` means unlimited (no capacity registered).
    pub memory_mb: Option<u64>,
    /// The users whose containers it may run; `None`: everyone's (a platform node open to all).
    /// A user's own node serves that user alone.
    pub tenants: Option<BTreeSet<Label>>,
}

impl NodeInfo {
    /// Whether the node may run containers of `user`.
    pub fn serves(&self, user: &Label) -> bool {
        self.tenants.as_ref().is_none_or(|t| t.contains(user))
    }
}

/// What the caller declared: the services' specs, and the names that lived before.
pub trait Declared {
    /// The declared spec of a service.
    fn spec(&self, key: &ServiceKey) -> Option<&ServiceSpec>;
    /// The declared services of one stack.
    fn of_stack(&self, user: &Label, stack: &Label) -> Vec<&ServiceSpec>;
    /// Every declared service of every stack (Reconcile looks at them all).
    fn all(&self) -> Vec<&ServiceSpec>;
    /// The last generation of a container that has no assignment any more (the store's
    /// tombstones). A name created again starts above it, so a late report from its previous
    /// life is still fenced off. `None`: a new container starts at generation 1.
    fn retired(&self, key: &ContainerKey) -> Option<u64>;
}

/// Everything placement decides from, as plain lists in any order: for [`plan`].
#[derive(Clone, Debug)]
pub struct Input<'a> {
    pub nodes: &'a [NodeInfo],
    /// Every declared service of every stack, with its current target.
    pub services: &'a [ServiceSpec],
    /// Every current assignment, all users and stacks.
    pub assignments: &'a [Assignment],
    /// See [`Declared::retired`].
    pub retired: &'a [(ContainerKey, u64)],
    /// The per-node range dynamic host ports come from.
    pub dynamic_ports: RangeInclusive<u16>,
    /// Dry-run detail: a verdict for every node for every container placed, not only the
    /// chosen one. Costs one full pass over the nodes per container.
    pub explain: bool,
}

impl<'a> Input<'a> {
    /// An input with no retired names, the default dynamic range and no per-node detail.
    pub fn new(nodes: &'a [NodeInfo], services: &'a [ServiceSpec], assignments: &'a [Assignment]) -> Self {
        Input {
            nodes,
            services,
            assignments,
            retired: &[],
            dynamic_ports: DEFAULT_DYNAMIC_PORTS,
            explain: false,
        }
    }
}

/// Declared services and retired names given as lists, as [`Declared`]: the first spec of a
/// key counts, and the highest generation of a name.
pub struct Lists<'a> {
    specs: BTreeMap<&'a ServiceKey, &'a ServiceSpec>,
    retired: BTreeMap<&'a ContainerKey, u64>,
}

impl<'a> Lists<'a> {
    pub fn new(input: &Input<'a>) -> Self {
        Lists::of(input.services, input.retired)
    }

    pub fn of(services: &'a [ServiceSpec], retired_names: &'a [(ContainerKey, u64)]) -> Self {
        let mut specs = BTreeMap::new();
        for spec in services {
            specs.entry(&spec.key).or_insert(spec);
        }
        let mut retired = BTreeMap::new();
        for (key, generation) in retired_names {
            let last = retired.entry(key).or_insert(*generation);
            *last = (*last).max(*generation);
        }
        Lists { specs, retired }
    }
}

impl Declared for Lists<'_> {
    fn spec(&self, key: &ServiceKey) -> Option<&ServiceSpec> {
        self.specs.get(key).copied()
    }

    fn of_stack(&self, user: &Label, stack: &Label) -> Vec<&ServiceSpec> {
        let from = ServiceKey {
            user: user.clone(),
            stack: stack.clone(),
            service: Label::LOWEST,
        };
        (self.specs.range::<&ServiceKey, _>(&from..))
            .map(|(_, spec)| *spec)
            .take_while(|s| &s.key.user == user && &s.key.stack == stack)
            .collect()
    }

    fn all(&self) -> Vec<&ServiceSpec> {
        self.specs.values().copied().collect()
    }

    fn retired(&self, key: &ContainerKey) -> Option<u64> {
        self.retired.get(key).copied()
    }
}

/// What the caller wants changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The whole desired stack: services not listed are removed, changed ones redeployed,
    /// unchanged ones only scaled to their target.
    Apply {
        user: Label,
        stack: Label,
        services: Vec<ServiceSpec>,
    },
    /// A new target for one declared service (not `every_node`).
    Scale { service: ServiceKey, target: u32 },
    /// Remove the stack's services and containers. Deleting an unknown stack changes nothing.
    DeleteStack { user: Label, stack: Label },
    /// Nodes joined, left or were lost: move containers off nodes that are not live, and make
    /// `every_node` services follow the nodes. Never fails.
    Reconcile,
}

/// The outcome of a change: everything it changes, and nothing else.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The declared services the change sets, sorted by key: the new spec, or `None` for a
    /// service no longer declared. An Apply lists every service of the stack, before and after.
    pub services: Vec<(ServiceKey, Option<ServiceSpec>)>,
    /// Every container whose assignment changes, sorted by key.
    pub assignments: Vec<ContainerChange>,
    /// Containers that did not exist before.
    pub added: Vec<ContainerKey>,
    /// Containers that no longer exist.
    pub removed: Vec<ContainerKey>,
    /// Containers now on another node (generation + 1).
    pub moved: Vec<ContainerKey>,
    /// Containers on the same node with a new spec (generation + 1): the agent restarts them.
    pub redeployed: Vec<ContainerKey>,
    /// Why each container placed (or left stranded) by this change went where it did; with
    /// `explain`, every node's verdict for it.
    pub verdicts: Vec<NodeVerdict>,
}

/// One container's assignment before and after a plan (`None`: none).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerChange {
    pub container: ContainerKey,
    pub before: Option<Assignment>,
    pub after: Option<Assignment>,
}

impl Plan {
    /// Whether any container is added, removed, moved or redeployed.
    pub fn changes_containers(&self) -> bool {
        !(self.added.is_empty()
            && self.removed.is_empty()
            && self.moved.is_empty()
            && self.redeployed.is_empty())
    }
}

/// One node's verdict on one container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeVerdict {
    pub container: ContainerKey,
    pub node: Label,
    pub verdict: Verdict,
}

/// What a node made of a container. The counts are before the container was placed and are
/// what the strategy ranked by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Verdict {
    /// The container goes here.
    Chosen { containers: u32, of_service: u32 },
    /// The node could take it but ranked after the chosen one.
    Fits { containers: u32, of_service: u32 },
    /// The node cannot take it.
    Refused { reason: Refusal },
    /// Reconcile left it on this node, which is not live, because no live node can take it.
    Stranded,
}

impl Index {
    /// Computes the plan for `change` against this index and `declared`, or the reason it
    /// cannot be placed in full. The index is worked on in place and always left as it was;
    /// [`Index::apply`] makes the plan current. `explain` asks for every node's verdict on
    /// every container placed (dry runs; a full pass over the nodes per container).
    pub fn plan(
        &mut self,
        declared: &dyn Declared,
        change: &Change,
        explain: bool,
    ) -> Result<Plan, PlacementError> {
        self.plan_and_restore(declared, change, explain, true)
    }

    fn plan_and_restore(
        &mut self,
        declared: &dyn Declared,
        change: &Change,
        explain: bool,
        restore: bool,
    ) -> Result<Plan, PlacementError> {
        let mut planner = change::Planner::new(self, declared, explain);
        let outcome = planner.run(change);
        let plan = planner.finish(restore);
        outcome.map(|()| plan)
    }
}

/// Computes the plan for `change` from plain lists, on an index built for it (and dropped
/// after, so not put back).
pub fn plan(input: &Input, change: &Change) -> Result<Plan, PlacementError> {
    let mut index = Index::build(
        input.nodes,
        input.assignments.iter().cloned(),
        &input.dynamic_ports,
    );
    index.plan_and_restore(&Lists::new(input), change, input.explain, false)
}
