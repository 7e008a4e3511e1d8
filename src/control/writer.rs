//! The writer thread: the only code that changes state.
//!
//! It owns the state and the store. Each turn takes every queued job (up to [`MAX_BATCH`]),
//! runs them one after another against the state, commits their changes in one durable
//! transaction, publishes one snapshot, and only then answers them all.
//!
//! On a shared store (etcd) it also applies, in order, the batches the leader commits
//! ([`Work::Followed`]), and commits only while this instance leads ([`Work::Lead`]).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use super::changes::Changes;
use super::error::ControlError;
use super::state::State;
use super::wake::NodeWakers;
use super::{Publisher, StartError, TokenIndex};
use crate::model::ServiceKey;
use crate::snapshot::journal::{Diff, Journal};
use crate::snapshot::platform::Member;
use crate::snapshot::{Projection, SnapshotHandle};
use crate::store::etcd::Followed;
use crate::store::log::StoredJournal;
use crate::store::{Batch, JournalWrite, Loaded, Store};

/// Most jobs folded into one commit; bounds the latency of the first one.
pub const MAX_BATCH: usize = 4096;

/// Everything a job may touch.
pub struct Ctx<'a> {
    pub state: &'a mut State,
    pub changes: &'a mut Changes,
    /// When the batch started; one clock reading for every job in it.
    pub now: Instant,
    /// Whether this instance decides (always, on its own store; on a shared store, only the
    /// leader): lease expiry and tombstone sweeps run only where it is true.
    pub leading: bool,
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

/// What the writer is handed, in order.
pub enum Work {
    Job(Queued),
    /// From a shared store: a batch committed (by any instance), or a gap to load past.
    Followed(Followed),
    /// From a shared store: whether this instance leads now.
    Lead(bool),
}

