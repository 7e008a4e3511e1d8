//! The IXFR journal: what each published serial added to and removed from the zone.
//!
//! A [`Diff`] is computed from the names a publication changed (their entries before and
//! after), so it costs in proportion to the change. The [`Journal`] is an immutable, bounded,
//! contiguous chain of diffs carried by every snapshot, so an IXFR (RFC 1995) is answered from
//! the same snapshot it started on. The writer also stores each diff in redb, so the chain
//! survives a restart.

use std::sync::Arc;

use super::names::Change;
use super::{Entry, RRset};
use crate::zone::rtype;

/// One record, owner relative to the apex.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Record {
    pub owner: Box<[u8]>,
    pub rtype: u16,
    pub ttl: u32,
    pub rdata: Box<[u8]>,
}

/// One record of a [`Diff`], borrowed from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'d> {
    pub owner: &'d [u8],
    pub rtype: u16,
    pub ttl: u32,
    pub rdata: &'d [u8],
}

/// The difference between the zone at serial `from` and at serial `to`.
///
/// Held in its stored form, one flat buffer (see [`Diff::bytes`]): a journal of a million
/// records is a few tens of MiB in a handful of allocations, not two boxes per record, and
/// storing it costs no encoding.
#[derive(Clone, PartialEq, Eq)]
pub struct Diff {
    pub from: u32,
    pub to: u32,
    bytes: Box<[u8]>,
    /// Where the added section's count starts.
    added_at: usize,
    removed: u32,
    added: u32,
}

/// A difference's two sections as they are being written: (count, record bytes) each.
#[derive(Default)]
struct Sections {
    removed: (u32, Vec<u8>),
    added: (u32, Vec<u8>),
}

fn put(section: &mut (u32, Vec<u8>), owner: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) {
    let out = &mut section.1;
    out.push(owner.len() as u8);
    out.extend_from_slice(owner);
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(rdata);
    section.0 += 1;
}

/// The RRsets of an entry a difference covers: the apex SOA frames every IXFR step and is
/// not part of one.
fn diffable<'e>(owner: &[u8], entry: &'e Entry) -> impl Iterator<Item = &'e RRset> {
    let apex = owner.is_empty();
    entry
        .rrsets
        .iter()
        .filter(move |set| !(apex && set.rtype == rtype::SOA))
}

impl Sections {
    /// The difference in its stored form (see [`Diff::bytes`]).
    fn into_diff(self, from: u32, to: u32) -> Diff {
        let Sections { removed, added } = self;
        let mut out = Vec::with_capacity(16 + removed.1.len() + added.1.len());
        out.extend_from_slice(&from.to_be_bytes());
        out.extend_from_slice(&to.to_be_bytes());
        out.extend_from_slice(&removed.0.to_be_bytes());
        out.extend_from_slice(&removed.1);
        let added_at = out.len();
        out.extend_from_slice(&added.0.to_be_bytes());
        out.extend_from_slice(&added.1);
        Diff {
            from,
            to,
            bytes: out.into_boxed_slice(),
            added_at,
            removed: removed.0,
            added: added.0,
        }
    }

    /// Writes what changed between two entries of `owner`. Both list RRsets by type and each
    /// RRset's records sorted and unique, so one merge walk finds the difference: a change to
    /// one record of a large RRset costs a comparison per record and allocates nothing.
    fn entries(&mut self, owner: &[u8], old: &Entry, new: &Entry) {
        let (mut old, mut new) = (diffable(owner, old).peekable(), diffable(owner, new).peekable());
        loop {
            match (old.peek(), new.peek()) {
                (None, None) => return,
                (Some(o), Some(n)) if o.rtype == n.rtype && o.ttl == n.ttl => {
                    self.rrsets(owner, o, n);
                    old.next();
                    new.next();
                }
                (Some(o), Some(n)) if o.rtype == n.rtype => {
                    // Same type, another TTL: every record is another record.
                    self.all(owner, o, false);
                    self.all(owner, n, true);
                    old.next();
                    new.next();
                }
                (Some(o), Some(n)) if o.rtype < n.rtype => {
                    self.all(owner, o, false);
                    old.next();
                }
                (Some(o), None) => {
                    self.all(owner, o, false);
                    old.next();
                }
                (_, Some(n)) => {
                    self.all(owner, n, true);
                    new.next();
                }
            }
        }
    }

    fn all(&mut self, owner: &[u8], set: &RRset, added: bool) {
        let section = if added { &mut self.added } else { &mut self.removed };
        for rdata in set.records.iter() {
            put(section, owner, set.rtype, set.ttl, rdata);
        }
    }

