//! The control plane's single writer: the only code that changes state.
//!
//! ```text
//!  API handler --job--> [channel] --> writer thread
//!                                       | run every queued job against State (validate, mutate,
//!                                       |   record store Ops)            <- group commit
//!                                       | Store::commit(ops, serial+1)   (one fsync for all)
//!                                       | Projection: recompute the names the batch touched
//!                                       | publish -> SnapshotHandle::store
//!  API handler <--(result, serial)------+ answer every job of the batch
//! ```
//!
//! A job is answered only after its changes are durable *and* visible in DNS, so the serial in
//! the response is one that already answers with the change. Reads run through the same
//! queue, so they always see a consistent state.

pub mod stacks;
pub mod state;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use crate::snapshot::journal::Journal;
use crate::snapshot::platform::Member;
use crate::snapshot::{Policy, Projection, SnapshotHandle};
use crate::store::{JournalWrite, Op, Store, StoreError};
use crate::zone::Zone;
use state::{Changes, Principal, State};

/// Most jobs folded into one commit; bounds the latency of the first one.
const MAX_BATCH: usize = 4096;
/// Requests waiting for the writer before senders have to wait too.
const QUEUE_DEPTH: usize = 65536;

/// Why a control-plane operation was not carried out; the API maps each to a status code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    #[error("{what} {name:?} does not exist")]
    NotFound { what: &'static str, name: String },
    #[error(
        "stale report for container {container}: generation {reported} is not newer than the \
         stored generation {stored} ({detail}); nothing was changed"
    )]
    StaleGeneration {
        container: String,
        stored: u64,
        reported: u64,
        detail: String,
    },
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("the bearer token is not known; send the admin token or the node's own token")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("the change could not be stored, so it was not applied: {0}")]
    Storage(String),
    #[error("the server is shutting down")]
    Stopped,
    /// Placement cannot satisfy the request; nothing was changed.
    #[error("{message}")]
    Unplaceable { code: &'static str, message: String },
}

