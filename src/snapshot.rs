//! The immutable picture of the zone that the DNS answer path reads.
//!
//! A [`Snapshot`] is built by the control plane's single writer after each commit and published
//! with one atomic pointer swap; queries never see a half-applied change and never wait on a
//! writer. Everything a query needs is prepared here: names are keyed by their lower-case wire
//! labels below the apex, RDATA is already in wire form, RRsets are de-duplicated and sorted,
//! empty non-terminals exist as entries without data, and each RRset knows the additional
//! records (glue, SRV target addresses) that go with it.
//!
//! The only thing a query changes is an RRset's rotation cursor, an atomic counter.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::model::{Container, Node, Protocol};
use crate::name;
use crate::zone::{Zone, rtype};

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Order in which an RRset's records are returned (design §3 "round robin").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Rotation {
    /// Start one record further on each query (a per-RRset cursor).
    #[default]
    Cyclic,
    /// A fresh random order on each query.
    Random,
    /// Always the same (sorted) order.
    Fixed,
}

/// How dynamic records are published; fixed for the server's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// TTL of `svc`, `cont` and `node` records.
    pub ttl: u32,
    pub rotation: Rotation,
    /// Most records of a `svc` RRset returned per answer (0 = all): a rotating, fair subset.
    pub max_answers: u16,
}

/// A record that travels in the additional section with one record of an RRset.
#[derive(Debug)]
pub struct Additional {
    /// Index of the answer record whose target this record describes.
    pub record: u32,
    pub rtype: u16,
    pub ttl: u32,
    pub rdata: Box<[u8]>,
}

/// One RRset, ready to be written.
#[derive(Debug)]
pub struct RRset {
    pub rtype: u16,
    pub ttl: u32,
    /// Uncompressed wire RDATA, de-duplicated and sorted.
    pub records: Box<[Box<[u8]>]>,
    /// Addresses of in-zone targets (NS glue, SRV targets), ordered by `record`.
    pub additionals: Box<[Additional]>,
    pub rotation: Rotation,
    /// Most records per answer, 0 = all.
    pub limit: u16,
    cursor: AtomicU32,
}

impl RRset {
    /// Where this answer starts in `records`; advances the cursor for cyclic rotation.
    pub fn next_start(&self) -> usize {
        match self.rotation {
            Rotation::Fixed => 0,
            _ => self.cursor.fetch_add(1, Ordering::Relaxed) as usize % self.records.len().max(1),
        }
    }

    /// How many records one answer carries.
    pub fn answer_len(&self) -> usize {
        match self.limit {
            0 => self.records.len(),
            n => self.records.len().min(n as usize),
        }
    }

    /// Offset inside a record's RDATA of the domain name whose addresses go in the additional
    /// section, for the types that have one.
    pub fn target_offset(rtype: u16) -> Option<usize> {
        match rtype {
            rtype::NS | rtype::CNAME => Some(0),
            rtype::MX => Some(2),
            rtype::SRV => Some(6),
            _ => None,
        }
    }
}

/// A name that exists in the zone. No RRsets means an empty non-terminal or a known name
/// without live data: both answer NODATA, never NXDOMAIN.
#[derive(Debug, Default)]
pub struct Entry {
    pub rrsets: Box<[RRset]>,
}

impl Entry {
    pub fn rrset(&self, rtype: u16) -> Option<&RRset> {
        self.rrsets.iter().find(|r| r.rtype == rtype)
    }
}

/// The zone as the DNS path sees it at one serial.
#[derive(Debug)]
pub struct Snapshot {
    pub serial: u32,
    /// Absolute apex, lower-case wire form.
    pub apex: Box<[u8]>,
    /// SOA RDATA carrying `serial`.
    pub soa_rdata: Box<[u8]>,
    pub soa_ttl: u32,
    /// TTL of the SOA in negative answers.
    pub negative_ttl: u32,
    names: Map<Box<[u8]>, Entry>,
}

impl Snapshot {
    /// The entry for a name relative to the apex (lower-case wire labels).
    pub fn lookup(&self, rel: &[u8]) -> Option<&Entry> {
        self.names.get(rel)
    }

    /// Number of names, empty non-terminals included.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Every name with its entry, in no particular order (for zone transfer and tests).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &Entry)> {
        self.names.iter().map(|(k, v)| (&k[..], v))
    }
}

/// A record set under construction: (type, TTL, rotation, limit, RDATA list).
struct PendingSet {
    ttl: u32,
    rotation: Rotation,
    limit: u16,
    records: Vec<Box<[u8]>>,
}

