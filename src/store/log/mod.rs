//! The binary form of a committed batch and of a whole-state image, for stores that keep
//! state as a log of batches (etcd): what the writer committed, byte for byte, so every
//! instance that replays it arrives at the same state and the same zone.
//!
//! ```text
//! entry      = "SDE1" serial:u32 journal op-count:u32 op*
//! image      = "SDI1" serial:u32 fingerprint:(0 | 1 u64) diff-count:u32 (serial:u32 bytes)*
//!              op-count:u32 op*            (the ops that rebuild the state from nothing)
//! journal    = 0 (keep) | 1 to:u32 keep_from:u32 bytes | 2 fingerprint:u64 (reset)
//! op         = tag:u8 fields; labels, strings and bytes are u32-length-prefixed; containers
//!              take the binary form of `codec`, the other records JSON, as in redb
//! ```
//!
//! Integers are little-endian. A reader refuses anything it does not understand, naming it.

use super::{Batch, JournalWrite, Loaded, Op, StackRecord, codec};
use crate::model::{Assignment, ContainerKey, Label, Limits, Node};

const ENTRY_MAGIC: &[u8; 4] = b"SDE1";
const IMAGE_MAGIC: &[u8; 4] = b"SDI1";

/// Why bytes are not an entry or an image.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("not a stackdns log record (magic {0:?}); was it written by a newer stackdns?")]
    Magic(Vec<u8>),
    #[error("the record ends early, inside {0}")]
    Short(&'static str),
    #[error("unknown op tag {0}")]
    Tag(u8),
    #[error("unknown journal tag {0}")]
    JournalTag(u8),
    #[error("{what}: {source}")]
    Field {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{0} bytes after the record's end")]
    Trailing(usize),
}

/// The journal write of a decoded entry (owning its bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredJournal {
    Keep,
    Append { to: u32, diff: Vec<u8>, keep_from: u32 },
    Reset { fingerprint: u64 },
}

impl StoredJournal {
    pub fn as_write(&self) -> JournalWrite<'_> {
        match self {
            StoredJournal::Keep => JournalWrite::Keep,
            StoredJournal::Append { to, diff, keep_from } => JournalWrite::Append {
                to: *to,
                diff,
                keep_from: *keep_from,
            },
            StoredJournal::Reset { fingerprint } => JournalWrite::Reset {
                fingerprint: *fingerprint,
            },
        }
    }
}

/// A committed batch as read back.
#[derive(Debug, Clone)]
pub struct Entry {
    pub serial: u32,
    pub journal: StoredJournal,
    pub ops: Vec<Op>,
}

/// Encodes a batch (its `after` position is the store's business, not the entry's).
pub fn encode_entry(batch: &Batch<'_>) -> Result<Vec<u8>, LogError> {
    let mut out = Vec::with_capacity(64 + batch.ops.len() * 96);
    out.extend_from_slice(ENTRY_MAGIC);
    put_u32(&mut out, batch.serial);
    match batch.journal {
        JournalWrite::Keep => out.push(0),
        JournalWrite::Append { to, diff, keep_from } => {
            out.push(1);
            put_u32(&mut out, to);
            put_u32(&mut out, keep_from);
            put_bytes(&mut out, diff);
        }
        JournalWrite::Reset { fingerprint } => {
            out.push(2);
            out.extend_from_slice(&fingerprint.to_le_bytes());
        }
    }
    put_ops(&mut out, batch.ops)?;
    Ok(out)
}

pub fn decode_entry(bytes: &[u8]) -> Result<Entry, LogError> {
    let mut r = Reader::new(bytes);
    r.magic(ENTRY_MAGIC)?;
    let serial = r.u32("serial")?;
    let journal = match r.u8("journal")? {
        0 => StoredJournal::Keep,
        1 => {
            let to = r.u32("journal")?;
            let keep_from = r.u32("journal")?;
            let diff = r.bytes("journal")?.to_vec();
            StoredJournal::Append { to, diff, keep_from }
        }
        2 => StoredJournal::Reset {
            fingerprint: r.u64("journal")?,
        },
        t => return Err(LogError::JournalTag(t)),
    };
    let ops = r.ops()?;
    r.end()?;
    Ok(Entry { serial, journal, ops })
}

