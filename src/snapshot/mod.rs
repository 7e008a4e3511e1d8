//! The immutable picture of the zone that the DNS answer path reads.
//!
//! A [`Snapshot`] is published by the control plane's single writer after each commit with one
//! atomic pointer swap; queries never see a half-applied change and never wait on a writer.
//! Everything a query needs is prepared: names are keyed by their lower-case wire labels below
//! the apex, RDATA is in wire form, RRsets are de-duplicated and sorted, empty non-terminals
//! exist as entries without data, and each RRset carries the additional records (glue, SRV
//! target addresses) that go with it.
//!
//! Snapshots share structure: [`names::Names`] is copied on write shard by shard, and
//! [`platform::Projection`] recomputes only the names a change touched, so publishing a change
//! costs in proportion to the change, not to the zone. The only thing a query changes is an
//! RRset's rotation cursor, an atomic counter.

pub mod journal;
pub mod names;
pub mod platform;

use std::sync::atomic::{AtomicU32, Ordering};

use crate::zone::rtype;

pub use platform::Projection;

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
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// The address records (type, TTL, RDATA) that describe one record's target.
pub type Extras = Vec<(u16, u32, Box<[u8]>)>;

impl RRset {
    /// An RRset from records in any order, duplicates allowed.
    pub fn new(rtype: u16, ttl: u32, rotation: Rotation, limit: u16, records: Vec<Box<[u8]>>) -> Self {
        Self::with_extras(
            rtype,
            ttl,
            rotation,
            limit,
            records.into_iter().map(|r| (r, None)).collect(),
        )
    }

    /// An RRset whose records come with additional records of their own (any collection of
    /// them: an SRV record's one address is an `Option`, which costs no allocation).
    pub fn with_extras<E: IntoIterator<Item = (u16, u32, Box<[u8]>)>>(
        rtype: u16,
        ttl: u32,
        rotation: Rotation,
        limit: u16,
        mut items: Vec<(Box<[u8]>, E)>,
    ) -> Self {
        items.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        items.dedup_by(|a, b| a.0 == b.0);
        let mut records = Vec::with_capacity(items.len());
        let mut additionals = Vec::new();
        for (i, (rdata, extras)) in items.into_iter().enumerate() {
            records.push(rdata);
            additionals.extend(extras.into_iter().map(|(rtype, ttl, rdata)| Additional {
                record: i as u32,
                rtype,
                ttl,
                rdata,
            }));
        }
        Self {
            rtype,
            ttl,
            records: records.into_boxed_slice(),
            additionals: additionals.into_boxed_slice(),
            rotation,
            limit,
            cursor: AtomicU32::new(0),
        }
    }

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

    /// Same records and settings (the cursor aside).
    fn same_data(&self, other: &RRset) -> bool {
        self.rtype == other.rtype
            && self.ttl == other.ttl
            && self.rotation == other.rotation
            && self.limit == other.limit
            && self.records == other.records
            && self.additionals == other.additionals
    }
}

/// A name that exists in the zone. No RRsets means an empty non-terminal or a known name
/// without live data: both answer NODATA, never NXDOMAIN.
#[derive(Debug, Default)]
pub struct Entry {
    /// Ordered by type.
    pub rrsets: Box<[RRset]>,
}

impl Entry {
    /// An entry from RRsets in any order; empty RRsets are left out.
    pub fn new(mut rrsets: Vec<RRset>) -> Self {
        rrsets.retain(|r| !r.records.is_empty());
        rrsets.sort_by_key(|r| r.rtype);
        Self {
            rrsets: rrsets.into_boxed_slice(),
        }
    }

    pub fn rrset(&self, rtype: u16) -> Option<&RRset> {
        self.rrsets.iter().find(|r| r.rtype == rtype)
    }

    fn same_data(&self, other: &Entry) -> bool {
        self.rrsets.len() == other.rrsets.len()
            && self
                .rrsets
                .iter()
                .zip(other.rrsets.iter())
                .all(|(a, b)| a.same_data(b))
    }
}

/// The zone as the DNS path sees it at one serial.
pub struct Snapshot {
    pub serial: u32,
    /// Absolute apex, lower-case wire form.
    pub apex: Box<[u8]>,
    /// SOA RDATA carrying `serial`.
    pub soa_rdata: Box<[u8]>,
    /// TTL of the apex SOA record.
    pub soa_ttl: u32,
    /// TTL of the SOA in negative answers: min(SOA TTL, SOA MINIMUM) (RFC 2308 §3).
    pub negative_ttl: u32,
    /// The differences that led to this serial, for IXFR.
    pub journal: journal::Journal,
    names: names::Frozen,
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
        self.names.iter()
    }
}

/// Where the current snapshot is published: the writer stores, queries load, nobody waits.
pub type SnapshotHandle = std::sync::Arc<arc_swap::ArcSwap<Snapshot>>;