/// The thread that owns the store and the state.
pub struct Writer {
    pub store: Box<dyn Store>,
    pub state: State,
    pub serial: u32,
    /// Batches in the shared log the state holds (0 on redb, which does not count them).
    pub position: u64,
    /// The zone fingerprint the stored journal was made with.
    pub fingerprint: Option<u64>,
    /// This instance's own (its zone file and record policy).
    pub own_fingerprint: u64,
    /// Whether this instance may commit: always on redb; on etcd while it leads.
    pub leading: bool,
    /// On a shared store (etcd).
    pub shared: bool,
    /// etcd says this instance leads (it may not have taken the lead yet).
    pub wants_lead: bool,
    /// When the stored state was last read after a failure: retries wait a second.
    pub last_load: Option<Instant>,
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

/// The state as stored, with its zone built: at start-up, and on a shared store whenever
/// this instance takes the lead or missed batches.
pub struct Restored {
    pub state: State,
    pub projection: Projection,
    pub serial: u32,
    pub position: u64,
    pub fingerprint: Option<u64>,
    /// The zone at the stored serial, when it could be rebuilt exactly (same zone file and
    /// policy): the stored journal continues from it.
    pub snapshot: Option<crate::snapshot::Snapshot>,
}

/// Builds the state and its zone from what was loaded. With the same zone file and policy
/// the zone is exactly the one of the stored serial, so the journal continues from it.
pub fn restore(
    mut loaded: Loaded,
    publisher: &Publisher,
    default_limits: crate::model::Limits,
) -> Result<Restored, StartError> {
    let serial = loaded.serial;
    let position = loaded.position;
    let stored_fingerprint = loaded.fingerprint;
    let diffs = std::mem::take(&mut loaded.journal)
        .into_iter()
        .map(|(serial, bytes)| Diff::decode(&bytes).ok_or(StartError::Journal { serial }))
        .collect::<Result<Vec<_>, _>>()?;
    let journal = Journal::from_diffs(diffs);
    let mut state = State::from_loaded(loaded, Instant::now());
    state.default_limits = default_limits;
    let mut projection = publisher.projection();
    project_all(&mut projection, &state);
    let mut snapshot = None;
    if stored_fingerprint == Some(projection.fingerprint()) {
        snapshot = Some(projection.publish(serial).0);
        if journal.last_serial().is_none_or(|s| s == serial) {
            projection.resume_journal(journal);
        }
    }
    Ok(Restored {
        state,
        projection,
        serial,
        position,
        fingerprint: stored_fingerprint,
        snapshot,
    })
}

impl Writer {
    pub fn run(mut self, mut work: mpsc::Receiver<Work>) {
        // When each write of the batch (a job that recorded a store op) was queued.
        let mut writes = Vec::new();
        let mut next = None;
        loop {
            let Some(first) = next.take().or_else(|| work.blocking_recv()) else {
                break;
            };
            // Jobs come at least every lease check: the retries of a failed load and of a
            // take-over that failed.
            if self.shared && self.stale && self.retry_due() {
                self.recover();
            }
            if self.shared && self.wants_lead && !self.leading && self.retry_due() {
                self.lead(true);
            }
            let first = match first {
                Work::Job(job) => job,
                Work::Followed(followed) => {
                    self.follow(followed);
                    continue;
                }
                Work::Lead(lead) => {
                    self.lead(lead);
                    continue;
                }
            };
            let mut changes = Changes::default();
            let mut completions = Vec::new();
            let mut panicked = false;
            writes.clear();
            {
                let mut ctx = Ctx {
                    state: &mut self.state,
                    changes: &mut changes,
                    now: Instant::now(),
                    leading: self.leading,
                };
                let mut job = Some(first);
                while let Some(Queued { at, job: run }) = job.take() {
                    let ops = ctx.changes.ops.len();
                    // A bug in one job must not take the writer down: the batch is dropped
                    // and the state reloaded from the store below.
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&mut ctx))) {
                        Ok(complete) => completions.push(complete),
                        Err(_) => panicked = true,
                    }
                    if ctx.changes.ops.len() > ops {
                        writes.push(at);
                    }
                    if completions.len() < MAX_BATCH {
                        match work.try_recv() {
                            Ok(Work::Job(queued)) => job = Some(queued),
                            // Followed batches and leadership wait for this batch's commit.
                            Ok(other) => next = Some(other),
                            Err(_) => {}
                        }
                    }
                }
            }
            if panicked {
                tracing::error!(
                    "a request panicked in the writer; its batch is dropped and the state reloaded"
                );
                self.recover();
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
        if self.stale {
            // This batch ran on a state that may hold a failed batch's changes (an unchanged
            // report included: it matched what was never stored): drop it, and try again to
            // read what the database really holds (on a shared store the run loop retries,
            // once a second).
            if !self.shared {
                self.recover();
            }
            return Err(self.unreadable());
        }
        if !self.leading {
            // A follower's zone is rebuilt as it follows (`rebuild` is for the leader's next
            // commit), so reads are answered at once.
            if changes.is_empty() {
                return Ok(self.serial);
            }
            // Only reads should reach a follower (the API forwards writes to the leader); a
            // write that got here ran on this state, which must go back to the stored one.
            self.recover();
            return Err(ControlError::NotLeader);
        }
        if changes.is_empty() && !self.rebuild {
            return Ok(self.serial);
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
            after: self.position,
        };
        let committing = Instant::now();
        let committed = self.store.commit(batch);
        if let Err(e) = committed {
            self.metrics.commit_failed();
            tracing::error!(error = %e, "commit failed; reloading state from the database");
            let shared = self.shared;
            self.recover();
            return Err(if shared {
                ControlError::Unavailable(e.to_string())
            } else {
                ControlError::Storage(Arc::new(e))
            });
        }
        if let JournalWrite::Reset { fingerprint } = journal {
            self.fingerprint = Some(fingerprint);
        }
        self.metrics.committed(writes, committing.elapsed());
        self.position += 1;
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

    /// Returns to the stored state after a failed batch. On redb: the state is read again and
    /// the next commit rebuilds the zone. On a shared store: the state and the zone are read
    /// and published as stored (other instances may have committed since), leases kept.
    fn recover(&mut self) {
        if !self.shared {
            self.reload();
            self.rebuild = true;
            return;
        }
        let leases = self.state.leases();
        self.last_load = Some(Instant::now());
        self.resync();
        if !self.stale {
            // Whether a node is lost comes from the store (the failed batch may have changed it
            // in memory only); when it was last heard from stays.
            self.state.restore_last_seen(leases);
        }
    }

    /// Whether a retry (a load, a take-over) is due: at most one a second while etcd fails.
    fn retry_due(&self) -> bool {
        self.last_load
            .is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(1))
    }

