//! One node and what is claimed on it: the container count, memory and host ports that the
//! filters check, and the containers themselves, kept up to date container by container.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

use super::{Assignment, NodeInfo, Refusal, ServiceSpec};
use crate::model::{ContainerKey, Port, Protocol};

/// The per-node range dynamic host ports come from (empty when `first > last`).
#[derive(Clone, Copy, Debug)]
pub(super) struct DynamicRange {
    first: u16,
    last: u16,
}

impl DynamicRange {
    pub fn new(range: &RangeInclusive<u16>) -> Self {
        DynamicRange {
            first: *range.start(),
            last: *range.end(),
        }
    }

    fn contains(self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }

    fn len(self) -> u64 {
        (u64::from(self.last) + 1).saturating_sub(u64::from(self.first))
    }

    fn exhausted(self, protocol: Protocol) -> Refusal {
        let (first, last) = (self.first, self.last);
        Refusal::PortsExhausted {
            protocol,
            first,
            last,
        }
    }
}

/// A node as placement sees it: what it is, and what is claimed on it.
#[derive(Debug)]
pub(super) struct NodeState {
    pub info: NodeInfo,
    pub load: Load,
    /// Interned `region` and `provider` label values (a missing label is a value of its own),
    /// and the index of the pair.
    pub region: usize,
    pub provider: usize,
    pub group: usize,
}

/// What the assignments on one node claim. Kept for nodes that are not registered too (an
/// assignment may outlive its node), so that a node coming back finds its containers counted.
#[derive(Debug, Default)]
pub(super) struct Load {
    /// Containers assigned here, all services: what `emptiest_node` ranks by.
    pub containers: u32,
    memory_used: u64,
    /// Host ports in use, with how many containers claim each. A count rather than a set so
    /// that releasing one claim of an (inconsistent) doubly claimed port keeps the other.
    ports: BTreeMap<(Protocol, u16), u32>,
    /// How many distinct ports of `ports` lie in the dynamic range, per protocol, so that
    /// "is the range used up" is answered without walking it.
    dynamic_used: [u32; 2],
    /// Per protocol, a port of the dynamic range below which every port of the range is in
    /// use (0: none known), so the lowest free one is found without walking a thousand used
    /// ones on a full node.
    free_from: [u32; 2],
    /// The containers assigned here: a node's work list, and Reconcile's look at lost nodes,
    /// without a walk over every assignment.
    pub keys: BTreeSet<ContainerKey>,
}

impl Load {
    /// Adds (`claim`) or releases one container's count, memory, host ports and key.
    pub fn claim(&mut self, a: &Assignment, dynamic: DynamicRange, claim: bool) {
        if claim {
            self.keys.insert(a.container.clone());
        } else {
            self.keys.remove(&a.container);
        }
        let memory = a.mem_limit_mb.unwrap_or(0);
        if claim {
            self.containers = self.containers.saturating_add(1);
            self.memory_used = self.memory_used.saturating_add(memory);
        } else {
            self.containers = self.containers.saturating_sub(1);
            self.memory_used = self.memory_used.saturating_sub(memory);
        }
        for port in &a.ports {
            let Some(host) = port.host_port else { continue };
            let key = (port.protocol, host);
            let count = self.ports.entry(key).or_insert(0);
            let (first_claim, last_release) = if claim {
                *count += 1;
                (*count == 1, false)
            } else {
                *count = count.saturating_sub(1);
                (false, *count == 0)
            };
            if last_release {
                self.ports.remove(&key);
            }
            if !dynamic.contains(host) {
                continue;
            }
            let p = proto(port.protocol);
            let from = self.free_from[p].max(u32::from(dynamic.first));
            if first_claim {
                self.dynamic_used[p] += 1;
                if u32::from(host) == from {
                    // The lowest free one is taken: the next free one is past the used run.
                    let mut next = from + 1;
                    while next <= u32::from(dynamic.last)
                        && u16::try_from(next).is_ok_and(|n| self.ports.contains_key(&(port.protocol, n)))
                    {
                        next += 1;
                    }
                    self.free_from[p] = next;
                }
            } else if last_release {
                self.dynamic_used[p] = self.dynamic_used[p].saturating_sub(1);
                if u32::from(host) < from {
                    self.free_from[p] = u32::from(host);
                }
            }
        }
    }
}

