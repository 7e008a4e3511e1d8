//! One task per container: starts it, runs its health check, applies its restart policy, and
//! stops it by draining first.
//!
//! ```text
//!  start --> running (ready unless it has a health check: "starting" until it passes)
//!     |  health check: thresholds move it in and out of DNS
//!     |  exits on its own: restart policy -> restart after a backoff, or stopped ("exited …")
//!     v
//!  Stop: drain (report not ready, wait for the API's answer, wait the record TTL) -> SIGTERM,
//!        grace, SIGKILL -> stopped
//! ```
//!
//! Every state goes to the [`Reporter`]; the task never calls the API itself.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::health::{self, Thresholds};
use super::report::{Ack, Known, Reporter};
use super::runtime::{Exited, Runtime, Spec, Stopped};
use crate::stackfile::Restart;

/// Longest wait between restarts of a container that keeps exiting.
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A container that ran this long before exiting restarts without delay.
const RESTART_RESET_AFTER: Duration = Duration::from_secs(30);

/// What the agent's main loop tells a supervisor.
#[derive(Debug)]
pub enum Command {
    /// Stop the container: it is no longer assigned here, or a newer generation replaces it.
    Stop,
}

/// Settings every supervisor shares.
pub struct Settings {
    /// The node's address: `HOST`, and where health checks connect.
    pub host: IpAddr,
    /// Reported as the container's address when it differs from the registered node address.
    pub report_address: Option<IpAddr>,
    /// The zone's record TTL, from the latest assignments: how long to drain.
    pub dns_ttl: AtomicU32,
    /// SIGTERM to SIGKILL.
    pub stop_grace: Duration,
    /// The node's lease: heartbeats go out every third of it.
    pub lease: Duration,
}

/// A container's supervisor, moved into its task.
pub struct Supervisor<R> {
    pub spec: Spec,
    /// Already running (adopted after an agent restart): do not start it again.
    pub adopted: bool,
    pub runtime: Arc<R>,
    pub reporter: Arc<Reporter>,
    pub settings: Arc<Settings>,
    pub commands: mpsc::Receiver<Command>,
    pub exits: mpsc::Receiver<Exited>,
    /// Where the runtime sends exits (the main loop routes them back here).
    pub exit_sink: mpsc::Sender<Exited>,
}

/// Where the container is in its life.
enum Phase {
    Running {
        since: Instant,
        health: Option<Thresholds>,
    },
    /// Exited; restarts at the instant if the policy says so.
    Exited {
        restart_at: Option<tokio::time::Instant>,
    },
}

