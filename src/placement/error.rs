//! Why a node refuses a container, and the errors that explain an unplaceable request.
//!
//! Every message names the container, the resource it needs, the nodes that were considered
//! and what the caller can do about it (design §5). Each error has a stable [`code`] for the
//! API's JSON body; the message is for people and may be reworded.
//!
//! [`code`]: PlacementError::code

use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};

use super::ServiceSpec;
use crate::model::{ContainerKey, Label, Protocol, ServiceKey};

/// Lists longer than this are cut with "and N more": a 422 should stay readable on a
/// thousand-node cluster.
const LISTED_NODES: usize = 8;

/// Why one node cannot take one container. Checked in this order; the first that applies is
/// the node's reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Refusal {
    /// The node's lease is not current (lost, or never heartbeated).
    NotLive,
    /// The node belongs to another user, or an admin did not open it to this one.
    OtherTenants,
    /// The node lacks these of the service's deploy tags.
    MissingTags { tags: Vec<Label> },
    /// A container already publishes this host port on the node.
    HostPortInUse {
        host_port: u16,
        protocol: Protocol,
        container_port: u16,
    },
    /// The container's `mem_limit` does not fit in what the node has left.
    InsufficientMemory {
        needed_mb: u64,
        free_mb: u64,
        capacity_mb: u64,
    },
    /// Every port of the dynamic range is taken on the node for this protocol.
    PortsExhausted {
        protocol: Protocol,
        first: u16,
        last: u16,
    },
}

impl Refusal {
    /// The API code of an error caused by this refusal alone.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NotLive => "no_live_node",
            Refusal::OtherTenants => "no_node_for_user",
            Refusal::MissingTags { .. } => "no_matching_node",
            Refusal::HostPortInUse { .. } => "port_conflict",
            Refusal::InsufficientMemory { .. } => "insufficient_memory",
            Refusal::PortsExhausted { .. } => "ports_exhausted",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotLive => f.write_str("not live"),
            Refusal::OtherTenants => f.write_str("serves other users"),
            Refusal::MissingTags { tags } => write!(f, "lacks {}", and_list(tags)),
            Refusal::HostPortInUse {
                host_port, protocol, ..
            } => write!(f, "host port {host_port}/{} is in use", protocol.as_str()),
            Refusal::InsufficientMemory {
                needed_mb,
                free_mb,
                capacity_mb,
            } => write!(f, "{free_mb} MB free of {capacity_mb} MB, needs {needed_mb} MB"),
            Refusal::PortsExhausted {
                protocol,
                first,
                last,
            } => {
                write!(f, "no free dynamic {} port in {first}-{last}", protocol.as_str())
            }
        }
    }
}

