//! The control plane: every operation on the platform's state, and the single writer that
//! carries them out.
//!
//! ```text
//!  API handler --Control::put_container(caller, ..)--> job --> [channel] --> writer thread
//!                                                        | run every queued job against State:
//!                                                        |   authorize, validate, mutate,
//!                                                        |   record store Ops       <- group commit
//!                                                        | Projection: recompute the touched names,
//!                                                        |   build the next snapshot and its diff
//!                                                        | Store::commit(batch)   (one fsync for all)
//!                                                        | publish -> SnapshotHandle::store
//!  API handler <--Committed{value, serial}---------------+ answer every job of the batch
//! ```
//!
//! The one promise: an operation is answered only after its changes are durable *and* visible
//! in DNS, so the serial in the response is one that already answers with the change. Reads
//! run through the same queue, so they always see a consistent state.
//!
//! Each operation is a method of [`Control`] (see `ops.rs`), taking the caller's identity and
//! deciding authorization itself, on the writer, against the state it acts on.
//!
//! | file          | owns                                                              |
//! |---------------|-------------------------------------------------------------------|
//! | `ops.rs`      | the named operations: the whole path from handler to commit        |
//! | `writer.rs`   | the writer thread: batches, commits, snapshot publication, reload  |
//! | `state.rs`    | the in-memory state and its rules (nodes, leases, tokens, reports) |
//! | `stacks.rs`   | declared stacks and assignments                                    |
//! | `views.rs`    | the typed results operations answer with                           |
//! | `auth.rs`     | callers and tokens                                                 |
//! | `changes.rs`  | what one batch changed                                             |
//! | `wake.rs`     | waking the blocking assignment queries of the nodes concerned      |

mod auth;
mod changes;
mod error;
mod ops;
mod stacks;
mod state;
mod views;
mod wake;
mod writer;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::snapshot::journal::{Diff, Journal, JournalLimits};
use crate::snapshot::{Policy, Projection, SnapshotHandle};
use crate::store::{Batch, JournalWrite, Store, StoreError};
use crate::zone::Zone;
use state::State;
use wake::NodeWakers;
use writer::{Ctx, Job, Queued, Writer};

pub use crate::model::Applied;
pub use auth::{Caller, Principal, generate_token, hash_token, same_secret};
pub use changes::Effect;
pub use error::ControlError;
pub use ops::SWEEP_BATCH;
pub use ops::StackSubmission;
pub use state::{MAX_GENERATION, NodeSpec, ReplaceSummary, Report, Swept};
pub use views::{
    Endpoint, EndpointFilter, Fleet, NodeAssignments, NodeRegistered, NodeStatus, Placed, PlacedContainer,
    ServiceStatus, StackApplied, StackStatus, Work,
};

/// Requests waiting for the writer before senders have to wait too.
const QUEUE_DEPTH: usize = 65536;

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the stored IXFR journal entry for serial {serial} is not a zone difference")]
    Journal { serial: u32 },
    #[error("cannot start the writer thread: {0}")]
    Thread(std::io::Error),
}

/// A result together with the zone serial that contains it.
#[derive(Debug)]
pub struct Committed<T> {
    pub value: T,
    pub serial: u32,
}

/// Node and user token hashes (SHA-256 hex) and whom each belongs to, republished by the
/// writer whenever a node or a token changes.
pub type TokenIndex = Arc<arc_swap::ArcSwap<HashMap<String, Principal>>>;

/// Handle to the control plane; cheap to clone.
#[derive(Clone)]
pub struct Control {
    jobs: mpsc::Sender<Queued>,
    snapshots: SnapshotHandle,
    tokens: TokenIndex,
    /// The serial of the latest published snapshot, for whoever must react to it (NOTIFY).
    serials: watch::Receiver<u32>,
    /// Wakes a node's blocking assignment queries when a commit changes its assignments.
    wakers: Arc<NodeWakers>,
    /// Fires when the server shuts down: blocking queries answer at once.
    shutdown: CancellationToken,
    metrics: crate::metrics::Metrics,
}

/// Fixed inputs of every snapshot.
pub struct Publisher {
    pub zone: Zone,
    pub policy: Policy,
    /// How much of the zone's history is kept for IXFR.
    pub journal: JournalLimits,
}

impl Publisher {
    fn projection(&self) -> Projection {
        Projection::new(self.zone.clone(), self.policy, self.journal)
    }
}

