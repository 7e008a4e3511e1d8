//! The writer thread: the only code that changes state.
//!
//! It owns the state and the store. Each turn takes every queued job (up to [`MAX_BATCH`]),
//! runs them one after another against the state, commits their changes in one durable
//! transaction, publishes one snapshot, and only then answers them all.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use super::changes::Changes;
use super::error::ControlError;
use super::state::State;
use super::wake::NodeWakers;
use super::{Publisher, TokenIndex};
use crate::model::ServiceKey;
use crate::snapshot::platform::Member;
use crate::snapshot::{Projection, SnapshotHandle};
use crate::store::{Batch, JournalWrite, Store};

/// Most jobs folded into one commit; bounds the latency of the first one.
pub const MAX_BATCH: usize = 4096;

/// Everything a job may touch.
pub struct Ctx<'a> {
    pub state: &'a mut State,
    pub changes: &'a mut Changes,
    /// When the batch started; one clock reading for every job in it.
    pub now: Instant,
}

/// Called with the batch's outcome (the serial that publishes it) once it is committed.
pub type Completion = Box<dyn FnOnce(Result<u32, ControlError>) + Send>;
/// Runs on the writer against the state, and says how to answer once the batch is committed.
pub type Job = Box<dyn FnOnce(&mut Ctx<'_>) -> Completion + Send>;

/// A job and when it was queued, for the write→visible latency.
pub struct Queued {
    pub at: Instant,
    pub job: Job,
}

/// The thread that owns the store and the state.
pub struct Writer {
    pub store: Box<dyn Store>,
    pub state: State,
    pub serial: u32,
    pub publisher: Publisher,
    pub projection: Projection,
    pub snapshots: SnapshotHandle,
    pub tokens: TokenIndex,
    pub serials: watch::Sender<u32>,
    pub wakers: Arc<NodeWakers>,
    /// A commit failed and the state was reloaded: the next commit rebuilds DNS from scratch
    /// (lease changes of the failed batch are kept in memory and must still be published).
    pub rebuild: bool,
    /// The state could not be reloaded after a failed commit, so it may hold changes the
    /// database does not: every write is refused until a reload succeeds.
    pub stale: bool,
    pub metrics: crate::metrics::Metrics,
}

impl Writer {
    pub fn run(mut self, mut jobs: mpsc::Receiver<Queued>) {
        // When each write of the batch (a job that recorded a store op) was queued.
        let mut writes = Vec::new();
        while let Some(first) = jobs.blocking_recv() {
            let mut changes = Changes::default();
            let mut completions = Vec::new();
            let mut panicked = false;
            writes.clear();
            {
                let mut ctx = Ctx {
                    state: &mut self.state,
                    changes: &mut changes,
                    now: Instant::now(),
                };
                let mut next = Some(first);
                while let Some(Queued { at, job }) = next.take() {
                    let ops = ctx.changes.ops.len();
                    // A bug in one job must not take the writer down: the batch is dropped
                    // and the state reloaded from the store below.
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut ctx))) {
                        Ok(complete) => completions.push(complete),
                        Err(_) => panicked = true,
                    }
                    if ctx.changes.ops.len() > ops {
                        writes.push(at);
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
                for complete in completions {
                    complete(Err(ControlError::Internal));
                }
                continue;
            }
            // Nodes came, went, were lost or came back: placement follows in the same commit.
            if !changes.nodes.is_empty() {
                self.state.reconcile(&mut changes);
            }
            let result = self.commit(changes, writes.len());
            if result.is_ok() {
                let published = Instant::now();
                for at in &writes {
                    self.metrics
                        .write_visible(published.saturating_duration_since(*at));
                }
            }
            for complete in completions {
                complete(result.clone());
            }
        }
        tracing::debug!("control writer stopped");
    }

    /// Makes a batch durable and visible; on failure, returns to what is on disk.
    /// `writes` counts the batch's jobs that changed something.
    fn commit(&mut self, mut changes: Changes, writes: usize) -> Result<u32, ControlError> {
        if changes.is_empty() && !self.rebuild {
            return Ok(self.serial);
        }
        if self.stale {
            // This batch ran on a state that may hold a failed batch's changes: drop it, and
            // try again to read what the database really holds.
            self.reload();
            self.rebuild = true;
            return Err(ControlError::Unreadable);
        }
        let serial = self.serial.wrapping_add(1);
        let started = Instant::now();
        let nodes_changed = changes.touches_nodes();
        // Build the next snapshot first: its difference is stored with the change.
        let mut reset = None;
        if self.rebuild {
            // A failed batch may have changed leases in memory only: store them all, so the
            // next start rebuilds exactly the zone published now.
            changes.ops.extend(self.state.lease_ops());
            self.projection = self.publisher.projection();
            project_all(&mut self.projection, &self.state);
            reset = Some(self.projection.fingerprint());
        } else {
            project(&mut self.projection, &self.state, &changes);
        }
        let (snapshot, diff) = self.projection.publish(serial);
        let journal = match (reset, &diff) {
            (Some(fingerprint), _) => JournalWrite::Reset { fingerprint },
            (None, Some(diff)) => JournalWrite::Append {
                to: diff.to,
                diff: diff.bytes(),
                keep_from: self.projection.journal().oldest_serial().unwrap_or(diff.to),
            },
            _ => JournalWrite::Keep,
        };
        let batch = Batch {
            ops: &changes.ops,
            serial,
            journal,
        };
        let committing = Instant::now();
        let committed = self.store.commit(batch);
        if let Err(e) = committed {
            self.metrics.commit_failed();
            tracing::error!(error = %e, "commit failed; reloading state from the database");
            self.reload();
            self.rebuild = true;
            return Err(ControlError::Storage(Arc::new(e)));
        }
        self.metrics.committed(writes, committing.elapsed());
        self.serial = serial;
        if nodes_changed || changes.tokens_changed || self.rebuild {
            self.tokens.store(Arc::new(self.state.token_index()));
        }
        self.rebuild = false;
        self.snapshots.store(Arc::new(snapshot));
        self.serials.send_replace(serial);
        self.wakers.wake(&self.state.take_touched_nodes());
        tracing::debug!(
            serial,
            ops = changes.ops.len(),
            publish_us = started.elapsed().as_micros() as u64,
            "published"
        );
        Ok(serial)
    }

    /// Replaces the in-memory state with the database's, keeping leases. Any failure leaves
    /// the writer `stale`: writes are refused until a later reload succeeds.
    fn reload(&mut self) {
        match self.store.load() {
            Ok(loaded) => {
                let leases = self.state.leases();
                let defaults = self.state.default_limits;
                self.state = State::from_loaded(loaded, Instant::now());
                self.state.default_limits = defaults;
                self.state.restore_leases(leases);
                self.stale = false;
                self.wakers.wake_all();
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot reload state; writes are refused until it can be read");
                self.stale = true;
            }
        }
    }
}