/// A request placement cannot satisfy in full. Nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// No node is live (or none is registered): start an agent or add a node.
    #[error("{}", no_live_node(.container, .nodes))]
    NoLiveNode {
        container: ContainerKey,
        nodes: Vec<Label>,
    },
    /// Every node belongs to other users (or is closed to this one).
    #[error("{}", no_node_for_user(.container, .nodes))]
    NoNodeForUser {
        container: ContainerKey,
        nodes: Vec<Label>,
    },
    /// No live node carries all the service's tags: tag a node or change the tags.
    #[error("{}", no_matching_node(.container, .tags, .refusals))]
    NoMatchingNode {
        container: ContainerKey,
        tags: Vec<Label>,
        refusals: Vec<(Label, Refusal)>,
    },
    /// Every matching node already uses a fixed host port the service needs.
    #[error("{}", port_conflict(.container, .refusals))]
    PortConflict {
        container: ContainerKey,
        refusals: Vec<(Label, Refusal)>,
    },
    /// No matching node has the memory left.
    #[error("{}", insufficient_memory(.container, *.needed_mb, .refusals))]
    InsufficientMemory {
        container: ContainerKey,
        needed_mb: u64,
        refusals: Vec<(Label, Refusal)>,
    },
    /// The dynamic port range is used up on every matching node.
    #[error("{}", ports_exhausted(.container, .refusals))]
    PortsExhausted {
        container: ContainerKey,
        refusals: Vec<(Label, Refusal)>,
    },
    /// Matching nodes exist, each lacking something different.
    #[error("{}", no_node_fits(.container, .refusals))]
    NoNodeFits {
        container: ContainerKey,
        refusals: Vec<(Label, Refusal)>,
    },
    /// An `every_node` container cannot run on one of the nodes it must run on.
    #[error("{}", node_refused(.container, .node, .reason))]
    NodeRefused {
        container: ContainerKey,
        node: Label,
        /// Boxed to keep every `Result<_, PlacementError>` small.
        reason: Box<Refusal>,
    },
    /// `every_node` services follow the nodes and cannot be scaled by hand.
    #[error(
        "cannot scale {}: its deployment_strategy is every_node, which runs one container on each \
         matching node; add or tag nodes, or change the service's tags, instead",
        .service.service
    )]
    NotScalable { service: ServiceKey },
    /// The service is not declared.
    #[error(
        "no service {} in stack {} of user {}",
        .service.service,
        .service.stack,
        .service.user
    )]
    UnknownService { service: ServiceKey },
    /// The declared service cannot be placed as written.
    #[error("service {} of stack {}: {reason}", .service.service, .service.stack)]
    InvalidService { service: ServiceKey, reason: String },
}

impl PlacementError {
    /// Stable identifier for the API's `{"error":{"code":…}}`.
    pub fn code(&self) -> &'static str {
        match self {
            PlacementError::NoLiveNode { .. } => "no_live_node",
            PlacementError::NoNodeForUser { .. } => "no_node_for_user",
            PlacementError::NoMatchingNode { .. } => "no_matching_node",
            PlacementError::PortConflict { .. } => "port_conflict",
            PlacementError::InsufficientMemory { .. } => "insufficient_memory",
            PlacementError::PortsExhausted { .. } => "ports_exhausted",
            PlacementError::NoNodeFits { .. } => "no_node_fits",
            PlacementError::NodeRefused { reason, .. } => reason.code(),
            PlacementError::NotScalable { .. } => "not_scalable",
            PlacementError::UnknownService { .. } => "unknown_service",
            PlacementError::InvalidService { .. } => "invalid_service",
        }
    }

    /// Picks the error that explains why no node took `container`, from every node's refusal
    /// in name order: the first filter that removed all candidates names the problem.
    pub(super) fn unplaceable(
        container: ContainerKey,
        spec: &ServiceSpec,
        refusals: Vec<(Label, Refusal)>,
    ) -> Self {
        // Nodes this user may not use do not count as candidates at all.
        let (others, refusals): (Vec<_>, Vec<_>) = refusals
            .into_iter()
            .partition(|(_, r)| *r == Refusal::OtherTenants);
        if refusals.is_empty() && !others.is_empty() {
            let nodes = others.into_iter().map(|(n, _)| n).collect();
            return PlacementError::NoNodeForUser { container, nodes };
        }
        if refusals.iter().all(|(_, r)| *r == Refusal::NotLive) {
            let nodes = refusals.into_iter().map(|(n, _)| n).collect();
            return PlacementError::NoLiveNode { container, nodes };
        }
        let live: Vec<_> = refusals
            .into_iter()
            .filter(|(_, r)| *r != Refusal::NotLive)
            .collect();
        if live.iter().all(|(_, r)| matches!(r, Refusal::MissingTags { .. })) {
            let tags = spec.tags.iter().cloned().collect();
            return PlacementError::NoMatchingNode {
                container,
                tags,
                refusals: live,
            };
        }
        let refusals: Vec<_> = live
            .into_iter()
            .filter(|(_, r)| !matches!(r, Refusal::MissingTags { .. }))
            .collect();
        let all = |f: fn(&Refusal) -> bool| refusals.iter().all(|(_, r)| f(r));
        if all(|r| matches!(r, Refusal::HostPortInUse { .. })) {
            PlacementError::PortConflict { container, refusals }
        } else if all(|r| matches!(r, Refusal::InsufficientMemory { .. })) {
            let needed_mb = spec.mem_limit_mb.unwrap_or(0);
            PlacementError::InsufficientMemory {
                container,
                needed_mb,
                refusals,
            }
        } else if all(|r| matches!(r, Refusal::PortsExhausted { .. })) {
            PlacementError::PortsExhausted { container, refusals }
        } else {
            PlacementError::NoNodeFits { container, refusals }
        }
    }
}