/// Encodes everything in `loaded` as an image: the ops that rebuild it, with its serial and
/// journal.
pub fn encode_image(loaded: &Loaded) -> Result<Vec<u8>, LogError> {
    let ops = image_ops(loaded);
    let mut out = Vec::with_capacity(64 + ops.len() * 96);
    out.extend_from_slice(IMAGE_MAGIC);
    put_u32(&mut out, loaded.serial);
    match loaded.fingerprint {
        None => out.push(0),
        Some(f) => {
            out.push(1);
            out.extend_from_slice(&f.to_le_bytes());
        }
    }
    put_len(&mut out, loaded.journal.len());
    for (serial, diff) in &loaded.journal {
        put_u32(&mut out, *serial);
        put_bytes(&mut out, diff);
    }
    put_ops(&mut out, &ops)?;
    Ok(out)
}

/// Reads an image back into what a store's `load` answers.
pub fn decode_image(bytes: &[u8]) -> Result<Loaded, LogError> {
    let mut r = Reader::new(bytes);
    r.magic(IMAGE_MAGIC)?;
    let serial = r.u32("serial")?;
    let fingerprint = match r.u8("fingerprint")? {
        0 => None,
        _ => Some(r.u64("fingerprint")?),
    };
    let diffs = r.u32("journal")? as usize;
    let mut journal = Vec::with_capacity(diffs.min(1 << 16));
    for _ in 0..diffs {
        let serial = r.u32("journal")?;
        journal.push((serial, r.bytes("journal")?.to_vec()));
    }
    let ops = r.ops()?;
    r.end()?;
    let mut image = super::image::Image::default();
    image.serial = serial;
    image.fingerprint = fingerprint;
    image.journal = journal.into_iter().collect();
    for op in ops {
        image.apply_op(op);
    }
    Ok(image.into_loaded())
}