    fn rrsets(&mut self, owner: &[u8], old: &RRset, new: &RRset) {
        let (t, ttl) = (old.rtype, old.ttl);
        let (mut i, mut j) = (0, 0);
        let (a, b) = (&old.records, &new.records);
        while i < a.len() || j < b.len() {
            match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) if x == y => {
                    i += 1;
                    j += 1;
                }
                (Some(x), Some(y)) if x < y => {
                    put(&mut self.removed, owner, t, ttl, x);
                    i += 1;
                }
                (Some(x), None) => {
                    put(&mut self.removed, owner, t, ttl, x);
                    i += 1;
                }
                (_, Some(y)) => {
                    put(&mut self.added, owner, t, ttl, y);
                    j += 1;
                }
                (None, None) => break,
            }
        }
    }
}

impl Diff {
    /// The difference made by `changes` (names with their entries before and after).
    pub fn from_changes(from: u32, to: u32, changes: &[Change]) -> Self {
        let mut sections = Sections::default();
        for (owner, old, new) in changes {
            sections.entries(owner, old, new);
        }
        sections.into_diff(from, to)
    }

    /// The difference that removes and adds these records.
    pub fn new(from: u32, to: u32, removed: &[Record], added: &[Record]) -> Self {
        let mut sections = Sections::default();
        for r in removed {
            put(&mut sections.removed, &r.owner, r.rtype, r.ttl, &r.rdata);
        }
        for r in added {
            put(&mut sections.added, &r.owner, r.rtype, r.ttl, &r.rdata);
        }
        sections.into_diff(from, to)
    }

    /// Records removed plus records added.
    pub fn records(&self) -> usize {
        self.removed as usize + self.added as usize
    }

    /// The bytes it holds (what it costs in memory and in the store).
    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The records the step removes, in the order they were computed.
    pub fn removed(&self) -> Records<'_> {
        Records {
            r: Reader {
                bytes: &self.bytes[..self.added_at],
                pos: 12,
            },
            left: self.removed,
        }
    }

    /// The records the step adds.
    pub fn added(&self) -> Records<'_> {
        Records {
            r: Reader {
                bytes: &self.bytes,
                pos: self.added_at + 4,
            },
            left: self.added,
        }
    }

    /// The stored form: from, to, then each section (removed, added) as a count and records
    /// (owner length, owner, type, TTL, RDATA length, RDATA), all big-endian.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Reads [`Diff::bytes`]'s form, checking every record; `None` if the bytes are not a diff.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader { bytes, pos: 0 };
        let from = r.u32()?;
        let to = r.u32()?;
        let mut counts = [0u32; 2];
        let mut added_at = 0;
        for count in &mut counts {
            added_at = r.pos;
            *count = r.u32()?;
            for _ in 0..*count {
                r.record()?;
            }
        }
        (r.pos == bytes.len()).then(|| Diff {
            from,
            to,
            bytes: bytes.into(),
            added_at,
            removed: counts[0],
            added: counts[1],
        })
    }
}

impl std::fmt::Debug for Diff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Diff")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("removed", &self.removed().collect::<Vec<_>>())
            .field("added", &self.added().collect::<Vec<_>>())
            .finish()
    }
}

/// The records of one section of a [`Diff`].
pub struct Records<'d> {
    r: Reader<'d>,
    left: u32,
}

impl<'d> Iterator for Records<'d> {
    type Item = RecordRef<'d>;

    fn next(&mut self) -> Option<RecordRef<'d>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Checked when the diff was built or decoded, so this always reads a whole record.
        self.r.record()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

impl ExactSizeIterator for Records<'_> {}

struct Reader<'b> {
    bytes: &'b [u8],
    pos: usize,
}

impl<'b> Reader<'b> {
    fn take(&mut self, n: usize) -> Option<&'b [u8]> {
        let out = self.bytes.get(self.pos..self.pos + n)?;
        self.pos += n;
        Some(out)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn record(&mut self) -> Option<RecordRef<'b>> {
        let owner_len = self.take(1)?[0] as usize;
        let owner = self.take(owner_len)?;
        let rtype = self.u16()?;
        let ttl = self.u32()?;
        let rdlen = self.u16()? as usize;
        let rdata = self.take(rdlen)?;
        Some(RecordRef {
            owner,
            rtype,
            ttl,
            rdata,
        })
    }
}

/// How much history a journal keeps: at most `diffs` differences (0: no journal) in at most
/// `bytes`, always the newest difference whatever its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalLimits {
    pub diffs: usize,
    pub bytes: usize,
}