/// Names no node: they belong to other users.
fn no_node_for_user(container: &ContainerKey, nodes: &[Label]) -> String {
    let count = match nodes.len() {
        1 => "the one node serves".to_owned(),
        n => format!("all {n} nodes serve"),
    };
    format!(
        "cannot place {}: no node runs containers of user {} ({count} other users); register a \
         node of your own with your token, or ask an admin to open a platform node to {}",
        container.name, container.user, container.user
    )
}

fn no_live_node(container: &ContainerKey, nodes: &[Label]) -> String {
    let name = &container.name;
    if nodes.is_empty() {
        return format!("cannot place {name}: no node is registered; add a node");
    }
    let verb = if nodes.len() == 1 { "is" } else { "are" };
    format!(
        "cannot place {name}: no node is live ({} {verb} lost or not yet heartbeating); start a node's \
         agent, or add a node",
        node_list(nodes.iter())
    )
}

fn no_matching_node(container: &ContainerKey, tags: &[Label], refusals: &[(Label, Refusal)]) -> String {
    let them = if tags.len() == 1 { "it" } else { "all of them" };
    let mut lacking = String::new();
    for (i, (node, reason)) in refusals.iter().take(LISTED_NODES).enumerate() {
        let sep = if i == 0 { "" } else { "; " };
        let _ = write!(lacking, "{sep}{node} {reason}");
    }
    if refusals.len() > LISTED_NODES {
        let _ = write!(lacking, "; and {} more", refusals.len() - LISTED_NODES);
    }
    format!(
        "cannot place {}: needs a node tagged {}, and no live node carries {them} ({lacking}); tag a \
         node, or change the service's tags",
        container.name,
        and_list(tags)
    )
}