/// The ops that rebuild `loaded` from an empty state, in an order any store can apply.
pub fn image_ops(loaded: &Loaded) -> Vec<Op> {
    let mut ops = Vec::with_capacity(
        loaded.nodes.len() + loaded.containers.len() + loaded.assignments.len() + loaded.stacks.len() + 16,
    );
    ops.extend(loaded.nodes.iter().cloned().map(Op::PutNode));
    ops.extend(loaded.lost.iter().map(|n| Op::SetLost(n.clone(), true)));
    ops.extend((loaded.user_tokens.iter()).map(|(hash, user)| Op::PutUserToken(hash.clone(), user.clone())));
    ops.extend((loaded.user_limits.iter()).map(|(user, limits)| Op::PutUserLimits(user.clone(), *limits)));
    ops.extend(loaded.stacks.iter().cloned().map(|s| Op::PutStack(Box::new(s))));
    ops.extend(loaded.assignments.iter().cloned().map(Op::PutAssignment));
    ops.push(Op::AssignmentIndex(loaded.assignment_index));
    ops.extend(loaded.containers.iter().cloned().map(Op::PutContainer));
    ops.extend(loaded.floors.iter().map(|(n, f)| Op::PutFloor(n.clone(), *f)));
    ops
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    put_u32(out, u32::try_from(len).unwrap_or(u32::MAX));
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

fn put_label(out: &mut Vec<u8>, label: &Label) {
    put_bytes(out, label.as_str().as_bytes());
}

fn put_key(out: &mut Vec<u8>, key: &ContainerKey) {
    put_label(out, &key.user);
    put_label(out, &key.stack);
    put_label(out, &key.name);
}

fn put_json<T: serde::Serialize>(out: &mut Vec<u8>, what: &'static str, value: &T) -> Result<(), LogError> {
    let json = serde_json::to_vec(value).map_err(|e| LogError::Field {
        what,
        source: e.into(),
    })?;
    put_bytes(out, &json);
    Ok(())
}

fn put_ops(out: &mut Vec<u8>, ops: &[Op]) -> Result<(), LogError> {
    put_len(out, ops.len());
    let mut record = Vec::with_capacity(128);
    for op in ops {
        match op {
            Op::PutNode(node) => {
                out.push(1);
                put_json(out, "node", node)?;
            }
            Op::DeleteNode(name) => {
                out.push(2);
                put_label(out, name);
            }
            Op::PutContainer(c) => {
                out.push(3);
                record.clear();
                codec::encode_container(c, &mut record).map_err(|e| LogError::Field {
                    what: "container",
                    source: e.into(),
                })?;
                put_bytes(out, &record);
            }
            Op::DeleteContainer(key) => {
                out.push(4);
                put_key(out, key);
            }
            Op::SetLost(node, lost) => {
                out.push(5);
                put_label(out, node);
                out.push(u8::from(*lost));
            }
            Op::PutUserToken(hash, user) => {
                out.push(6);
                put_bytes(out, hash.as_bytes());
                put_label(out, user);
            }
            Op::DeleteUserTokens(user) => {
                out.push(7);
                put_label(out, user);
            }
            Op::PutStack(stack) => {
                out.push(8);
                put_json(out, "stack", stack)?;
            }
            Op::DeleteStack(user, stack) => {
                out.push(9);
                put_label(out, user);
                put_label(out, stack);
            }
            Op::PutUserLimits(user, limits) => {
                out.push(10);
                put_label(out, user);
                put_json(out, "user limits", limits)?;
            }
            Op::PutAssignment(a) => {
                out.push(11);
                put_json(out, "assignment", a)?;
            }
            Op::DeleteAssignment(key) => {
                out.push(12);
                put_key(out, key);
            }
            Op::AssignmentIndex(index) => {
                out.push(13);
                out.extend_from_slice(&index.to_le_bytes());
            }
            Op::PutFloor(node, floor) => {
                out.push(14);
                put_label(out, node);
                out.extend_from_slice(&floor.to_le_bytes());
            }
        }
    }
    Ok(())
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], LogError> {
        if self.rest.len() < n {
            return Err(LogError::Short(what));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn magic(&mut self, magic: &[u8; 4]) -> Result<(), LogError> {
        let found = self.take(4, "magic")?;
        if found != magic {
            return Err(LogError::Magic(found.to_vec()));
        }
        Ok(())
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, LogError> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, LogError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, LogError> {
        let b = self.take(8, what)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], LogError> {
        let len = self.u32(what)? as usize;
        self.take(len, what)
    }

    fn text(&mut self, what: &'static str) -> Result<&'a str, LogError> {
        std::str::from_utf8(self.bytes(what)?).map_err(|e| LogError::Field {
            what,
            source: e.into(),
        })
    }

    fn label(&mut self, what: &'static str) -> Result<Label, LogError> {
        Label::parse(what, self.text(what)?).map_err(|e| LogError::Field {
            what,
            source: e.into(),
        })
    }

    fn key(&mut self) -> Result<ContainerKey, LogError> {
        Ok(ContainerKey {
            user: self.label("user")?,
            stack: self.label("stack")?,
            name: self.label("container")?,
        })
    }

    fn json<T: serde::de::DeserializeOwned>(&mut self, what: &'static str) -> Result<T, LogError> {
        serde_json::from_slice(self.bytes(what)?).map_err(|e| LogError::Field {
            what,
            source: e.into(),
        })
    }

    fn ops(&mut self) -> Result<Vec<Op>, LogError> {
        let count = self.u32("op count")? as usize;
        // Bounded by what the bytes could hold: a damaged count must not allocate wildly.
        let mut ops = Vec::with_capacity(count.min(self.rest.len()));
        for _ in 0..count {
            ops.push(self.op()?);
        }
        Ok(ops)
    }

    fn op(&mut self) -> Result<Op, LogError> {
        Ok(match self.u8("op")? {
            1 => Op::PutNode(self.json::<Node>("node")?),
            2 => Op::DeleteNode(self.label("node")?),
            3 => Op::PutContainer(codec::decode_container(self.bytes("container")?).map_err(|e| {
                LogError::Field {
                    what: "container",
                    source: e.into(),
                }
            })?),
            4 => Op::DeleteContainer(self.key()?),
            5 => Op::SetLost(self.label("node")?, self.u8("lost")? != 0),
            6 => Op::PutUserToken(self.text("token hash")?.to_owned(), self.label("user")?),
            7 => Op::DeleteUserTokens(self.label("user")?),
            8 => Op::PutStack(Box::new(self.json::<StackRecord>("stack")?)),
            9 => Op::DeleteStack(self.label("user")?, self.label("stack")?),
            10 => Op::PutUserLimits(self.label("user")?, self.json::<Limits>("user limits")?),
            11 => Op::PutAssignment(self.json::<Assignment>("assignment")?),
            12 => Op::DeleteAssignment(self.key()?),
            13 => Op::AssignmentIndex(self.u64("assignment index")?),
            14 => Op::PutFloor(self.label("node")?, self.u64("floor")?),
            t => return Err(LogError::Tag(t)),
        })
    }

    fn end(&self) -> Result<(), LogError> {
        match self.rest.len() {
            0 => Ok(()),
            n => Err(LogError::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests;