/// Collects records name by name, then freezes them into a [`Snapshot`].
pub struct Builder {
    apex: Vec<u8>,
    names: Map<Box<[u8]>, BTreeMap<u16, PendingSet>>,
}

impl Builder {
    pub fn new(apex: &[u8]) -> Self {
        Self {
            apex: apex.to_vec(),
            names: Map::default(),
        }
    }

    /// Declares that `rel` exists even if it ends up without records (NODATA, not NXDOMAIN).
    pub fn name(&mut self, rel: &[u8]) {
        if !self.names.contains_key(rel) {
            self.names.insert(rel.into(), BTreeMap::new());
        }
    }

    /// Adds one record; the RRset takes the TTL, rotation and limit of its first record.
    pub fn record(&mut self, rel: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) {
        self.record_with(rel, rtype, ttl, rdata, Rotation::Cyclic, 0);
    }

    fn record_with(
        &mut self,
        rel: &[u8],
        rtype: u16,
        ttl: u32,
        rdata: &[u8],
        rotation: Rotation,
        limit: u16,
    ) {
        self.name(rel);
        if let Some(sets) = self.names.get_mut(rel) {
            sets.entry(rtype)
                .or_insert_with(|| PendingSet {
                    ttl,
                    rotation,
                    limit,
                    records: Vec::new(),
                })
                .records
                .push(rdata.into());
        }
    }

    /// Adds an address record (A or AAAA by address family).
    fn address(&mut self, rel: &[u8], addr: IpAddr, policy: &Policy, limit: u16) {
        match addr {
            IpAddr::V4(v4) => {
                self.record_with(rel, rtype::A, policy.ttl, &v4.octets(), policy.rotation, limit)
            }
            IpAddr::V6(v6) => {
                self.record_with(rel, rtype::AAAA, policy.ttl, &v6.octets(), policy.rotation, limit)
            }
        }
    }

    /// Freezes the collected names: adds empty non-terminals, de-duplicates and sorts each
    /// RRset, and attaches additional records for in-zone targets.
    pub fn finish(mut self, zone: &Zone, serial: u32) -> Snapshot {
        let existing: Vec<Box<[u8]>> = self.names.keys().cloned().collect();
        for rel in &existing {
            for parent in name::ancestors(rel) {
                if self.names.contains_key(parent) {
                    // Every ancestor of an entry was added along with it.
                    break;
                }
                self.names.insert(parent.into(), BTreeMap::new());
            }
        }
        self.name(b"");

        let mut frozen: Map<Box<[u8]>, Entry> = Map::default();
        frozen.reserve(self.names.len());
        for (rel, sets) in self.names.drain() {
            let rrsets = sets
                .into_iter()
                .map(|(rtype, mut set)| {
                    set.records.sort_unstable();
                    set.records.dedup();
                    RRset {
                        rtype,
                        ttl: set.ttl,
                        records: set.records.into_boxed_slice(),
                        additionals: Box::new([]),
                        rotation: set.rotation,
                        limit: set.limit,
                        // Start somewhere new after each change, so frequent updates do not
                        // keep sending every first answer to the same record.
                        cursor: AtomicU32::new(serial),
                    }
                })
                .collect();
            frozen.insert(rel, Entry { rrsets });
        }

        let additionals = collect_additionals(&frozen, &self.apex);
        for (rel, index, extra) in additionals {
            if let Some(set) = frozen.get_mut(&rel).and_then(|e| e.rrsets.get_mut(index)) {
                set.additionals = extra.into_boxed_slice();
            }
        }

        Snapshot {
            serial,
            apex: self.apex.into_boxed_slice(),
            soa_rdata: zone.soa.rdata(serial).into_boxed_slice(),
            soa_ttl: zone.soa.ttl,
            negative_ttl: zone.soa.negative_ttl(),
            names: frozen,
        }
    }
}