impl NodeState {
    pub fn new(info: NodeInfo, load: Load, region: usize, provider: usize, group: usize) -> Self {
        NodeState {
            info,
            load,
            region,
            provider,
            group,
        }
    }

    /// Containers assigned here.
    pub fn containers(&self) -> u32 {
        self.load.containers
    }

    /// Whether the node can take one more container of `spec`, or the first reason it cannot.
    pub fn check(&self, spec: &ServiceSpec, dynamic: DynamicRange) -> Result<(), Refusal> {
        if !self.info.live {
            return Err(Refusal::NotLive);
        }
        if !self.info.serves(&spec.key.user) {
            return Err(Refusal::OtherTenants);
        }
        if !spec.tags.is_subset(&self.info.tags) {
            let tags = spec.tags.difference(&self.info.tags).cloned().collect();
            return Err(Refusal::MissingTags { tags });
        }
        for p in &spec.ports {
            if let Some(host_port) = p.host_port
                && self.load.ports.contains_key(&(p.protocol, host_port))
            {
                let (protocol, container_port) = (p.protocol, p.container_port);
                return Err(Refusal::HostPortInUse {
                    host_port,
                    protocol,
                    container_port,
                });
            }
        }
        if let (Some(capacity_mb), Some(needed_mb)) = (self.info.memory_mb, spec.mem_limit_mb)
            && needed_mb > 0
            && self.load.memory_used.saturating_add(needed_mb) > capacity_mb
        {
            let free_mb = capacity_mb.saturating_sub(self.load.memory_used);
            return Err(Refusal::InsufficientMemory {
                needed_mb,
                free_mb,
                capacity_mb,
            });
        }
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let (mut needed, mut own_fixed) = (0u64, 0u64);
            for p in spec.ports.iter().filter(|p| p.protocol == protocol) {
                match p.host_port {
                    None => needed += 1,
                    // Free here (checked above), but taken by the time dynamic ones are chosen.
                    Some(h) if dynamic.contains(h) => own_fixed += 1,
                    Some(_) => {}
                }
            }
            let taken = u64::from(self.load.dynamic_used[proto(protocol)]) + own_fixed;
            if needed > 0 && taken + needed > dynamic.len() {
                return Err(dynamic.exhausted(protocol));
            }
        }
        Ok(())
    }

    /// The service's ports here with every host port chosen: fixed ones as declared, dynamic
    /// ones the lowest free in the range. An error only where [`check`](Self::check) refuses
    /// the node too.
    pub fn allocate(&self, spec: &ServiceSpec, dynamic: DynamicRange) -> Result<Vec<Port>, Refusal> {
        let mut taken: Vec<(Protocol, u16)> = spec
            .ports
            .iter()
            .filter_map(|p| p.host_port.map(|h| (p.protocol, h)))
            .collect();
        let mut ports = Vec::with_capacity(spec.ports.len());
        for p in &spec.ports {
            let host = match p.host_port {
                Some(h) => h,
                None => {
                    let h = self
                        .lowest_free(p.protocol, &taken, dynamic)
                        .ok_or(dynamic.exhausted(p.protocol))?;
                    taken.push((p.protocol, h));
                    h
                }
            };
            ports.push(Port {
                container_port: p.container_port,
                host_port: Some(host),
                protocol: p.protocol,
            });
        }
        Ok(ports)
    }

    /// The lowest port of the dynamic range free here and not in `also_taken`: one walk over
    /// the ports in use, which are sorted.
    fn lowest_free(
        &self,
        protocol: Protocol,
        also_taken: &[(Protocol, u16)],
        dynamic: DynamicRange,
    ) -> Option<u16> {
        let DynamicRange { first, last } = dynamic;
        // Every port of the range below `free_from` is in use.
        let Ok(first) = u16::try_from(self.load.free_from[proto(protocol)].max(u32::from(first))) else {
            return None; // past the top: all in use
        };
        if first > last {
            return None;
        }
        let mut used = self
            .load
            .ports
            .range((protocol, first)..=(protocol, last))
            .map(|(&(_, p), _)| p);
        let mut next_used = used.next();
        let mut candidate = first;
        loop {
            while next_used.is_some_and(|u| u < candidate) {
                next_used = used.next();
            }
            if next_used != Some(candidate) && !also_taken.contains(&(protocol, candidate)) {
                return Some(candidate);
            }
            if candidate == last {
                return None;
            }
            candidate += 1;
        }
    }
}

fn proto(p: Protocol) -> usize {
    match p {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
    }
}
