//! The placement engine: decides which node runs each container of every declared service.
//!
//! Pure and deterministic (design §5, §6): no I/O, no clock, no randomness. The same [`Input`]
//! and [`Change`] always give the same [`Plan`], whatever order the input slices are in.
//!
//! # Architecture
//!
//! ```text
//! Input {nodes, services, assignments, retired}  +  Change (Apply | Scale | DeleteStack | Reconcile)
//!        |
//!        v
//! cluster::Cluster::new   index what is claimed: per node (node::NodeState) the container
//!        |                count, memory and host ports; live nodes emptiest first, overall and
//!        |                per (region, provider); each service's containers by number
//!        v
//! change::Planner::run    1. release: containers of removed or changed services, scale-downs
//!        |                2. place, most constrained service first (every_node, fixed ports,
//!        |                   rest): NodeState::check filters a node, strategy::choose ranks
//!        v
//! Plan {services, assignments, added, removed, moved, redeployed, verdicts}
//!        or PlacementError naming the container, the resource, the nodes and the fix (error)
//! ```
//!
//! The engine knows every service's declared spec ([`Input::services`]) because scaling and
//! following nodes (`every_node`) need the strategy, tags, ports and memory limit, which the
//! assignments only partly carry; the plan returns the declared set after the change
//! ([`Plan::services`]) so the caller stores specs and assignments together.
//!
//! Apply and Scale are all-or-nothing: one container that cannot be placed makes the whole
//! call an `Err`, and no partial plan exists. Reconcile never fails: a container that cannot be
//! moved off a node that is not live stays where it is and is reported in the verdicts.
//! `docs/placement.md` is the user-facing description of the same rules.

mod change;
mod cluster;
mod error;
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

/// Everything placement decides from. The slices may come in any order.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    pub nodes: &'a [NodeInfo],
    /// Every declared service of every stack, with its current target.
    pub services: &'a [ServiceSpec],
    /// Every current assignment, all users and stacks.
    pub assignments: &'a [Assignment],
    /// The last generation of containers that no longer have an assignment (the store's
    /// tombstones). A name created again starts above it, so a late report from its previous
    /// life is still fenced off. Empty: new containers start at generation 1.
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

/// The outcome of a change, complete: the caller replaces its state with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Every declared service after the change, sorted by key.
    pub services: Vec<ServiceSpec>,
    /// Every assignment after the change, all stacks, sorted by container.
    pub assignments: Vec<Assignment>,
    /// Containers that did not exist before.
    pub added: Vec<ContainerKey>,
    /// Containers that no longer exist.
    pub removed: Vec<ContainerKey>,
    /// Containers now on another node (generation + 1).
    pub moved: Vec<ContainerKey>,
    /// Containers on the same node with a new spec (generation + 1): the agent restarts them.
    pub redeployed: Vec<ContainerKey>,
    /// Why each container placed (or left stranded) by this change went where it did; with
    /// [`Input::explain`], every node's verdict for it.
    pub verdicts: Vec<NodeVerdict>,
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

/// Computes the plan for `change`, or the reason it cannot be placed in full.
pub fn plan(input: &Input, change: &Change) -> Result<Plan, PlacementError> {
    let mut planner = change::Planner::new(input);
    planner.run(change)?;
    Ok(planner.finish())
}