/// For every RRset whose records name a target inside the zone, the address records of
/// those targets (RFC 1035 §3.3 additional section processing, RFC 2782 for SRV).
fn collect_additionals(
    names: &Map<Box<[u8]>, Entry>,
    apex: &[u8],
) -> Vec<(Box<[u8]>, usize, Vec<Additional>)> {
    let mut out = Vec::new();
    for (rel, entry) in names {
        for (index, set) in entry.rrsets.iter().enumerate() {
            let Some(offset) = RRset::target_offset(set.rtype) else {
                continue;
            };
            if set.rtype == rtype::CNAME {
                continue; // CNAME targets are chased into the answer section instead.
            }
            let mut extra = Vec::new();
            for (i, rdata) in set.records.iter().enumerate() {
                let Some(target) = rdata.get(offset..).and_then(|t| name::strip_apex(t, apex)) else {
                    continue;
                };
                let Some(target_entry) = names.get(target) else {
                    continue;
                };
                for addr_type in [rtype::A, rtype::AAAA] {
                    if let Some(addrs) = target_entry.rrset(addr_type) {
                        extra.extend(addrs.records.iter().map(|a| Additional {
                            record: i as u32,
                            rtype: addr_type,
                            ttl: addrs.ttl,
                            rdata: a.clone(),
                        }));
                    }
                }
            }
            if !extra.is_empty() {
                out.push((rel.clone(), index, extra));
            }
        }
    }
    out
}

/// A registered node and whether its lease is live.
pub struct NodeView<'a> {
    pub node: &'a Node,
    pub live: bool,
}

/// Builds the whole zone: the zone file's records plus the platform names of design §2.
///
/// - `<node>.node` → the node's address, whatever its lease.
/// - `<c>.<stack>.<user>.cont` → exists for every known container; has an address only while
///   it runs on a live node (the agent-reported address, else the node's).
/// - `<service>.<stack>.<user>.svc` → exists while any container of it is known; lists the
///   de-duplicated addresses of its running containers on live nodes.
/// - `_<port>._<proto>.<service>…svc` SRV → one record per running container and published
///   port: priority 0, weight 1, the host port (or the container port if none is published),
///   target its `cont` name.
pub fn build<'a>(
    zone: &Zone,
    serial: u32,
    policy: &Policy,
    nodes: impl Iterator<Item = NodeView<'a>>,
    containers: impl Iterator<Item = &'a Container>,
) -> Snapshot {
    let mut b = Builder::new(&zone.apex);
    b.record(b"", rtype::SOA, zone.soa.ttl, &zone.soa.rdata(serial));
    for record in &zone.records {
        b.record(&record.owner, record.rtype, record.ttl, &record.rdata);
    }

    let mut node_index: Map<&str, (IpAddr, bool)> = Map::default();
    for NodeView { node, live } in nodes {
        node_index.insert(node.name.as_str(), (node.address, live));
        b.address(
            &name::relative(&[node.name.as_str(), "node"]),
            node.address,
            policy,
            0,
        );
    }

    for c in containers {
        let (user, stack) = (c.key.user.as_str(), c.key.stack.as_str());
        let cont = name::relative(&[c.key.name.as_str(), stack, user, "cont"]);
        let svc = name::relative(&[c.service.as_str(), stack, user, "svc"]);
        b.name(&cont);
        b.name(&svc);
        let srv_owner = |port: &crate::model::Port| {
            let mut owner = Vec::with_capacity(svc.len() + 12);
            name::push_label(&mut owner, &format!("_{}", port.container_port));
            name::push_label(&mut owner, proto_label(port.protocol));
            owner.extend_from_slice(&svc);
            owner
        };
        let node_addr = match node_index.get(c.node.as_str()) {
            Some(&(addr, true)) if c.running => addr,
            _ => {
                // Known but not answering: its names exist without data (NODATA, not NXDOMAIN).
                for port in &c.ports {
                    b.name(&srv_owner(port));
                }
                continue;
            }
        };
        let addr = c.address.unwrap_or(node_addr);
        b.address(&cont, addr, policy, 0);
        b.address(&svc, addr, policy, policy.max_answers);

        let mut target = cont.clone();
        target.extend_from_slice(&zone.apex);
        for port in &c.ports {
            let owner = srv_owner(port);
            let mut rdata = Vec::with_capacity(6 + target.len());
            rdata.extend_from_slice(&0u16.to_be_bytes());
            rdata.extend_from_slice(&1u16.to_be_bytes());
            rdata.extend_from_slice(&port.host_port.unwrap_or(port.container_port).to_be_bytes());
            rdata.extend_from_slice(&target);
            b.record_with(
                &owner,
                rtype::SRV,
                policy.ttl,
                &rdata,
                policy.rotation,
                policy.max_answers,
            );
        }
    }
    b.finish(zone, serial)
}

fn proto_label(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "_tcp",
        Protocol::Udp => "_udp",
    }
}