impl Control {
    /// Loads `store`, publishes the first snapshot and starts the writer thread.
    ///
    /// The start-up serial is above both the stored one and the zone file's, and is committed
    /// before anything is served, so serials never go backwards across restarts.
    pub fn start(
        store: Box<dyn Store>,
        publisher: Publisher,
        default_limits: crate::model::Limits,
        metrics: crate::metrics::Metrics,
        shutdown: CancellationToken,
    ) -> Result<(Self, std::thread::JoinHandle<()>), StartError> {
        let mut loaded = store.load()?;
        let stored_serial = loaded.serial;
        let stored_fingerprint = loaded.fingerprint;
        let diffs = std::mem::take(&mut loaded.journal)
            .into_iter()
            .map(|(serial, bytes)| Diff::decode(&bytes).ok_or(StartError::Journal { serial }))
            .collect::<Result<Vec<_>, _>>()?;
        let journal = Journal::from_diffs(diffs);
        let now = std::time::Instant::now();
        let mut state = State::from_loaded(loaded, now);
        state.default_limits = default_limits;
        tracing::info!(
            nodes = state.node_count(),
            containers = state.containers().count(),
            serial = stored_serial,
            "state loaded"
        );

        // Rebuild the zone as it was last published (lost nodes stay lost). With the same zone
        // file and policy it is exactly the zone of the stored serial, so the journal continues
        // from it; the start-up serial's difference is then empty.
        let started = std::time::Instant::now();
        let mut projection = publisher.projection();
        writer::project_all(&mut projection, &state);
        let fingerprint = projection.fingerprint();
        if stored_fingerprint == Some(fingerprint) {
            projection.publish(stored_serial);
            if journal.last_serial().is_none_or(|s| s == stored_serial) {
                projection.resume_journal(journal);
            }
        }
        state.restart_leases(now);
        let serial = stored_serial.wrapping_add(1).max(publisher.zone.soa.file_serial);
        // Without the same zone file and policy, this is the first publication of a new chain.
        let (first, diff) = projection.publish(serial);
        let journal = match &diff {
            Some(diff) => JournalWrite::Append {
                to: diff.to,
                diff: diff.bytes(),
                keep_from: projection.journal().oldest_serial().unwrap_or(diff.to),
            },
            _ => JournalWrite::Reset { fingerprint },
        };
        store.commit(Batch {
            ops: &[],
            serial,
            journal,
        })?;
        tracing::info!(
            names = first.len(),
            serial,
            journal = first.journal.len(),
            build_ms = started.elapsed().as_millis() as u64,
            "zone built"
        );
        let snapshots: SnapshotHandle = Arc::new(arc_swap::ArcSwap::from_pointee(first));
        let tokens: TokenIndex = Arc::new(arc_swap::ArcSwap::from_pointee(state.token_index()));
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let (serial_tx, serials) = watch::channel(serial);
        let wakers = Arc::new(NodeWakers::default());
        let writer = Writer {
            serials: serial_tx,
            wakers: wakers.clone(),
            store,
            state,
            serial,
            publisher,
            projection,
            snapshots: snapshots.clone(),
            tokens: tokens.clone(),
            rebuild: false,
            stale: false,
            metrics: metrics.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("control-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(StartError::Thread)?;
        Ok((
            Control {
                jobs: tx,
                snapshots,
                tokens,
                serials,
                wakers,
                shutdown,
                metrics,
            },
            thread,
        ))
    }

    /// Whom `token_sha256` belongs to, as of the last commit.
    pub fn principal_of(&self, token_sha256: &str) -> Option<Principal> {
        self.tokens.load().get(token_sha256).cloned()
    }

    /// Follows the published serial.
    pub fn serials(&self) -> watch::Receiver<u32> {
        self.serials.clone()
    }

    /// The handle DNS reads snapshots from.
    pub fn snapshots(&self) -> SnapshotHandle {
        self.snapshots.clone()
    }

    /// Runs `f` on the writer; answers once its changes are committed and published. Only
    /// the operations in `ops.rs` call it.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Ctx<'_>) -> Result<T, ControlError> + Send + 'static,
    ) -> Result<Committed<T>, ControlError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |ctx| {
            let result = f(ctx);
            Box::new(move |commit| {
                let outcome = result.and_then(|value| commit.map(|serial| Committed { value, serial }));
                let _ = tx.send(outcome);
            })
        });
        let queued = Queued {
            at: std::time::Instant::now(),
            job,
        };
        self.jobs.send(queued).await.map_err(|_| ControlError::Stopped)?;
        rx.await.map_err(|_| {
            // The job was dropped unanswered: the writer stopped, or the job panicked.
            if self.jobs.is_closed() {
                ControlError::Stopped
            } else {
                ControlError::Internal
            }
        })?
    }

    /// Where the control plane counts what it does.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }
}
