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

use crate::snapshot::journal::JournalLimits;
use crate::snapshot::{Policy, Projection, SnapshotHandle};
use crate::store::etcd::Leader;
use crate::store::{Cluster, Store, StoreError};
use crate::zone::Zone;
use state::State;
use wake::NodeWakers;
use writer::{Ctx, Job, Queued, Work as Next, Writer};

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
    #[error("cannot commit the start-up serial: {0}")]
    FirstSerial(ControlError),
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
    jobs: mpsc::Sender<Next>,
    snapshots: SnapshotHandle,
    tokens: TokenIndex,
    /// The serial of the latest published snapshot, for whoever must react to it (NOTIFY).
    serials: watch::Receiver<u32>,
    /// Wakes a node's blocking assignment queries when a commit changes its assignments.
    wakers: Arc<NodeWakers>,
    /// Fires when the server shuts down: blocking queries answer at once.
    shutdown: CancellationToken,
    metrics: crate::metrics::Metrics,
    /// On a shared store.
    cluster: Option<Arc<ClusterView>>,
}

/// How this instance sees the cluster on a shared store.
pub struct ClusterView {
    pub id: String,
    pub leader: watch::Receiver<Option<Leader>>,
}

impl ClusterView {
    /// Whether this instance leads.
    pub fn leads(&self) -> bool {
        leads(&self.leader, &self.id)
    }
}

/// Whether the leader `leader` names is instance `id`.
fn leads(leader: &watch::Receiver<Option<Leader>>, id: &str) -> bool {
    leader.borrow().as_ref().is_some_and(|l| l.id == id)
}

/// Hands the writer what the shared store says, in order: followed batches and leadership.
async fn forward_cluster(cluster: Cluster, work: mpsc::Sender<Next>, shutdown: CancellationToken) {
    let Cluster {
        id,
        mut leader,
        followed,
    } = cluster;
    let Some(mut followed) = followed else {
        return;
    };
    let mut was = false;
    if leads(&leader, &id) {
        was = true;
        if work.send(Next::Lead(true)).await.is_err() {
            return;
        }
    }
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return,
            f = followed.recv() => match f {
                Some(f) => Next::Followed(f),
                None => return,
            },
            changed = leader.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = leads(&leader, &id);
                if now == was {
                    continue;
                }
                was = now;
                Next::Lead(now)
            }
        };
        if work.send(next).await.is_err() {
            return;
        }
    }
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
    /// On its own store the start-up serial is above both the stored one and the zone file's,
    /// and is committed before anything is served, so serials never go backwards across
    /// restarts. On a shared store this instance serves the stored serial and follows the
    /// log; it commits only once it leads.
    pub fn start(
        store: Box<dyn Store>,
        publisher: Publisher,
        default_limits: crate::model::Limits,
        metrics: crate::metrics::Metrics,
        shutdown: CancellationToken,
    ) -> Result<(Self, std::thread::JoinHandle<()>), StartError> {
        let loaded = store.load()?;
        let cluster = store.cluster();
        let shared = cluster.is_some();
        let started = std::time::Instant::now();
        let restored = writer::restore(loaded, &publisher, default_limits)?;
        tracing::info!(
            nodes = restored.state.node_count(),
            containers = restored.state.containers().count(),
            serial = restored.serial,
            position = restored.position,
            "state loaded"
        );
        let placeholder = publisher.projection().publish(0).0;
        let snapshots: SnapshotHandle = Arc::new(arc_swap::ArcSwap::from_pointee(placeholder));
        let tokens: TokenIndex = Arc::new(arc_swap::ArcSwap::from_pointee(HashMap::new()));
        let (serial_tx, serials) = watch::channel(0);
        let wakers = Arc::new(NodeWakers::default());
        let mut writer = Writer {
            serials: serial_tx,
            wakers: wakers.clone(),
            store,
            state: State::default(),
            serial: 0,
            position: 0,
            fingerprint: None,
            own_fingerprint: publisher.projection().fingerprint(),
            leading: false,
            shared,
            wants_lead: false,
            last_load: None,
            projection: publisher.projection(),
            publisher,
            snapshots: snapshots.clone(),
            tokens: tokens.clone(),
            rebuild: false,
            stale: false,
            metrics: metrics.clone(),
        };
        writer.install(restored, shared);
        if !shared {
            writer.take_lead().map_err(StartError::FirstSerial)?;
        }
        let first = snapshots.load();
        tracing::info!(
            names = first.len(),
            serial = first.serial,
            journal = first.journal.len(),
            build_ms = started.elapsed().as_millis() as u64,
            "zone built"
        );
        drop(first);
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let view = cluster.map(|c| {
            let view = Arc::new(ClusterView {
                id: c.id.clone(),
                leader: c.leader.clone(),
            });
            tokio::spawn(forward_cluster(c, tx.clone(), shutdown.clone()));
            view
        });
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
                cluster: view,
            },
            thread,
        ))
    }

    /// On a shared store: this instance's id and the current leader.
    pub fn cluster(&self) -> Option<&ClusterView> {
        self.cluster.as_deref()
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
        let queued = Next::Job(Queued {
            at: std::time::Instant::now(),
            job,
        });
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
