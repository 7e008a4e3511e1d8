//! How the platform's state becomes DNS records (design §2, §3), one node, container or service
//! at a time; the names themselves are spelled by [`crate::scheme`].
//!
//! - `<node>.node` → the node's address, whatever its lease.
//! - `<c>.<stack>.<user>.cont` → exists for every known container; has an address only while it
//!   runs on a live node (the agent-reported address, else the node's).
//! - `<service>.<stack>.<user>.svc` → exists while any container of it is known; lists the
//!   de-duplicated addresses of its running containers on live nodes.
//! - `_<port>._<proto>.<service>…svc` SRV → one record per running container and published
//!   port: priority 0, weight 1, the host port (or the container port when none is published),
//!   target its `cont` name, whose address rides in the additional section.
//!
//! The caller (the control writer) says what changed; the projection recomputes exactly those
//! names. Nothing here reads the store.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use super::journal::{Diff, Journal, JournalLimits};
use super::names::Names;
use super::{Entry, Extras, Policy, RRset, Rotation, Snapshot};
use crate::model::{ContainerKey, Label, Port, PortSpec, Protocol, ServiceKey};
use crate::zone::{Zone, rtype};
use crate::{name, scheme};

/// The journal may always hold this many records, however small the zone.
const MIN_JOURNAL_RECORDS: usize = 10_000;

/// A container of a service, as the service's names need it.
pub struct Member<'a> {
    pub key: &'a ContainerKey,
    /// Where it answers, if it runs on a live node.
    pub address: Option<IpAddr>,
    pub ports: &'a [Port],
}

/// `_<port>._<proto>` of an SRV name.
type SrvName = (u16, Protocol);

/// Records with the additional records of each.
type Items = Vec<(Box<[u8]>, Extras)>;
/// Records with at most one additional record each (an SRV record and its target's address).
type OneExtra = Vec<(Box<[u8]>, Option<(u16, u32, Box<[u8]>)>)>;
/// A zone-file RRset: (type, TTL, records with their extras).
type StaticSet = (u16, u32, Items);
/// The zone file's records grouped by owner, then type: (TTL, RDATA list).
type ByName<'z> = BTreeMap<&'z [u8], BTreeMap<u16, (u32, Vec<Box<[u8]>>)>>;

/// The writer's side of the zone: the mutable name table plus what is needed to update it.
pub struct Projection {
    zone: Zone,
    policy: Policy,
    names: Names,
    /// The apex's zone-file RRsets; the apex entry is rebuilt with each serial's SOA.
    apex_sets: Vec<StaticSet>,
    /// The SRV names each service set last time, as (port, protocol), to unset the ones that
    /// disappear; the names themselves are spelled again when needed.
    srv_owners: HashMap<ServiceKey, Box<[SrvName]>>,
    /// Differences of the last publications, within `journal_limits`.
    journal: Journal,
    journal_limits: JournalLimits,
    /// The serial last published, which the next difference starts from.
    published: Option<u32>,
}

impl Projection {
    /// A projection holding the zone file's records and nothing dynamic yet, keeping the
    /// differences of recent publications within `journal_limits`.
    pub fn new(zone: Zone, policy: Policy, journal_limits: JournalLimits) -> Self {
        let mut by_name: ByName<'_> = BTreeMap::new();
        for r in &zone.records {
            let set = by_name
                .entry(&r.owner)
                .or_default()
                .entry(r.rtype)
                .or_insert((r.ttl, Vec::new()));
            set.1.push(r.rdata.clone().into_boxed_slice());
        }
        // Glue and other in-zone target addresses, looked up among the zone file's names.
        let extras_for = |rtype: u16, rdata: &[u8]| -> Extras {
            let Some(target) = RRset::target_offset(rtype)
                .filter(|_| rtype != rtype::CNAME)
                .and_then(|at| rdata.get(at..))
                .and_then(|t| name::strip_apex(t, &zone.apex))
            else {
                return Vec::new();
            };
            let sets = by_name.get(target);
            [rtype::A, rtype::AAAA]
                .into_iter()
                .filter_map(|t| sets.and_then(|s| s.get(&t)).map(|(ttl, rs)| (t, *ttl, rs)))
                .flat_map(|(t, ttl, rs)| rs.iter().map(move |r| (t, ttl, r.clone())))
                .collect()
        };
        let mut statics: Vec<(Vec<u8>, Vec<StaticSet>)> = Vec::new();
        for (owner, sets) in &by_name {
            let sets = sets
                .iter()
                .map(|(&t, (ttl, records))| {
                    let items = records.iter().map(|r| (r.clone(), extras_for(t, r))).collect();
                    (t, *ttl, items)
                })
                .collect();
            statics.push((owner.to_vec(), sets));
        }

        let mut projection = Self {
            zone,
            policy,
            names: Names::default(),
            apex_sets: Vec::new(),
            srv_owners: HashMap::new(),
            journal: Journal::default(),
            journal_limits,
            published: None,
        };
        for (owner, sets) in statics {
            if owner.is_empty() {
                projection.apex_sets = sets;
            } else {
                projection.names.set(&owner, static_entry(&sets));
            }
        }
        projection
    }

