//! The IXFR journal: what each published serial added to and removed from the zone.
//!
//! A [`Diff`] is computed from the names a publication changed (their entries before and
//! after), so it costs in proportion to the change. The [`Journal`] is an immutable, bounded,
//! contiguous chain of diffs carried by every snapshot, so an IXFR (RFC 1995) is answered from
//! the same snapshot it started on. The writer also stores each diff in redb, so the chain
//! survives a restart.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::Entry;
use super::names::Change;
use crate::zone::rtype;

/// One record, owner relative to the apex.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Record {
    pub owner: Box<[u8]>,
    pub rtype: u16,
    pub ttl: u32,
    pub rdata: Box<[u8]>,
}

/// The difference between the zone at serial `from` and at serial `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    pub from: u32,
    pub to: u32,
    pub removed: Vec<Record>,
    pub added: Vec<Record>,
}

fn records(owner: &[u8], entry: &Entry) -> BTreeSet<Record> {
    entry
        .rrsets
        .iter()
        // The apex SOA frames every IXFR step; it is not part of a difference.
        .filter(|set| !(owner.is_empty() && set.rtype == rtype::SOA))
        .flat_map(|set| {
            set.records.iter().map(move |rdata| Record {
                owner: owner.into(),
                rtype: set.rtype,
                ttl: set.ttl,
                rdata: rdata.clone(),
            })
        })
        .collect()
}

impl Diff {
    /// The difference made by `changes` (names with their entries before and after).
    pub fn from_changes(from: u32, to: u32, changes: &[Change]) -> Self {
        let mut diff = Diff {
            from,
            to,
            removed: Vec::new(),
            added: Vec::new(),
        };
        for (owner, old, new) in changes {
            let (old, new) = (records(owner, old), records(owner, new));
            diff.removed.extend(old.difference(&new).cloned());
            diff.added.extend(new.difference(&old).cloned());
        }
        diff
    }

    /// Records removed plus records added.
    pub fn records(&self) -> usize {
        self.removed.len() + self.added.len()
    }

    /// Compact binary form for the store: from, to, then each section as a count and records
    /// (owner length, owner, type, TTL, RDATA length, RDATA), all big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.from.to_be_bytes());
        out.extend_from_slice(&self.to.to_be_bytes());
        for section in [&self.removed, &self.added] {
            out.extend_from_slice(&(section.len() as u32).to_be_bytes());
            for r in section {
                out.push(r.owner.len() as u8);
                out.extend_from_slice(&r.owner);
                out.extend_from_slice(&r.rtype.to_be_bytes());
                out.extend_from_slice(&r.ttl.to_be_bytes());
                out.extend_from_slice(&(r.rdata.len() as u16).to_be_bytes());
                out.extend_from_slice(&r.rdata);
            }
        }
        out
    }

    /// Reads [`Diff::encode`]'s form; `None` if the bytes are not a diff.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader { bytes, pos: 0 };
        let from = r.u32()?;
        let to = r.u32()?;
        let mut sections = [Vec::new(), Vec::new()];
        for section in &mut sections {
            let count = r.u32()? as usize;
            for _ in 0..count {
                let owner_len = r.take(1)?[0] as usize;
                let owner = r.take(owner_len)?.into();
                let rtype = r.u16()?;
                let ttl = r.u32()?;
                let rdlen = r.u16()? as usize;
                let rdata = r.take(rdlen)?.into();
                section.push(Record {
                    owner,
                    rtype,
                    ttl,
                    rdata,
                });
            }
        }
        let [removed, added] = sections;
        (r.pos == bytes.len()).then_some(Diff {
            from,
            to,
            removed,
            added,
        })
    }
}

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
    /// one, at most `max_records` records: once the differences outweigh the zone, a whole
    /// transfer is the cheaper answer, and memory stays in proportion to the zone.
    pub fn push(&self, diff: Arc<Diff>, limit: usize, max_records: usize) -> Self {
        if limit == 0 {
            return Self::default();
        }
        let contiguous = self.diffs.last().is_none_or(|last| last.to == diff.from);
        let keep = if contiguous { &self.diffs[..] } else { &[] };
        let mut skip = (keep.len() + 1).saturating_sub(limit);
        let mut records: usize = diff.records() + keep[skip..].iter().map(|d| d.records()).sum::<usize>();
        while skip < keep.len() && records > max_records {
            records -= keep[skip].records();
            skip += 1;
        }
        let diffs: Vec<Arc<Diff>> = keep[skip..].iter().cloned().chain([diff]).collect();
        Self { diffs: diffs.into() }
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
        Diff {
            from,
            to,
            removed: vec![rec("a", 1)],
            added: vec![rec("a", 2), rec("b", 3)],
        }
    }

    #[test]
    fn diffs_round_trip_through_bytes() {
        let d = diff(7, 8);
        assert_eq!(Diff::decode(&d.encode()), Some(d.clone()));
        let bytes = d.encode();
        assert_eq!(Diff::decode(&bytes[..bytes.len() - 1]), None);
    }

    #[test]
    fn journal_is_bounded_and_contiguous() {
        let mut j = Journal::default();
        for s in 1..=5 {
            j = j.push(Arc::new(diff(s, s + 1)), 3, 100);
        }
        assert_eq!(j.len(), 3);
        assert_eq!(j.since(3).map(<[_]>::len), Some(3));
        assert_eq!(j.since(5).map(<[_]>::len), Some(1));
        assert!(j.since(2).is_none(), "trimmed");
        let heavy = j.push(Arc::new(diff(6, 7)), 3, 6);
        assert_eq!(
            heavy.since(6).map(<[_]>::len),
            Some(1),
            "only what fits 6 records: 3 each"
        );
        assert!(heavy.since(5).is_some() && heavy.since(4).is_none());
        let j = j.push(Arc::new(diff(10, 11)), 3, 100);
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