    fn unreadable(&self) -> ControlError {
        if self.shared {
            ControlError::Unavailable("etcd could not be read after a failed commit".to_owned())
        } else {
            ControlError::Unreadable
        }
    }

    /// Replaces the in-memory state with the database's, keeping leases (redb: a shared store
    /// reads and publishes its state again in [`Writer::resync`]). Any failure leaves the
    /// writer `stale`: writes are refused until a later reload succeeds.
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

    /// Publishes `snapshot` at `serial` as the current state.
    fn publish(&mut self, snapshot: crate::snapshot::Snapshot, serial: u32) {
        self.serial = serial;
        self.tokens.store(Arc::new(self.state.token_index()));
        self.snapshots.store(Arc::new(snapshot));
        self.serials.send_replace(serial);
    }

    /// Starts deciding: on a shared store, from the stored state as it is now (read again),
    /// with every live node's lease restarted. Commits the first serial of this term, above
    /// the last one and the zone file's, so serials never go backwards.
    pub fn take_lead(&mut self) -> Result<u32, ControlError> {
        if self.shared {
            let loaded = self
                .store
                .load()
                .map_err(|e| ControlError::Unavailable(e.to_string()))?;
            let restored = restore(loaded, &self.publisher, self.state.default_limits)
                .map_err(|e| ControlError::Unavailable(e.to_string()))?;
            self.install(restored, false);
        }
        self.state.restart_leases(Instant::now());
        let serial = self
            .serial
            .wrapping_add(1)
            .max(self.publisher.zone.soa.file_serial);
        // Without the same zone file and policy, this is the first publication of a new chain.
        let fingerprint = self.projection.fingerprint();
        let (snapshot, diff) = self.projection.publish(serial);
        let journal = match &diff {
            Some(diff) => JournalWrite::Append {
                to: diff.to,
                diff: diff.bytes(),
                keep_from: self.projection.journal().oldest_serial().unwrap_or(diff.to),
            },
            _ => JournalWrite::Reset { fingerprint },
        };
        self.leading = true;
        self.store
            .commit(Batch {
                ops: &[],
                serial,
                journal,
                after: self.position,
            })
            .inspect_err(|_| self.leading = !self.shared)
            .map_err(|e| ControlError::Unavailable(e.to_string()))?;
        if diff.is_none() {
            self.fingerprint = Some(fingerprint);
        }
        self.position += 1;
        self.rebuild = false;
        self.stale = false;
        self.publish(snapshot, serial);
        self.wakers.wake_all();
        Ok(serial)
    }

    /// Makes `restored` the current state and zone. `serve`: publish a zone even when the
    /// stored one could not be rebuilt exactly (a zone of its own, at the stored serial).
    pub fn install(&mut self, restored: Restored, serve: bool) {
        let mut projection = restored.projection;
        let resumed = restored.snapshot.is_some();
        let snapshot = match restored.snapshot {
            Some(snapshot) => Some(snapshot),
            None if serve => Some(projection.publish(restored.serial).0),
            None => None,
        };
        self.state = restored.state;
        self.projection = projection;
        self.position = restored.position;
        self.fingerprint = restored.fingerprint;
        self.serial = restored.serial;
        // Not the stored zone: a leader's next commit starts a new journal.
        self.rebuild = serve && !resumed;
        self.stale = false;
        if let Some(snapshot) = snapshot {
            self.publish(snapshot, restored.serial);
        }
        self.wakers.wake_all();
    }