    fn address_sets(&self, addrs: impl IntoIterator<Item = IpAddr>, limit: u16) -> Vec<RRset> {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for addr in addrs {
            match addr {
                IpAddr::V4(a) => v4.push(a.octets()),
                IpAddr::V6(a) => v6.push(a.octets()),
            }
        }
        // De-duplicated as plain arrays, before a box is made for each: a service's containers
        // often share their nodes' addresses.
        fn boxed<const N: usize>(mut addrs: Vec<[u8; N]>) -> Vec<Box<[u8]>> {
            addrs.sort_unstable();
            addrs.dedup();
            addrs.iter().map(|a| Box::from(&a[..])).collect()
        }
        let Policy { ttl, rotation, .. } = self.policy;
        vec![
            RRset::new(rtype::A, ttl, rotation, limit, boxed(v4)),
            RRset::new(rtype::AAAA, ttl, rotation, limit, boxed(v6)),
        ]
    }

    /// `<node>.node`: the node's address, or gone when `address` is `None`.
    pub fn node(&mut self, node: &Label, address: Option<IpAddr>) {
        let rel = scheme::node_rel(node);
        match address {
            Some(addr) => {
                let entry = Entry::new(self.address_sets([addr], 0));
                self.names.set(&rel, entry);
            }
            None => self.names.unset(&rel),
        }
    }

    /// `<c>.<stack>.<user>.cont`: `known` says whether it exists at all, `address` whether it
    /// answers.
    pub fn container(&mut self, key: &ContainerKey, known: bool, address: Option<IpAddr>) {
        let rel = scheme::container_rel(key);
        if !known {
            self.names.unset(&rel);
            return;
        }
        let entry = Entry::new(self.address_sets(address, 0));
        self.names.set(&rel, entry);
    }