/// Recomputes the DNS names of everything `changes` touched: each node's own name, every
/// container on a touched node, and every service of a touched container.
pub fn project(projection: &mut Projection, state: &State, changes: &Changes) {
    let mut containers = changes.containers.clone();
    let mut services = changes.services.clone();
    for node in &changes.nodes {
        projection.node(node, state.node(node).ok().map(|n| n.node.address));
        containers.extend(state.containers_of_node(node).cloned());
    }
    for key in &containers {
        let c = state.container(key);
        if let Some(c) = c {
            services.insert(c.service_key());
        }
        projection.container(key, c.is_some(), c.and_then(|c| state.live_address(c)));
    }
    project_services(projection, state, services.iter().cloned());
}

/// Builds every name from the state: at start-up and after a failed commit. Walks the state
/// once, rather than marking everything changed.
pub fn project_all(projection: &mut Projection, state: &State) {
    for n in state.nodes() {
        projection.node(&n.node.name, Some(n.node.address));
    }
    for c in state.containers() {
        projection.container(&c.key, true, state.live_address(c));
    }
    project_services(projection, state, state.services());
}

fn project_services(projection: &mut Projection, state: &State, services: impl Iterator<Item = ServiceKey>) {
    let mut members = Vec::new();
    for service in services {
        members.clear();
        members.extend(state.containers_of_service(&service).map(|c| Member {
            key: &c.key,
            address: state.live_address(c),
            ports: &c.ports,
        }));
        let declared = state.stacks().declared_ports(&service);
        projection.service(&service, &members, declared.as_deref());
    }
}