impl JournalLimits {
    /// What the tests use: a short history, no byte bound to speak of.
    pub const SMALL: JournalLimits = JournalLimits {
        diffs: 16,
        bytes: 1 << 30,
    };
}

/// A bounded chain of consecutive diffs, oldest first; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Journal {
    diffs: Arc<[Arc<Diff>]>,
}

impl Journal {
    /// A journal from stored diffs; any break in the chain drops everything before it.
    pub fn from_diffs(diffs: Vec<Diff>) -> Self {
        let mut chain: Vec<Arc<Diff>> = Vec::with_capacity(diffs.len());
        for diff in diffs {
            if chain.last().is_some_and(|last| last.to != diff.from) {
                chain.clear();
            }
            chain.push(Arc::new(diff));
        }
        Self { diffs: chain.into() }
    }

    /// This journal with `diff` appended, keeping at most `limit` diffs and, beyond the newest
    /// one, at most `max_records` records in at most `max_bytes`: once the differences
    /// outweigh the zone, a whole transfer is the cheaper answer, and memory stays bounded.
    pub fn push(&self, diff: Arc<Diff>, limit: usize, max_records: usize, max_bytes: usize) -> Self {
        if limit == 0 {
            return Self::default();
        }
        let contiguous = self.diffs.last().is_none_or(|last| last.to == diff.from);
        let keep = if contiguous { &self.diffs[..] } else { &[] };
        let mut skip = (keep.len() + 1).saturating_sub(limit);
        let kept = &keep[skip..];
        let mut records: usize = diff.records() + kept.iter().map(|d| d.records()).sum::<usize>();
        let mut bytes: usize = diff.len_bytes() + kept.iter().map(|d| d.len_bytes()).sum::<usize>();
        while skip < keep.len() && (records > max_records || bytes > max_bytes) {
            records -= keep[skip].records();
            bytes -= keep[skip].len_bytes();
            skip += 1;
        }
        let diffs: Vec<Arc<Diff>> = keep[skip..].iter().cloned().chain([diff]).collect();
        Self { diffs: diffs.into() }
    }

    /// The bytes its differences hold.
    pub fn len_bytes(&self) -> usize {
        self.diffs.iter().map(|d| d.len_bytes()).sum()
    }

    /// The serial the oldest kept difference leads to.
    pub fn oldest_serial(&self) -> Option<u32> {
        self.diffs.first().map(|d| d.to)
    }

    /// The diffs leading from serial `from` to the latest one, if the journal reaches back
    /// that far.
    pub fn since(&self, from: u32) -> Option<&[Arc<Diff>]> {
        let start = self.diffs.iter().position(|d| d.from == from)?;
        Some(&self.diffs[start..])
    }

    pub fn len(&self) -> usize {
        self.diffs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.diffs.is_empty()
    }