impl<R: Runtime> Supervisor<R> {
    pub async fn run(mut self) {
        let key = self.spec.key.clone();
        let mut restarts = 0u32;
        let mut phase = if self.adopted {
            // It was in DNS under the agent before this one: it stays in while it passes. Its
            // state is already with the reporter, listed once the assignments say it is ours.
            let health = self.spec.health_check.as_ref().map(Thresholds::adopted);
            Phase::Running {
                since: Instant::now(),
                health,
            }
        } else {
            self.start(&mut restarts, false).await
        };
        // Clamped: the check comes from the wire or a label, and a zero interval would panic.
        let every = self
            .spec
            .health_check
            .as_ref()
            .map_or(3_600_000, |c| c.interval_ms);
        let mut probe_tick = tokio::time::interval(Duration::from_millis(every.clamp(100, 3_600_000)));
        probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let restart_at = match &phase {
                Phase::Exited { restart_at: Some(at) } => Some(*at),
                _ => None,
            };
            tokio::select! {
                command = self.commands.recv() => {
                    // A closed channel means the agent is going away: leave the container be.
                    if let Some(Command::Stop) = command {
                        self.stop(&phase).await;
                    }
                    return;
                }
                Some(exited) = self.exits.recv() => {
                    if exited.generation != self.spec.generation || !matches!(phase, Phase::Running { .. }) {
                        continue;
                    }
                    let ran = match &phase {
                        Phase::Running { since, .. } => since.elapsed(),
                        Phase::Exited { .. } => Duration::ZERO,
                    };
                    phase = self.exited(exited, ran, &mut restarts);
                }
                () = sleep_until(restart_at) => {
                    tracing::info!(container = %key, restarts, "restarting");
                    phase = self.start(&mut restarts, true).await;
                }
                _ = probe_tick.tick(), if self.spec.health_check.is_some() => {
                    if let Phase::Running { health: Some(thresholds), .. } = &mut phase {
                        let Some(check) = &self.spec.health_check else { continue };
                        let result = match health::target(check, self.settings.host, &self.spec.ports) {
                            Some(target) => health::probe(check, target).await,
                            None => Err("no published port to probe".to_owned()),
                        };
                        if let Some(passing) = thresholds.record(result.is_ok()) {
                            let detail = match (&result, passing) {
                                (_, true) => None,
                                (Err(why), false) => Some(format!("health check failed: {why}")),
                                (Ok(()), false) => Some("health check failed".to_owned()),
                            };
                            if passing {
                                tracing::info!(container = %key, "health check passes; in DNS");
                            } else {
                                tracing::warn!(container = %key, detail = detail.as_deref().unwrap_or(""), "health check fails; out of DNS");
                            }
                            self.report_running(passing, detail, true);
                        }
                    }
                }
            }
        }
    }

    fn report_running(&self, ready: bool, detail: Option<String>, listed: bool) -> u64 {
        let detail = detail.map(|d| fit_detail(&d));
        let known = Known::Running {
            service: self.spec.service.clone(),
            generation: self.spec.generation,
            address: self.settings.report_address,
            ports: self.spec.ports.clone(),
            ready,
            detail,
            listed,
        };
        self.reporter.set(&self.spec.key, known)
    }

    fn report_stopped(&self, detail: String) {
        let detail = fit_detail(&detail);
        let known = Known::Stopped {
            service: self.spec.service.clone(),
            generation: self.spec.generation,
            ports: self.spec.ports.clone(),
            detail: Some(detail),
        };
        self.reporter.set(&self.spec.key, known);
    }

    /// Reports it running; with a health check, out of DNS until it passes.
    fn running(&self, since: Instant, restarted: Option<u32>) -> Phase {
        let health = self.spec.health_check.as_ref().map(|c| Thresholds::new(c, false));
        let detail = match (&health, restarted) {
            (Some(_), _) => Some("starting: waiting for the health check".to_owned()),
            (None, Some(n)) if n > 0 => Some(format!("restarted {n} times")),
            _ => None,
        };
        self.report_running(health.is_none(), detail, true);
        Phase::Running { since, health }
    }

    /// Starts it; `restarts` counts the restarts so far (a failed start counts as one when
    /// its restart policy tries again).
    async fn start(&self, restarts: &mut u32, restarting: bool) -> Phase {
        let restarted = restarting.then_some(*restarts);
        let key = &self.spec.key;
        match self
            .runtime
            .start(&self.spec, self.settings.host, self.exit_sink.clone())
            .await
        {
            Ok(_) => {
                tracing::info!(container = %key, generation = self.spec.generation, "started");
                self.running(Instant::now(), restarted)
            }
            Err(e) => {
                tracing::error!(container = %key, error = %e, "cannot start the container");
                let Some(delay) = self.restart_after(false, restarts) else {
                    self.report_stopped(format!("cannot start: {e}"));
                    return Phase::Exited { restart_at: None };
                };
                let detail = format!("cannot start, retrying in {}s: {e}", delay.as_secs());
                self.report_running(false, Some(detail), true);
                Phase::Exited {
                    restart_at: Some(tokio::time::Instant::now() + delay),
                }
            }
        }
    }

    /// Whether the restart policy starts it again after an end (`succeeded`: a clean exit) with
    /// `restarts` so far, and after what pause (1 s doubling to 30 s); counts the restart.
    fn restart_after(&self, succeeded: bool, restarts: &mut u32) -> Option<Duration> {
        let n = *restarts;
        let again = match self.spec.restart {
            Restart::No => false,
            Restart::Always => true,
            Restart::OnFailure { max_retries } => !succeeded && max_retries.is_none_or(|max| n < max),
        };
        if !again {
            return None;
        }
        *restarts += 1;
        Some(Duration::from_secs(1 << n.min(5)).min(RESTART_BACKOFF_MAX))
    }

    /// It ended on its own: restart it if its policy says so, else report it stopped.
    fn exited(&self, exited: Exited, ran: Duration, restarts: &mut u32) -> Phase {
        let key = &self.spec.key;
        let mut why = exited.exit.to_string();
        if let Some(words) = &exited.last_words {
            why.push_str(&format!(": {words}"));
        }
        // A container that ran a good while before this exit starts its count afresh.
        if ran >= RESTART_RESET_AFTER {
            *restarts = 0;
        }
        let Some(delay) = self.restart_after(exited.exit.success(), restarts) else {
            tracing::warn!(container = %key, why, "container stopped; its restart policy does not restart it");
            self.report_stopped(why);
            return Phase::Exited { restart_at: None };
        };
        tracing::warn!(container = %key, why, restart_in_s = delay.as_secs(), "container exited; restarting after a pause");
        self.report_running(
            false,
            Some(format!("restarting in {}s ({why})", delay.as_secs())),
            true,
        );
        Phase::Exited {
            restart_at: Some(tokio::time::Instant::now() + delay),
        }
    }

    /// Drain, then stop: out of DNS first, acknowledged; then the record TTL, so that clients
    /// that resolved the name just before still reach it; then SIGTERM, grace, SIGKILL.
    async fn stop(&mut self, phase: &Phase) {
        let key = self.spec.key.clone();
        if let Phase::Running { .. } = phase {
            let seq = self.report_running(false, Some("draining".to_owned()), false);
            // Until the API took it out of DNS; at most until the node's lease would have lapsed
            // and one TTL passed, when the API's DNS no longer lists it anyway.
            let ttl = Duration::from_secs(u64::from(self.settings.dns_ttl.load(Ordering::Relaxed)));
            let ack = self.reporter.acked(&key, seq, self.settings.lease + ttl).await;
            match ack {
                Some(Ack::Accepted) => {
                    tracing::info!(container = %key, wait_s = ttl.as_secs(), "out of DNS; waiting the record TTL before stopping");
                    // Stop waiting if it exits meanwhile.
                    let _ = tokio::time::timeout(ttl, async {
                        while let Some(e) = self.exits.recv().await {
                            if e.generation == self.spec.generation {
                                return;
                            }
                        }
                    })
                    .await;
                }
                // Not ours in the API any more: nobody is sent here through DNS.
                Some(Ack::Refused(why)) => {
                    tracing::info!(container = %key, why, "the API no longer lists it here; stopping at once")
                }
                None => {
                    tracing::warn!(container = %key, "the API did not acknowledge the drain in time; stopping anyway")
                }
            }
        }
        let grace = self.settings.stop_grace;
        let detail = match self.runtime.stop(&key, grace).await {
            Ok(Stopped::Terminated) | Ok(Stopped::AlreadyGone) => "stopped by the agent".to_owned(),
            Ok(Stopped::Killed) => {
                tracing::warn!(container = %key, grace_s = grace.as_secs(), "ignored SIGTERM for the grace period; killed");
                format!("killed after ignoring SIGTERM for {}s", grace.as_secs())
            }
            Err(e) => {
                tracing::error!(container = %key, error = %e, "cannot stop the container");
                format!("cannot stop: {e}")
            }
        };
        tracing::info!(container = %key, generation = self.spec.generation, "stopped");
        self.report_stopped(detail);
    }
}

/// The API takes at most 200 characters of detail, none of them control characters.
fn fit_detail(detail: &str) -> String {
    const MAX: usize = 200;
    let clean: String = detail
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.chars().count() <= MAX {
        return clean;
    }
    let mut cut: String = clean.chars().take(MAX - 1).collect();
    cut.push('…');
    cut
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
