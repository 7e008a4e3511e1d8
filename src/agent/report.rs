//! What the API should know about this node's containers, and the one task that tells it.
//!
//! ```text
//!  supervisors --set(key, Known)--> [latest state per container] --reporter task--> API
//!             <--acked(key, seq)--   (PUT / DELETE each change; PUT the whole list to resync)
//! ```
//!
//! Supervisors never talk to the API themselves: they set the state a container is in, and the
//! reporter sends the latest one, retrying with backoff and jitter while the API cannot be
//! reached (a newer state replaces one not yet sent). The whole list (anti-entropy) is sent
//! when the agent starts, when the API comes back after an outage, and after any answer the
//! agent cannot place (a 409 or 404 for one container): it replaces whatever the server
//! believes with what really runs here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::api::types::{ContainerListItem, ContainerListRequest, ContainerRequest};
use crate::client::{Client, ClientError};
use crate::model::{ContainerKey, Label, Port};

/// Backoff between attempts while the API cannot be reached.
pub const BACKOFF_MIN: Duration = Duration::from_millis(200);
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The state of one container, as the API should have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    Running {
        service: Label,
        generation: u64,
        address: Option<IpAddr>,
        ports: Vec<Port>,
        /// In DNS: false while it fails its health check, is starting, or drains.
        ready: bool,
        detail: Option<String>,
        /// Part of the whole list sent to resynchronise: only while it is assigned here.
        listed: bool,
    },
    Stopped {
        service: Label,
        generation: u64,
        ports: Vec<Port>,
        detail: Option<String>,
    },
}

impl Known {
    /// A running state as the API's report body, and whether it belongs in the whole list.
    fn report(&self) -> Option<(ContainerRequest, bool)> {
        let Known::Running {
            service,
            generation,
            address,
            ports,
            ready,
            detail,
            listed,
        } = self
        else {
            return None;
        };
        let request = ContainerRequest {
            service: service.to_string(),
            address: address.map(|a| a.to_string()),
            ports: ports.clone(),
            generation: *generation,
            ready: *ready,
            detail: detail.clone(),
        };
        Some((request, *listed))
    }
}

/// How the API took a state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    Accepted,
    /// It refused it for this container (not ours any more, unknown…): the message.
    Refused(String),
}

struct Entry {
    known: Known,
    /// Raised by every `set`.
    seq: u64,
    /// The last `seq` the API answered, and how.
    acked: Option<(u64, Ack)>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<ContainerKey, Entry>,
    next_seq: u64,
    /// Send the whole list before anything else.
    resync: bool,
    /// The supervisors know which containers are assigned here: a resync may go out.
    ready_to_resync: bool,
}

pub struct Reporter {
    client: Arc<Client>,
    node: Label,
    inner: Mutex<Inner>,
    /// Wakes the task when there is something to send.
    wake: Notify,
    /// Wakes waiters of [`Reporter::acked`] when answers come.
    answered: Notify,
    /// Wakes the agent's main loop when a resync was refused: it should look at its
    /// assignments again.
    pub refresh: Notify,
}