    /// Leadership came or went (shared store).
    fn lead(&mut self, lead: bool) {
        self.wants_lead = lead;
        if lead == self.leading {
            return;
        }
        if !lead {
            tracing::warn!("this instance no longer leads; it follows the leader's commits");
            self.leading = false;
            return;
        }
        match self.take_lead() {
            Ok(serial) => tracing::info!(
                serial,
                position = self.position,
                "this instance leads: it commits, places and expires leases"
            ),
            Err(e) => {
                // The run loop tries again (once a second) while etcd says this one leads; in
                // the meantime it serves the stored state, as a follower.
                tracing::error!(error = %e, "cannot take the lead yet; retrying");
                self.leading = false;
                self.last_load = Some(Instant::now());
                self.resync();
            }
        }
    }

    /// A batch from the shared log: applied unless this state already holds it.
    fn follow(&mut self, followed: Followed) {
        let (position, entry) = match followed {
            Followed::Entry { position, entry } if position <= self.position => {
                let _ = entry;
                return;
            }
            Followed::Entry { position, entry } if position == self.position + 1 => (position, entry),
            Followed::Entry { position, .. } => {
                tracing::warn!(
                    position,
                    at = self.position,
                    "batches of the shared log were missed; loading the state again"
                );
                return self.resync();
            }
            Followed::Reload => return self.resync(),
        };
        if self.stale {
            // This state may hold a batch that was never stored: read the stored one instead.
            return self.recover();
        }
        if self.leading {
            // Only this instance's own commit can follow its state while it leads (the commit
            // protocol compares the head and the leader): one whose answer was lost, and that
            // etcd applied after this instance read the state again.
            tracing::warn!(
                position,
                "a commit reported failed was stored after all; applying it"
            );
        }
        let entry = *entry;
        let now = Instant::now();
        let mut changes = Changes::default();
        for op in entry.ops {
            self.state.apply_stored(op, now, &mut changes);
        }
        let reset = match &entry.journal {
            StoredJournal::Reset { fingerprint } => {
                self.fingerprint = Some(*fingerprint);
                true
            }
            _ => self.rebuild,
        };
        if reset {
            self.projection = self.publisher.projection();
            project_all(&mut self.projection, &self.state);
        } else {
            project(&mut self.projection, &self.state, &changes);
        }
        let (mut snapshot, diff) = self.projection.publish(entry.serial);
        // With the leader's zone file and policy, this instance's zone must be the leader's.
        let comparable = self.fingerprint == Some(self.own_fingerprint);
        if !comparable && reset {
            tracing::error!(
                serial = entry.serial,
                "the leader builds the zone from another zone file or record policy than this instance: give every instance the same zone file, --ttl, --rotation and --max-answers; until then this one serves, and journals, a zone of its own"
            );
        }
        let differs = comparable
            && !reset
            && match (&entry.journal, &diff) {
                (StoredJournal::Append { diff: stored, .. }, Some(mine)) => stored.as_slice() != mine.bytes(),
                // Unless this instance keeps no journal.
                (StoredJournal::Append { .. }, None) => self.publisher.journal.diffs > 0,
                _ => false,
            };
        if differs {
            tracing::error!(
                serial = entry.serial,
                position,
                "this instance built another zone difference than the leader for the same batch; rebuilding its zone (its IXFR journal starts over)"
            );
            self.projection = self.publisher.projection();
            project_all(&mut self.projection, &self.state);
            snapshot = self.projection.publish(entry.serial).0;
        }
        self.position = position;
        self.rebuild = false;
        if changes.tokens_changed {
            self.tokens.store(Arc::new(self.state.token_index()));
        }
        self.serial = entry.serial;
        self.snapshots.store(Arc::new(snapshot));
        self.serials.send_replace(entry.serial);
        self.wakers.wake(&self.state.take_touched_nodes());
    }

    /// Loads the shared state again after missed batches.
    fn resync(&mut self) {
        let restored = self.store.load().map_err(|e| e.to_string()).and_then(|loaded| {
            restore(loaded, &self.publisher, self.state.default_limits).map_err(|e| e.to_string())
        });
        match restored {
            Ok(restored) => self.install(restored, true),
            Err(e) => {
                tracing::error!(error = %e, "cannot load the shared state; serving the last one until it can");
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