impl From<crate::placement::PlacementError> for ControlError {
    fn from(e: crate::placement::PlacementError) -> Self {
        ControlError::Unplaceable {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// Everything a job may touch.
pub struct Ctx<'a> {
    pub state: &'a mut State,
    pub changes: &'a mut Changes,
    /// When the batch started; one clock reading for every job in it.
    pub now: Instant,
}

type Completion = Box<dyn FnOnce(Result<u32, ControlError>) + Send>;
type Job = Box<dyn FnOnce(&mut Ctx<'_>) -> Completion + Send>;

/// A result together with the zone serial that contains it.
#[derive(Debug)]
pub struct Committed<T> {
    pub value: T,
    pub serial: u32,
}

/// Node token hashes (SHA-256 hex) and the node each belongs to, republished by the writer
/// whenever a node or its token changes.
pub type TokenIndex = Arc<arc_swap::ArcSwap<HashMap<String, Principal>>>;

/// Handle to the writer; cheap to clone.
#[derive(Clone)]
pub struct Control {
    jobs: mpsc::Sender<Job>,
    snapshots: SnapshotHandle,
    tokens: TokenIndex,
    /// The serial of the latest published snapshot, for whoever must react to it (NOTIFY).
    serials: watch::Receiver<u32>,
    /// The assignment index after the latest commit.
    assignments: watch::Receiver<u64>,
}

/// Fixed inputs of every snapshot.
pub struct Publisher {
    pub zone: Zone,
    pub policy: Policy,
    /// Differences kept for IXFR (0: none).
    pub journal_limit: usize,
}

impl Publisher {
    fn projection(&self) -> Projection {
        Projection::new(self.zone.clone(), self.policy, self.journal_limit)
    }
}

impl Control {
    /// Opens the store, loads it, publishes the first snapshot and starts the writer thread.
    ///
    /// The start-up serial is above both the stored one and the zone file's, and is committed
    /// before anything is served, so serials never go backwards across restarts.
    pub fn start(
        db_path: &Path,
        publisher: Publisher,
    ) -> Result<(Self, std::thread::JoinHandle<()>), StoreError> {
        let store = Store::open(db_path)?;
        let mut loaded = store.load()?;
        let stored_serial = loaded.serial;
        let stored_fingerprint = loaded.fingerprint;
        let journal = Journal::from_diffs(std::mem::take(&mut loaded.journal));
        let stacks = stacks::Stacks::from_loaded(&mut loaded)?;
        let now = Instant::now();
        let mut state = State::from_loaded(loaded, now);
        state.stacks = stacks;
        // Every node starts at the current index: an agent holding an older one hears at once.
        let index = state.stacks.index;
        let names: Vec<_> = state.nodes.keys().cloned().collect();
        state
            .stacks
            .node_index
            .extend(names.into_iter().map(|n| (n, index)));
        tracing::info!(
            nodes = state.nodes.len(),
            containers = state.containers.len(),
            serial = stored_serial,
            "state loaded"
        );

        // Rebuild the zone as it was last published (lost nodes stay lost). With the same zone
        // file and policy it is exactly the zone of the stored serial, so the journal continues
        // from it; the start-up serial's difference is then empty.
        let started = Instant::now();
        let mut projection = publisher.projection();
        project(&mut projection, &state, &state.everything());
        let fingerprint = projection.fingerprint();
        let same_zone = stored_fingerprint == Some(fingerprint);
        if same_zone {
            projection.publish(stored_serial);
            if journal.last_serial().is_none_or(|s| s == stored_serial) {
                projection.resume_journal(journal);
            }
        }
        state.restart_leases(now);
        let serial = stored_serial.wrapping_add(1).max(publisher.zone.soa.file_serial);
        // Without the same zone file and policy, this is the first publication of a new chain.
        let (first, diff) = projection.publish(serial);
        let journal_write = match &diff {
            Some(diff) => JournalWrite::Append {
                diff,
                keep_from: projection.journal().oldest_serial().unwrap_or(diff.to),
            },
            None => JournalWrite::Reset { fingerprint },
        };
        store.commit(&[], serial, journal_write)?;
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
        let (assignments_tx, assignments) = watch::channel(state.stacks.index);
        let writer = Writer {
            serials: serial_tx,
            assignments: assignments_tx,
            store,
            state,
            serial,
            publisher,
            projection,
            snapshots: snapshots.clone(),
            tokens: tokens.clone(),
            rebuild: false,
            stale: false,
        };
        let thread = std::thread::Builder::new()
            .name("control-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Redb(format!("cannot start the writer thread: {e}")))?;
        Ok((
            Control {
                jobs: tx,
                snapshots,
                tokens,
                serials,
                assignments,
            },
            thread,
        ))
    }

    /// Whom `token_sha256` belongs to, as of the last commit.
    pub fn principal_of(&self, token_sha256: &str) -> Option<Principal> {
        self.tokens.load().get(token_sha256).cloned()
    }

    /// Follows the assignment index (see `stacks`), for blocking assignment queries.
    pub fn assignment_index(&self) -> watch::Receiver<u64> {
        self.assignments.clone()
    }

    /// Follows the published serial.
    pub fn serials(&self) -> watch::Receiver<u32> {
        self.serials.clone()
    }

    /// The handle DNS reads snapshots from.
    pub fn snapshots(&self) -> SnapshotHandle {
        self.snapshots.clone()
    }

    /// Runs `f` on the writer; answers once its changes are committed and published.
    pub async fn run<T: Send + 'static>(
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
        self.jobs.send(job).await.map_err(|_| ControlError::Stopped)?;
        rx.await.map_err(|_| {
            // The job was dropped unanswered: the writer stopped, or the job panicked.
            if self.jobs.is_closed() {
                ControlError::Stopped
            } else {
                ControlError::Storage("internal error; nothing was changed".to_owned())
            }
        })?
    }

    /// Marks nodes lost whose lease lapsed; run periodically.
    pub async fn expire_leases(&self, ttl: Duration) -> Result<(), ControlError> {
        self.run(move |ctx| {
            ctx.state.expire_leases(ctx.now, ttl, ctx.changes);
            Ok(())
        })
        .await
        .map(|_| ())
    }
}

/// Recomputes the DNS names of everything `changes` touched: each node's own name, every
/// container on a touched node, and every service of a touched container.
fn project(projection: &mut Projection, state: &State, changes: &Changes) {
    let mut containers = changes.containers.clone();
    let mut services = changes.services.clone();
    for node in &changes.nodes {
        projection.node(node, state.nodes.get(node).map(|n| n.node.address));
        containers.extend(state.containers_of_node(node).cloned());
    }
    for key in &containers {
        let c = state.containers.get(key);
        if let Some(c) = c {
            services.insert(c.service_key());
        }
        projection.container(key, c.is_some(), c.and_then(|c| state.live_address(c)));
    }
    let mut members = Vec::new();
    for service in &services {
        members.clear();
        members.extend(state.containers_of_service(service).map(|c| Member {
            key: &c.key,
            address: state.live_address(c),
            ports: &c.ports,
        }));
        let declared = state.declared_ports(service);
        projection.service(service, &members, declared.as_deref());
    }
}

/// The thread that owns the store and the state.
struct Writer {
    store: Store,
    state: State,
    serial: u32,
    publisher: Publisher,
    projection: Projection,
    snapshots: SnapshotHandle,
    tokens: TokenIndex,
    serials: watch::Sender<u32>,
    assignments: watch::Sender<u64>,
    /// A commit failed and the state was reloaded: the next commit rebuilds DNS from scratch
    /// (lease changes of the failed batch are kept in memory and must still be published).
    rebuild: bool,
    /// The state could not be reloaded after a failed commit, so it may hold changes the
    /// database does not: every write is refused until a reload succeeds.
    stale: bool,
}

impl Writer {
    fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(first) = jobs.blocking_recv() {
            let mut changes = Changes::default();
            let mut completions = Vec::new();
            let mut panicked = false;
            {
                let mut ctx = Ctx {
                    state: &mut self.state,
                    changes: &mut changes,
                    now: Instant::now(),
                };
                let mut next = Some(first);
                while let Some(job) = next.take() {
                    // A bug in one job must not take the writer down: the batch is dropped
                    // and the state reloaded from the store below.
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut ctx))) {
                        Ok(complete) => completions.push(complete),
                        Err(_) => panicked = true,
                    }
                    if completions.len() < MAX_BATCH {
                        next = jobs.try_recv().ok();
                    }
                }
            }
            if panicked {
                tracing::error!(
                    "a request panicked in the writer; its batch is dropped and the state reloaded"
                );
                self.reload();
                self.rebuild = true;
                let failed = Err(ControlError::Storage(
                    "internal error; nothing was changed".to_owned(),
                ));
                for complete in completions {
                    complete(failed.clone());
                }
                continue;
            }
            // Nodes came, went, were lost or came back: placement follows in the same commit.
            if !changes.nodes.is_empty() {
                self.state.reconcile(&mut changes);
            }
            let result = self.commit(changes);
            for complete in completions {
                complete(result.clone());
            }
        }
        tracing::debug!("control writer stopped");
    }

    /// Makes a batch durable and visible; on failure, returns to what is on disk.
    fn commit(&mut self, mut changes: Changes) -> Result<u32, ControlError> {
        if changes.is_empty() && !self.rebuild {
            return Ok(self.serial);
        }
        if self.stale {
            // This batch ran on a state that may hold a failed batch's changes: drop it, and
            // try again to read what the database really holds.
            self.reload();
            self.rebuild = true;
            return Err(ControlError::Storage(
                "the database could not be read back after a failed commit; nothing was changed".to_owned(),
            ));
        }
        let serial = self.serial.wrapping_add(1);
        let started = Instant::now();
        let nodes_changed = changes
            .ops
            .iter()
            .any(|op| matches!(op, Op::PutNode(_) | Op::DeleteNode(_)));
        // Build the next snapshot first: its difference is stored with the change.
        let mut reset = None;
        if self.rebuild {
            // A failed batch may have changed leases in memory only: store them all, so the
            // next start rebuilds exactly the zone published now.
            let leases = self
                .state
                .nodes
                .values()
                .map(|n| Op::SetLost(n.node.name.clone(), !n.live));
            changes.ops.extend(leases);
            self.projection = self.publisher.projection();
            project(&mut self.projection, &self.state, &self.state.everything());
            reset = Some(self.projection.fingerprint());
        } else {
            project(&mut self.projection, &self.state, &changes);
        }
        let (snapshot, diff) = self.projection.publish(serial);
        let journal_write = match (reset, &diff) {
            (Some(fingerprint), _) => JournalWrite::Reset { fingerprint },
            (None, Some(diff)) => JournalWrite::Append {
                diff,
                keep_from: self.projection.journal().oldest_serial().unwrap_or(diff.to),
            },
            (None, None) => JournalWrite::Keep,
        };
        if let Err(e) = self.store.commit(&changes.ops, serial, journal_write) {
            tracing::error!(error = %e, "commit failed; reloading state from the database");
            self.reload();
            self.rebuild = true;
            return Err(ControlError::Storage(e.to_string()));
        }
        self.serial = serial;
        if nodes_changed || changes.tokens_changed || self.rebuild {
            self.tokens.store(Arc::new(self.state.token_index()));
        }
        self.rebuild = false;
        self.snapshots.store(Arc::new(snapshot));
        self.serials.send_replace(serial);
        let index = self.state.stacks.index;
        self.assignments
            .send_if_modified(|current| std::mem::replace(current, index) != index);
        tracing::debug!(
            serial,
            ops = changes.ops.len(),
            publish_us = started.elapsed().as_micros() as u64,
            "published"
        );
        Ok(serial)
    }

    /// Replaces the in-memory state with the database's, keeping leases.
    fn reload(&mut self) {
        match self.store.load() {
            Ok(mut loaded) => {
                let stacks = match stacks::Stacks::from_loaded(&mut loaded) {
                    Ok(stacks) => stacks,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot reload stacks");
                        return;
                    }
                };
                let leases: Vec<_> = self
                    .state
                    .nodes
                    .iter()
                    .map(|(k, n)| (k.clone(), n.last_seen, n.live))
                    .collect();
                self.state = State::from_loaded(loaded, Instant::now());
                self.state.stacks = stacks;
                for (name, last_seen, live) in leases {
                    if let Some(n) = self.state.nodes.get_mut(&name) {
                        n.last_seen = last_seen;
                        n.live = live;
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot reload state; writes are refused until it can be read");
                self.stale = true;
                return;
            }
        }
        self.stale = false;
    }
}