    /// The serial the journal ends at.
    pub fn last_serial(&self) -> Option<u32> {
        self.diffs.last().map(|d| d.to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(owner: &str, last: u8) -> Record {
        Record {
            owner: crate::name::relative(&[owner]).into(),
            rtype: rtype::A,
            ttl: 5,
            rdata: vec![10, 0, 0, last].into(),
        }
    }

    fn diff(from: u32, to: u32) -> Diff {
        Diff::new(from, to, &[rec("a", 1)], &[rec("a", 2), rec("b", 3)])
    }

    fn owned(r: RecordRef<'_>) -> Record {
        Record {
            owner: r.owner.into(),
            rtype: r.rtype,
            ttl: r.ttl,
            rdata: r.rdata.into(),
        }
    }

    #[test]
    fn diffs_round_trip_through_bytes() {
        let d = diff(7, 8);
        assert_eq!(d.removed().map(owned).collect::<Vec<_>>(), [rec("a", 1)]);
        assert_eq!(
            d.added().map(owned).collect::<Vec<_>>(),
            [rec("a", 2), rec("b", 3)]
        );
        assert_eq!((d.removed().len(), d.added().len(), d.records()), (1, 2, 3));
        let back = Diff::decode(d.bytes()).expect("decodes");
        assert_eq!(back, d);
        assert_eq!(
            back.added().map(owned).collect::<Vec<_>>(),
            [rec("a", 2), rec("b", 3)]
        );
        let bytes = d.bytes();
        assert_eq!(Diff::decode(&bytes[..bytes.len() - 1]), None);
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(Diff::decode(&longer), None, "trailing bytes");
        let empty = Diff::new(1, 2, &[], &[]);
        assert_eq!(Diff::decode(empty.bytes()).map(|d| d.records()), Some(0));
    }

    /// The difference as sets of records: what the merge walk must find.
    fn by_sets(owner: &[u8], old: &Entry, new: &Entry) -> (Vec<Record>, Vec<Record>) {
        use std::collections::BTreeSet;
        let set = |e: &Entry| -> BTreeSet<Record> {
            e.rrsets
                .iter()
                .filter(|s| !(owner.is_empty() && s.rtype == rtype::SOA))
                .flat_map(|s| {
                    s.records.iter().map(move |r| Record {
                        owner: owner.into(),
                        rtype: s.rtype,
                        ttl: s.ttl,
                        rdata: r.clone(),
                    })
                })
                .collect()
        };
        let (o, n) = (set(old), set(new));
        (
            o.difference(&n).cloned().collect(),
            n.difference(&o).cloned().collect(),
        )
    }

    #[test]
    fn differences_are_the_records_that_came_and_went() {
        use super::super::Rotation;
        let a = |ttl: u32, last: &[u8]| {
            let records = last.iter().map(|&l| Box::from(&[10, 0, 0, l][..])).collect();
            RRset::new(rtype::A, ttl, Rotation::Cyclic, 0, records)
        };
        let txt = |ttl: u32| {
            RRset::new(
                rtype::MX,
                ttl,
                Rotation::Cyclic,
                0,
                vec![Box::from(&b"\0\x01\x01x"[..])],
            )
        };
        let soa = || {
            RRset::new(
                rtype::SOA,
                60,
                Rotation::Fixed,
                0,
                vec![Box::from(&[1u8; 22][..])],
            )
        };
        let cases = || -> Vec<(Vec<RRset>, Vec<RRset>)> {
            vec![
                (vec![a(5, &[1, 2, 3])], vec![a(5, &[2, 3, 4])]),
                (vec![a(5, &[1, 2, 3])], vec![a(5, &[1, 2, 3])]),
                (vec![a(5, &[1, 2])], vec![a(6, &[1, 2])]),
                (vec![a(5, &[1]), txt(5)], vec![txt(5)]),
                (vec![txt(5)], vec![a(5, &[9]), txt(7)]),
                (vec![], vec![a(5, &[1, 200, 7])]),
                (vec![a(5, &[1, 200, 7]), soa()], vec![soa()]),
                (vec![a(5, &[4, 5])], vec![a(5, &[])]),
            ]
        };
        let all = [&b"\x01a"[..], b""]
            .into_iter()
            .flat_map(|owner| cases().into_iter().map(move |c| (owner, c)));
        for (owner, (old, new)) in all {
            let (old, new) = (Entry::new(old), Entry::new(new));
            let change: Change = (Box::from(owner), Arc::new(old), Arc::new(new));
            let diff = Diff::from_changes(1, 2, std::slice::from_ref(&change));
            let (removed, added) = by_sets(owner, &change.1, &change.2);
            assert_eq!(diff.removed().map(owned).collect::<Vec<_>>(), removed, "{diff:?}");
            assert_eq!(diff.added().map(owned).collect::<Vec<_>>(), added, "{diff:?}");
            assert_eq!(Diff::decode(diff.bytes()).as_ref(), Some(&diff));
        }
    }

    #[test]
    fn journal_is_bounded_and_contiguous() {
        let mut j = Journal::default();
        for s in 1..=5 {
            j = j.push(Arc::new(diff(s, s + 1)), 3, 100, usize::MAX);
        }
        assert_eq!(j.len(), 3);
        assert_eq!(j.since(3).map(<[_]>::len), Some(3));
        assert_eq!(j.since(5).map(<[_]>::len), Some(1));
        assert!(j.since(2).is_none(), "trimmed");
        let heavy = j.push(Arc::new(diff(6, 7)), 3, 6, usize::MAX);
        assert_eq!(
            heavy.since(6).map(<[_]>::len),
            Some(1),
            "only what fits 6 records: 3 each"
        );
        assert!(heavy.since(5).is_some() && heavy.since(4).is_none());
        let size = diff(1, 2).len_bytes();
        let small = j.push(Arc::new(diff(6, 7)), 3, 100, 2 * size);
        assert_eq!(
            (small.len(), small.len_bytes()),
            (2, 2 * size),
            "only what fits the byte bound"
        );
        let j = j.push(Arc::new(diff(10, 11)), 3, 100, usize::MAX);
        assert_eq!(
            (j.len(), j.last_serial()),
            (1, Some(11)),
            "a gap restarts the chain"
        );
        let stored = Journal::from_diffs(vec![diff(1, 2), diff(2, 3), diff(5, 6), diff(6, 7)]);
        assert_eq!(stored.since(5).map(<[_]>::len), Some(2));
        assert!(stored.since(1).is_none());
    }
}