/// Where the current snapshot is published: the writer stores, queries load, nobody waits.
pub type SnapshotHandle = std::sync::Arc<arc_swap::ArcSwap<Snapshot>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ContainerKey, Label, Port};
    use crate::zone::Soa;

    fn label(s: &str) -> Label {
        Label::parse("test", s).expect("valid label")
    }

    fn zone() -> Zone {
        Zone {
            apex: b"\x07cluster\x04test\x00".to_vec(),
            soa: Soa {
                mname: b"\x03ns1\x07cluster\x04test\x00".to_vec(),
                rname: b"\x0ahostmaster\x07cluster\x04test\x00".to_vec(),
                file_serial: 1,
                refresh: 3600,
                retry: 600,
                expire: 86400,
                minimum: 5,
                ttl: 3600,
            },
            records: vec![],
        }
    }

    fn node(name: &str, addr: &str) -> Node {
        Node {
            name: label(name),
            address: addr.parse().expect("ip"),
            labels: Default::default(),
            tags: vec![],
            capacity: None,
            token_sha256: String::new(),
        }
    }

    fn container(name: &str, node: &str, running: bool) -> Container {
        Container {
            key: ContainerKey {
                user: label("u"),
                stack: label("s"),
                name: label(name),
            },
            node: label(node),
            service: label("web"),
            address: None,
            ports: vec![Port {
                container_port: 80,
                host_port: Some(8080),
                protocol: Protocol::Tcp,
            }],
            generation: 1,
            running,
        }
    }

    const POLICY: Policy = Policy {
        ttl: 5,
        rotation: Rotation::Cyclic,
        max_answers: 0,
    };

    #[test]
    fn builds_platform_names_with_empty_non_terminals() {
        let nodes = [node("n1", "10.0.0.1"), node("n2", "10.0.0.2")];
        let views = [(0, true), (1, false)].map(|(i, live)| NodeView {
            node: &nodes[i],
            live,
        });
        let containers = [
            container("web-1", "n1", true),
            container("web-2", "n1", true),
            container("web-3", "n2", true),
            container("web-4", "n1", false),
        ];
        let snap = build(&zone(), 9, &POLICY, views.into_iter(), containers.iter());
        let svc = snap
            .lookup(&name::relative(&["web", "s", "u", "svc"]))
            .expect("svc");
        let a = svc.rrset(rtype::A).expect("A");
        assert_eq!(
            &*a.records,
            &[Box::from(&[10u8, 0, 0, 1][..])],
            "de-duplicated, live only"
        );
        let srv = snap
            .lookup(&name::relative(&["_80", "_tcp", "web", "s", "u", "svc"]))
            .expect("srv");
        let srv = srv.rrset(rtype::SRV).expect("SRV");
        assert_eq!(srv.records.len(), 2, "web-1 and web-2");
        assert_eq!(srv.additionals.len(), 2, "their addresses");
        for ent in [
            &["s", "u", "svc"][..],
            &["u", "svc"],
            &["svc"],
            &["_tcp", "web", "s", "u", "svc"],
            &["node"],
        ] {
            let entry = snap.lookup(&name::relative(ent)).expect("empty non-terminal");
            assert!(entry.rrsets.is_empty(), "{ent:?}");
        }
        let lost = snap
            .lookup(&name::relative(&["web-3", "s", "u", "cont"]))
            .expect("known");
        assert!(lost.rrsets.is_empty(), "a container on a lost node is NODATA");
        assert!(
            snap.lookup(&name::relative(&["n2", "node"]))
                .expect("node")
                .rrset(rtype::A)
                .is_some()
        );
        let apex = snap.lookup(b"").expect("apex");
        assert_eq!(
            apex.rrset(rtype::SOA).expect("SOA").records[0][..],
            zone().soa.rdata(9)[..]
        );
        assert_eq!(snap.serial, 9);
    }

    #[test]
    fn cyclic_rotation_visits_every_start() {
        let nodes = [node("n1", "10.0.0.1")];
        let mut containers: Vec<_> = (1..=3)
            .map(|i| container(&format!("web-{i}"), "n1", true))
            .collect();
        for (i, c) in containers.iter_mut().enumerate() {
            c.address = Some(format!("10.9.0.{i}").parse().expect("ip"));
        }
        let views = [NodeView {
            node: &nodes[0],
            live: true,
        }];
        let snap = build(&zone(), 1, &POLICY, views.into_iter(), containers.iter());
        let a = snap
            .lookup(&name::relative(&["web", "s", "u", "svc"]))
            .and_then(|e| e.rrset(rtype::A))
            .expect("A");
        let starts: std::collections::BTreeSet<_> = (0..3).map(|_| a.next_start()).collect();
        assert_eq!(starts.len(), 3);
    }
}