    /// The service's name and its SRV names, from every known container of it. A service a
    /// stack declares (`declared`: its ports) has its names even with no container yet.
    pub fn service(&mut self, key: &ServiceKey, members: &[Member<'_>], declared: Option<&[PortSpec]>) {
        let svc = scheme::service_rel(key);
        let old_owners = self.srv_owners.remove(key).unwrap_or_default();
        if members.is_empty() && declared.is_none() {
            self.names.unset(&svc);
            for &(port, protocol) in &old_owners {
                self.names.unset(&scheme::srv_rel(port, protocol, &svc));
            }
            return;
        }
        let Policy {
            ttl,
            rotation,
            max_answers,
        } = self.policy;
        let entry = Entry::new(self.address_sets(members.iter().filter_map(|m| m.address), max_answers));
        self.names.set(&svc, entry);

        let mut srv: BTreeMap<SrvName, OneExtra> = BTreeMap::new();
        for p in declared.unwrap_or_default() {
            srv.entry((p.container_port, p.protocol)).or_default();
        }
        for m in members {
            for port in m.ports {
                let records = srv.entry((port.container_port, port.protocol)).or_default();
                let Some(addr) = m.address else {
                    continue; // Known, not answering: the name exists without data.
                };
                // Sized exactly, so the box it becomes is the same allocation.
                let apex = &self.zone.apex;
                let mut rdata = Vec::with_capacity(6 + scheme::container_target_len(m.key, apex));
                rdata.extend_from_slice(&0u16.to_be_bytes());
                rdata.extend_from_slice(&1u16.to_be_bytes());
                rdata.extend_from_slice(&port.host_port.unwrap_or(port.container_port).to_be_bytes());
                scheme::push_container_target(&mut rdata, m.key, apex);
                let extra = match addr {
                    IpAddr::V4(a) => (rtype::A, ttl, Box::from(&a.octets()[..])),
                    IpAddr::V6(a) => (rtype::AAAA, ttl, Box::from(&a.octets()[..])),
                };
                records.push((rdata.into_boxed_slice(), Some(extra)));
            }
        }
        let owners: Box<[SrvName]> = srv.keys().copied().collect();
        for (&(port, protocol), items) in &mut srv {
            let entry = Entry::new(vec![RRset::with_extras(
                rtype::SRV,
                ttl,
                rotation,
                max_answers,
                std::mem::take(items),
            )]);
            self.names.set(&scheme::srv_rel(port, protocol, &svc), entry);
        }
        for &(port, protocol) in old_owners.iter().filter(|o| !srv.contains_key(o)) {
            self.names.unset(&scheme::srv_rel(port, protocol, &svc));
        }
        self.srv_owners.insert(key.clone(), owners);
    }

    /// The journal as of the last publication.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Continues `journal` (read from the store); the current names must be the zone at its
    /// last serial. With the journal turned off it is dropped: it would never be extended,
    /// and an IXFR answered from it would miss every later change.
    pub fn resume_journal(&mut self, journal: Journal) {
        if self.journal_limits.diffs > 0 {
            self.journal = journal;
        }
    }

    /// A stable hash of everything besides platform state that decides the records: the zone
    /// file (serial aside) and the record policy. A stored journal is only valid for the same.
    pub fn fingerprint(&self) -> u64 {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let soa = &self.zone.soa;
        h.update(&self.zone.apex);
        h.update(&soa.mname);
        h.update(&soa.rname);
        for v in [
            soa.refresh,
            soa.retry,
            soa.expire,
            soa.minimum,
            soa.ttl,
            self.policy.ttl,
        ] {
            h.update(v.to_be_bytes());
        }
        h.update([self.policy.rotation as u8]);
        h.update(self.policy.max_answers.to_be_bytes());
        for r in &self.zone.records {
            h.update([r.owner.len() as u8]);
            h.update(&r.owner);
            h.update(r.rtype.to_be_bytes());
            h.update(r.ttl.to_be_bytes());
            h.update((r.rdata.len() as u16).to_be_bytes());
            h.update(&r.rdata);
        }
        let digest = h.finalize();
        u64::from_be_bytes(digest[..8].try_into().unwrap_or_default())
    }

    /// Freezes the current names into a snapshot at `serial`, with the apex SOA carrying it.
    ///
    /// From the second publication on, also returns the difference from the previous one,
    /// which the snapshot's journal already holds (the caller stores it).
    pub fn publish(&mut self, serial: u32) -> (Snapshot, Option<Arc<Diff>>) {
        let soa_rdata = self.zone.soa.rdata(serial);
        let mut apex = static_sets(&self.apex_sets);
        apex.push(RRset::new(
            rtype::SOA,
            self.zone.soa.ttl,
            Rotation::Fixed,
            0,
            vec![soa_rdata.clone().into_boxed_slice()],
        ));
        self.names.set(b"", Entry::new(apex));
        let diff = match self.published {
            Some(from) if self.journal_limits.diffs > 0 => {
                let diff = Arc::new(Diff::from_changes(from, serial, &self.names.take_changes()));
                let max_records = self.names.len().max(MIN_JOURNAL_RECORDS);
                let JournalLimits { diffs, bytes } = self.journal_limits;
                self.journal = self.journal.push(diff.clone(), diffs, max_records, bytes);
                Some(diff)
            }
            _ => {
                // The first publication is the base the differences start from.
                self.names.record_changes();
                self.names.take_changes();
                None
            }
        };
        self.published = Some(serial);
        let snapshot = Snapshot {
            serial,
            apex: self.zone.apex.clone().into_boxed_slice(),
            soa_rdata: soa_rdata.into_boxed_slice(),
            soa_ttl: self.zone.soa.ttl,
            negative_ttl: self.zone.soa.negative_ttl(),
            journal: self.journal.clone(),
            names: self.names.freeze(),
        };
        (snapshot, diff)
    }
}

fn static_sets(sets: &[StaticSet]) -> Vec<RRset> {
    sets.iter()
        .map(|(t, ttl, items)| RRset::with_extras(*t, *ttl, Rotation::Cyclic, 0, items.clone()))
        .collect()
}

fn static_entry(sets: &[StaticSet]) -> Entry {
    Entry::new(static_sets(sets))
}

#[cfg(test)]
mod tests;
