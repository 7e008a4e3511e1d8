//! `stackdns store copy`: everything one store holds, into another that is empty, with the
//! serial and the IXFR journal, so the zone continues where it was (redb → etcd and back).

use std::time::{Duration, Instant};

use super::{Batch, JournalWrite, Loaded, Store, StoreError, log};

/// Why a copy did not happen; the destination is unchanged unless the copy's own commit failed
/// half-way through the journal (then copying again after emptying it is safe).
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("reading the source: {0}")]
    Source(#[source] StoreError),
    #[error("the destination: {0}")]
    Destination(#[source] StoreError),
    #[error(
        "the destination already holds state (serial {serial}, {containers} containers, {nodes} nodes); copy only into an empty store"
    )]
    NotEmpty {
        serial: u32,
        containers: usize,
        nodes: usize,
    },
    #[error(
        "another stackdns instance leads the destination's etcd prefix ({api}); stop every server using it before copying"
    )]
    InUse { api: String },
}

/// What was copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    pub serial: u32,
    pub nodes: usize,
    pub containers: usize,
    pub stacks: usize,
    pub journal: usize,
}

/// Copies `from` into `to`, which must be empty.
pub fn copy(from: &dyn Store, to: &dyn Store) -> Result<Copied, CopyError> {
    let loaded = from.load().map_err(CopyError::Source)?;
    let existing = to.load().map_err(CopyError::Destination)?;
    if existing.serial != 0
        || !existing.nodes.is_empty()
        || !existing.containers.is_empty()
        || !existing.stacks.is_empty()
    {
        return Err(CopyError::NotEmpty {
            serial: existing.serial,
            containers: existing.containers.len(),
            nodes: existing.nodes.len(),
        });
    }
    lead(to)?;
    let copied = Copied {
        serial: loaded.serial,
        nodes: loaded.nodes.len(),
        containers: loaded.containers.len(),
        stacks: loaded.stacks.len(),
        journal: loaded.journal.len(),
    };
    write(to, &loaded, existing.position).map_err(CopyError::Destination)?;
    Ok(copied)
}

/// For a shared store: waits until this process leads it (no server uses it).
fn lead(to: &dyn Store) -> Result<(), CopyError> {
    let Some(cluster) = to.cluster() else {
        return Ok(());
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leader = cluster.leader.borrow().clone();
        match leader {
            Some(l) if l.id == cluster.id => return Ok(()),
            Some(l) if Instant::now() > deadline => return Err(CopyError::InUse { api: l.api }),
            None if Instant::now() > deadline => {
                return Err(CopyError::Destination(StoreError::NotLeader));
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The state in one batch, then each journal difference in one batch of its own.
fn write(to: &dyn Store, loaded: &Loaded, mut position: u64) -> Result<(), StoreError> {
    let ops = log::image_ops(loaded);
    let journal = match loaded.fingerprint {
        Some(fingerprint) => JournalWrite::Reset { fingerprint },
        None => JournalWrite::Keep,
    };
    to.commit(Batch {
        ops: &ops,
        serial: loaded.serial,
        journal,
        after: position,
    })?;
    position += 1;
    let oldest = loaded.journal.first().map_or(0, |(s, _)| *s);
    for (to_serial, diff) in &loaded.journal {
        to.commit(Batch {
            ops: &[],
            serial: loaded.serial,
            journal: JournalWrite::Append {
                to: *to_serial,
                diff,
                keep_from: oldest,
            },
            after: position,
        })?;
        position += 1;
    }
    Ok(())
}
