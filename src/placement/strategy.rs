//! The deployment strategies: which of the nodes that can take a container gets it.
//!
//! Filtering is [`Cluster::check`]'s job; this module only ranks. Every ranking ends with the
//! node's index, which is its name order, so ties are broken the same way every time.

use super::cluster::{Cluster, Spread};
use super::{NodeVerdict, Refusal, ServiceSpec, Verdict};
use crate::model::{ContainerKey, Label, Strategy};

/// The node for one more container of `spec`, or `None` if no node can take it. The
/// service's spread must be tracked ([`Cluster::track_spread`]).
///
/// `every_node` containers are placed node by node by the caller; asked here, such a
/// service is ranked like `emptiest_node`.
pub(super) fn choose(cluster: &Cluster, spec: &ServiceSpec) -> Option<usize> {
    match spec.strategy {
        Strategy::EmptiestNode | Strategy::EveryNode => {
            // Emptiest first: the first node that fits is the best one. Usually the first
            // node looked at, so placing is O(log nodes) rather than a scan.
            cluster.emptiest().find(|&i| cluster.check(i, spec).is_ok())
        }
        Strategy::HighAvailability => {
            let spread = cluster.spread(&spec.key)?;
            let chosen =
                spread_to_unused(cluster, spread, spec).or_else(|| spread_scan(cluster, spread, spec));
            #[cfg(test)]
            assert_eq!(
                chosen,
                spread_scan(cluster, spread, spec),
                "the group index agrees with the scan"
            );
            chosen
        }
    }
}

/// Containers of the service on the node, in its region, with its provider; containers on
/// the node; the node's index.
type SpreadRank = (u32, u32, u32, u32, usize);

/// What `high_availability` ranks node `i` by, lowest first: containers of the service on the
/// node, in its region, with its provider, then containers in total, then the name.
fn spread_rank(cluster: &Cluster, spread: &Spread, i: usize) -> SpreadRank {
    let node = &cluster.nodes()[i];
    (
        spread.per_node[i],
        spread.per_region[node.region],
        spread.per_provider[node.provider],
        node.containers(),
        i,
    )
}

/// The best node by [`spread_rank`] among those without a container of the service, found
/// through the (region, provider) groups: within a group the region and provider counts are
/// the same, so its best node is the emptiest one that fits. A few steps per group instead of
/// a look at every node; `None` when every node that fits already has one.
fn spread_to_unused(cluster: &Cluster, spread: &Spread, spec: &ServiceSpec) -> Option<usize> {
    let mut best: Option<(u32, u32, u32, usize)> = None;
    for group in cluster.groups() {
        let (region, provider) = (
            spread.per_region[group.region],
            spread.per_provider[group.provider],
        );
        for &(containers, i) in &group.emptiest {
            let rank = (region, provider, containers, i);
            if best.is_some_and(|b| b <= rank) {
                break; // the rest of this group ranks after it too
            }
            if spread.per_node[i] == 0 && cluster.check(i, spec).is_ok() {
                best = Some(rank);
                break;
            }
        }
    }
    best.map(|(.., i)| i)
}

/// The best node by [`spread_rank`], looking at every live node. A node is only checked when
/// it would beat the best so far.
fn spread_scan(cluster: &Cluster, spread: &Spread, spec: &ServiceSpec) -> Option<usize> {
    let mut best = None;
    for &i in cluster.live() {
        let rank = spread_rank(cluster, spread, i);
        if best.is_none_or(|b| rank < b) && cluster.check(i, spec).is_ok() {
            best = Some(rank);
        }
    }
    best.map(|(.., i)| i)
}

/// Every node's verdict on `container` of `spec`, which goes to node `chosen`: the dry-run
/// detail. Counts are taken before the container is placed.
pub(super) fn explain(
    cluster: &Cluster,
    spec: &ServiceSpec,
    container: &ContainerKey,
    chosen: usize,
) -> Vec<NodeVerdict> {
    (0..cluster.nodes().len())
        .map(|i| {
            let verdict = if i == chosen {
                chosen_verdict(cluster, spec, i)
            } else {
                match cluster.check(i, spec) {
                    Ok(()) => Verdict::Fits {
                        containers: cluster.nodes()[i].containers(),
                        of_service: cluster.of_service(&spec.key, i),
                    },
                    Err(reason) => Verdict::Refused { reason },
                }
            };
            NodeVerdict {
                container: container.clone(),
                node: cluster.nodes()[i].info.name.clone(),
                verdict,
            }
        })
        .collect()
}

/// The verdict of the node a container goes to, with what the strategy saw there.
pub(super) fn chosen_verdict(cluster: &Cluster, spec: &ServiceSpec, i: usize) -> Verdict {
    Verdict::Chosen {
        containers: cluster.nodes()[i].containers(),
        of_service: cluster.of_service(&spec.key, i),
    }
}

/// Why each node refuses `spec`, in name order; nodes that could take it are left out.
pub(super) fn refusals(cluster: &Cluster, spec: &ServiceSpec) -> Vec<(Label, Refusal)> {
    (0..cluster.nodes().len())
        .filter_map(|i| {
            cluster
                .check(i, spec)
                .err()
                .map(|r| (cluster.nodes()[i].info.name.clone(), r))
        })
        .collect()
}