impl Reporter {
    pub fn new(client: Arc<Client>, node: Label) -> Arc<Self> {
        Arc::new(Self {
            client,
            node,
            inner: Mutex::new(Inner {
                resync: true,
                ..Inner::default()
            }),
            wake: Notify::new(),
            answered: Notify::new(),
            refresh: Notify::new(),
        })
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the state `key` should have; returns the number to wait for with [`acked`].
    pub fn set(&self, key: &ContainerKey, known: Known) -> u64 {
        let mut inner = self.inner();
        inner.next_seq += 1;
        let seq = inner.next_seq;
        let acked = inner.entries.get(&key.clone()).and_then(|e| e.acked.clone());
        inner.entries.insert(key.clone(), Entry { known, seq, acked });
        drop(inner);
        self.wake.notify_one();
        seq
    }

    /// Changes whether a running container is part of the whole list (assigned here).
    pub fn set_listed(&self, key: &ContainerKey, listed: bool) {
        let mut inner = self.inner();
        if let Some(Entry {
            known: Known::Running { listed: l, .. },
            ..
        }) = inner.entries.get_mut(key)
        {
            *l = listed;
        }
    }

    /// Asks for the whole list to be sent (once the agent knows its assignments).
    pub fn resync(&self) {
        self.inner().resync = true;
        self.wake.notify_one();
    }

    /// The agent knows its assignments: from now on the whole list may be sent.
    pub fn allow_resync(&self) {
        let mut inner = self.inner();
        if !inner.ready_to_resync {
            inner.ready_to_resync = true;
            drop(inner);
            self.wake.notify_one();
        }
    }

    /// Waits until the API answered state `seq` of `key` (or a later one), at most `limit`.
    pub async fn acked(&self, key: &ContainerKey, seq: u64, limit: Duration) -> Option<Ack> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let answered = self.answered.notified();
            if let Some((done, ack)) = self.inner().entries.get(key).and_then(|e| e.acked.clone())
                && done >= seq
            {
                return Some(ack);
            }
            if tokio::time::timeout_at(deadline, answered).await.is_err() {
                return None;
            }
        }
    }

    /// Sends states until the process ends.
    pub async fn run(self: Arc<Self>) {
        let mut backoff = Backoff::default();
        loop {
            let woken = self.wake.notified();
            match self.send_pending().await {
                Ok(()) => {
                    if backoff.failing() {
                        tracing::info!("the API is reachable again; reports resume");
                        self.resync();
                    }
                    backoff.reset();
                    woken.await;
                }
                Err(e) => {
                    let wait = backoff.next();
                    if backoff.attempts() == 1 || backoff.attempts() % 20 == 0 {
                        tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot report to the API; containers keep running, retrying");
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Sends the whole list if asked for, then every state not yet answered.
    async fn send_pending(&self) -> Result<(), ClientError> {
        let (resync, ready) = {
            let inner = self.inner();
            (inner.resync, inner.ready_to_resync)
        };
        if !ready {
            // Until the agent knows its assignments, the whole list will say it all.
            return Ok(());
        }
        if resync {
            self.send_whole_list().await?;
        }
        loop {
            let next = {
                let inner = self.inner();
                inner
                    .entries
                    .iter()
                    .find(|(_, e)| e.acked.as_ref().is_none_or(|(done, _)| *done < e.seq))
                    .map(|(k, e)| (k.clone(), e.known.clone(), e.seq))
            };
            let Some((key, known, seq)) = next else {
                return Ok(());
            };
            let ack = match self.send_one(&key, &known).await {
                Ok(()) => Ack::Accepted,
                Err(ClientError::Api {
                    status,
                    code,
                    message,
                }) if status != 401 && status < 500 => {
                    // A container on its way out that the API gave to another node: expected.
                    let leaving = matches!(
                        known,
                        Known::Running { listed: false, .. } | Known::Stopped { .. }
                    );
                    if leaving {
                        tracing::info!(container = %key, %code, %message, "the API no longer has this container here");
                    } else {
                        tracing::warn!(container = %key, %code, %message, "the API refused a report; sending the whole list to resynchronise");
                        self.resync();
                    }
                    Ack::Refused(message)
                }
                Err(e) => return Err(e),
            };
            self.answer(&key, seq, ack);
        }
    }

    /// Records the answer to `seq`; a stopped container that was answered is forgotten.
    fn answer(&self, key: &ContainerKey, seq: u64, ack: Ack) {
        let mut inner = self.inner();
        if let Some(entry) = inner.entries.get_mut(key) {
            entry.acked = Some((seq, ack));
            if entry.seq == seq && matches!(entry.known, Known::Stopped { .. }) {
                inner.entries.remove(key);
            }
        }
        drop(inner);
        self.answered.notify_waiters();
    }

    async fn send_one(&self, key: &ContainerKey, known: &Known) -> Result<(), ClientError> {
        let names = (key.user.as_str(), key.stack.as_str(), key.name.as_str());
        match known {
            Known::Running { .. } => {
                let Some((request, _)) = known.report() else {
                    return Ok(());
                };
                self.client
                    .put_container(self.node.as_str(), names, &request)
                    .await?;
            }
            Known::Stopped {
                service,
                generation,
                ports,
                detail,
            } => {
                let stop = || {
                    self.client
                        .stop_container(self.node.as_str(), names, *generation, detail.as_deref())
                };
                match stop().await {
                    Ok(_) => {}
                    // It stopped before it was ever reported (a command that exits at once):
                    // report it, out of DNS, then stopped, so `stack ps` can say why.
                    Err(ClientError::Api { status: 404, .. }) => {
                        let request = ContainerRequest {
                            service: service.to_string(),
                            address: None,
                            ports: ports.clone(),
                            generation: *generation,
                            ready: false,
                            detail: detail.clone(),
                        };
                        self.client
                            .put_container(self.node.as_str(), names, &request)
                            .await?;
                        stop().await?;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// `PUT /v1/nodes/{node}/containers` with every container assigned here that runs.
    async fn send_whole_list(&self) -> Result<(), ClientError> {
        let (items, seqs): (Vec<ContainerListItem>, Vec<(ContainerKey, u64)>) = {
            let inner = self.inner();
            let seqs = inner.entries.iter().map(|(k, e)| (k.clone(), e.seq)).collect();
            let items = inner
                .entries
                .iter()
                .filter_map(|(key, e)| match e.known.report() {
                    Some((r, true)) => Some(ContainerListItem {
                        user: key.user.to_string(),
                        stack: key.stack.to_string(),
                        name: key.name.to_string(),
                        service: r.service,
                        address: r.address,
                        ports: r.ports,
                        generation: r.generation,
                        ready: r.ready,
                        detail: r.detail,
                    }),
                    _ => None,
                })
                .collect();
            (items, seqs)
        };
        let count = items.len();
        let request = ContainerListRequest { containers: items };
        match self.client.replace_containers(self.node.as_str(), &request).await {
            Ok(answer) => {
                tracing::info!(
                    containers = count,
                    started = answer.started,
                    updated = answer.updated,
                    stopped = answer.stopped,
                    unchanged = answer.unchanged,
                    "resynchronised the node's containers with the API"
                );
                self.inner().resync = false;
                // Everything listed is now known as sent; the rest was stopped by the replace.
                for (key, seq) in seqs {
                    self.answer(&key, seq, Ack::Accepted);
                }
                Ok(())
            }
            Err(ClientError::Api {
                status: 400 | 413 | 422,
                code,
                message,
            }) => {
                // Not a disagreement about what runs here but a list the API cannot take: send
                // the containers one at a time instead of blocking every report on it.
                tracing::error!(%code, %message, containers = count, "the API refused the node's container list; reporting containers one by one");
                self.inner().resync = false;
                Ok(())
            }
            Err(ClientError::Api {
                status: 409 | 404,
                code,
                message,
            }) => {
                // The list holds a container that is no longer ours: let the agent look at
                // its assignments again, which stops it, then retry.
                tracing::warn!(%code, %message, "the API refused the node's container list; reconciling with the assignments first");
                self.refresh.notify_waiters();
                Err(ClientError::Api {
                    status: 409,
                    code,
                    message,
                })
            }
            Err(e) => Err(e),
        }
    }
}

/// Exponential backoff with jitter, from [`BACKOFF_MIN`] to [`BACKOFF_MAX`].
#[derive(Debug, Default)]
pub struct Backoff {
    attempts: u32,
}

impl Backoff {
    pub fn next(&mut self) -> Duration {
        self.attempts += 1;
        let exp = BACKOFF_MIN.saturating_mul(1 << self.attempts.min(10).saturating_sub(1));
        let base = exp.min(BACKOFF_MAX);
        // ±25 % jitter, so agents that lost the API together do not come back together.
        let mut byte = [0u8; 1];
        let _ = getrandom::fill(&mut byte);
        let factor = 0.75 + f64::from(byte[0]) / 255.0 * 0.5;
        base.mul_f64(factor)
    }

    pub fn reset(&mut self) {
        self.attempts = 0;
    }

    pub fn failing(&self) -> bool {
        self.attempts > 0
    }

    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let mut b = Backoff::default();
        let first = b.next();
        assert!(first >= BACKOFF_MIN.mul_f64(0.75) && first <= BACKOFF_MIN.mul_f64(1.25));
        for _ in 0..20 {
            assert!(b.next() <= BACKOFF_MAX.mul_f64(1.25));
        }
        assert!(b.failing());
        b.reset();
        assert!(!b.failing());
    }
}