fn port_conflict(container: &ContainerKey, refusals: &[(Label, Refusal)]) -> String {
    // The distinct ports the matching nodes refused for, in port order.
    let mut ports: Vec<(u16, Protocol, u16)> = refusals
        .iter()
        .filter_map(|(_, r)| match r {
            Refusal::HostPortInUse {
                host_port,
                protocol,
                container_port,
            } => Some((*host_port, *protocol, *container_port)),
            _ => None,
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    let host = |(p, proto, _): &(u16, Protocol, u16)| format!("{p}/{}", proto.as_str());
    let dynamic = |(_, proto, c): &(u16, Protocol, u16)| match proto {
        Protocol::Tcp => format!("\"{c}\""),
        Protocol::Udp => format!("\"{c}/udp\""),
    };
    let fix = "and reach the service through SRV or a load balancer";
    let n = refusals.len();
    if let [port] = ports.as_slice() {
        let verb = if n == 1 { "uses" } else { "use" };
        return format!(
            "cannot place {}: needs host port {}, and {} ({}) already {verb} it; add a node, or publish \
             the port dynamically ({}) {fix}",
            container.name,
            host(port),
            matching(n),
            node_list(refusals.iter().map(|(node, _)| node)),
            dynamic(port)
        );
    }
    let mut each = String::new();
    for (i, (node, reason)) in refusals.iter().take(LISTED_NODES).enumerate() {
        if let Refusal::HostPortInUse {
            host_port, protocol, ..
        } = reason
        {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(each, "{sep}{node}: {host_port}/{}", protocol.as_str());
        }
    }
    if n > LISTED_NODES {
        let _ = write!(each, ", and {} more", n - LISTED_NODES);
    }
    let hosts: Vec<String> = ports.iter().map(host).collect();
    let dynamics: Vec<String> = ports.iter().map(dynamic).collect();
    format!(
        "cannot place {}: needs host ports {}, and each node that matches already uses one of them \
         ({each}); add a node, or publish the ports dynamically ({}) {fix}",
        container.name,
        and_list(&hosts),
        dynamics.join(", ")
    )
}

fn insufficient_memory(container: &ContainerKey, needed_mb: u64, refusals: &[(Label, Refusal)]) -> String {
    let mut free = String::new();
    for (i, (node, reason)) in refusals.iter().take(LISTED_NODES).enumerate() {
        if let Refusal::InsufficientMemory {
            free_mb, capacity_mb, ..
        } = reason
        {
            let sep = if i == 0 { "" } else { "; " };
            let _ = write!(free, "{sep}{node}: {free_mb} MB free of {capacity_mb} MB");
        }
    }
    if refusals.len() > LISTED_NODES {
        let _ = write!(free, "; and {} more", refusals.len() - LISTED_NODES);
    }
    let verb = if refusals.len() == 1 { "has" } else { "have" };
    format!(
        "cannot place {}: needs {needed_mb} MB of memory, and {} {verb} less free ({free}); add a node \
         or memory, or lower the service's mem_limit",
        container.name,
        matching(refusals.len())
    )
}

fn ports_exhausted(container: &ContainerKey, refusals: &[(Label, Refusal)]) -> String {
    let range = refusals.iter().find_map(|(_, r)| match r {
        Refusal::PortsExhausted { first, last, .. } => Some(format!("{first}-{last}")),
        _ => None,
    });
    format!(
        "cannot place {}: needs a dynamic host port, and the range {} is used up on {} ({}); add a \
         node, or widen the dynamic port range",
        container.name,
        range.unwrap_or_default(),
        matching(refusals.len()),
        node_list(refusals.iter().map(|(node, _)| node))
    )
}

fn no_node_fits(container: &ContainerKey, refusals: &[(Label, Refusal)]) -> String {
    let mut each = String::new();
    for (i, (node, reason)) in refusals.iter().take(LISTED_NODES).enumerate() {
        let sep = if i == 0 { "" } else { "; " };
        let _ = write!(each, "{sep}{node}: {reason}");
    }
    if refusals.len() > LISTED_NODES {
        let _ = write!(each, "; and {} more", refusals.len() - LISTED_NODES);
    }
    format!(
        "cannot place {}: no node that matches can take it ({each}); add a node, or free what they lack",
        container.name
    )
}

fn node_refused(container: &ContainerKey, node: &Label, reason: &Refusal) -> String {
    format!(
        "cannot place {} on {node}, where every_node runs one container per matching node: {reason}; \
         free that on {node}, or change the service or the node's tags so that they no longer match",
        container.name
    )
}

/// "the only node that matches", "both nodes that match", "all 5 nodes that match".
fn matching(n: usize) -> String {
    match n {
        1 => "the only node that matches".to_owned(),
        2 => "both nodes that match".to_owned(),
        n => format!("all {n} nodes that match"),
    }
}

/// "a, b, c, and 4 more".
fn node_list<'a>(nodes: impl ExactSizeIterator<Item = &'a Label>) -> String {
    let total = nodes.len();
    let mut out = String::new();
    for (i, node) in nodes.take(LISTED_NODES).enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(out, "{sep}{node}");
    }
    if total > LISTED_NODES {
        let _ = write!(out, ", and {} more", total - LISTED_NODES);
    }
    out
}

/// "a", "a and b", "a, b and c".
fn and_list<T: fmt::Display>(items: &[T]) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        let sep = match i {
            0 => "",
            i if i + 1 == items.len() => " and ",
            _ => ", ",
        };
        let _ = write!(out, "{sep}{item}");
    }
    out
}
