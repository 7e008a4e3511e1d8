//! Outgoing NOTIFY (RFC 1996): tell each configured secondary that a new serial is out.
//!
//! One task per secondary. Bursts of publications are coalesced (a short pause before sending,
//! and only the newest serial is announced), and a NOTIFY is retried with backoff until the
//! secondary acknowledges it or the attempts run out; a newer serial replaces one still being
//! retried.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::wire::{HEADER_LEN, flag};
use crate::metrics::Metrics;
use crate::snapshot::{Snapshot, SnapshotHandle};
use crate::zone::rtype;

/// Pause after a publication before notifying, so a burst of changes sends one NOTIFY.
const COALESCE: Duration = Duration::from_millis(50);
/// Sends of one NOTIFY before giving up (RFC 1996 §4.7 suggests a handful).
const ATTEMPTS: u32 = 5;
/// Wait for the first acknowledgement; doubled after each unanswered send.
const FIRST_TIMEOUT: Duration = Duration::from_millis(500);
const OPCODE_NOTIFY: u16 = 4;

/// Starts one notifier per secondary, counting each round's outcome in `metrics`; they stop
/// with `cancel`.
pub fn start(
    targets: &[SocketAddr],
    snapshots: SnapshotHandle,
    serials: watch::Receiver<u32>,
    metrics: &Metrics,
    cancel: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    targets
        .iter()
        .map(|&target| {
            metrics.notify_target(target);
            tokio::spawn(notify_target(
                target,
                snapshots.clone(),
                serials.clone(),
                metrics.clone(),
                cancel.clone(),
            ))
        })
        .collect()
}

/// The NOTIFY message for `snapshot`: the SOA question, and the new SOA in the answer section
/// as a hint (RFC 1996 §3.7).
pub fn message(snapshot: &Snapshot, id: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER_LEN + snapshot.apex.len() + 16 + snapshot.soa_rdata.len());
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&((OPCODE_NOTIFY << 11) | flag::AA).to_be_bytes());
    m.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 0]);
    m.extend_from_slice(&snapshot.apex);
    m.extend_from_slice(&rtype::SOA.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m.extend_from_slice(&0xC00Cu16.to_be_bytes());
    m.extend_from_slice(&rtype::SOA.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m.extend_from_slice(&snapshot.soa_ttl.to_be_bytes());
    m.extend_from_slice(&(snapshot.soa_rdata.len() as u16).to_be_bytes());
    m.extend_from_slice(&snapshot.soa_rdata);
    m
}

/// The response code of `reply` if it answers the NOTIFY with this id (RFC 1996 §4.7: same
/// id, QR set, opcode NOTIFY).
fn answer_rcode(reply: &[u8], id: u16) -> Option<u8> {
    (reply.len() >= HEADER_LEN
        && u16::from_be_bytes([reply[0], reply[1]]) == id
        && reply[2] & 0x80 != 0
        && u16::from(reply[2] >> 3 & 0xF) == OPCODE_NOTIFY)
        .then_some(reply[3] & 0xF)
}

async fn notify_target(
    target: SocketAddr,
    snapshots: SnapshotHandle,
    mut serials: watch::Receiver<u32>,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let bind: SocketAddr = if target.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
        .parse()
        .unwrap_or(target);
    let socket = match UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%target, error = %e, "cannot open a socket for NOTIFY; this secondary will not be notified");
            return;
        }
    };
    // Announce the serial we start with too: the secondary may be behind.
    let mut pending = true;
    let mut id;
    loop {
        if !pending {
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = serials.changed() => if changed.is_err() { return },
            }
        }
        pending = false;
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(COALESCE) => {}
        }
        serials.borrow_and_update();
        let snapshot = snapshots.load_full();
        let mut timeout = FIRST_TIMEOUT;
        let mut acked = false;
        let mut refused = false;
        for attempt in 1..=ATTEMPTS {
            // A fresh random ID per send: an off-path spoofer cannot guess the acknowledgement.
            id = u16::from_be_bytes(rand_bytes());
            if let Err(e) = socket.send_to(&message(&snapshot, id), target).await {
                tracing::debug!(%target, error = %e, "NOTIFY send failed");
            }
            let deadline = tokio::time::Instant::now() + timeout;
            let mut buf = [0u8; 512];
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    changed = serials.changed() => {
                        if changed.is_err() { return }
                        pending = true; // A newer serial supersedes this one.
                        break;
                    }
                    () = tokio::time::sleep_until(deadline) => break,
                    received = socket.recv_from(&mut buf) => {
                        let Ok((n, from)) = received else { continue };
                        match answer_rcode(&buf[..n], id).filter(|_| from == target) {
                            Some(0) => {
                                acked = true;
                                break;
                            }
                            Some(rcode) => {
                                // An answer, but a refusal: retrying will not change its mind.
                                tracing::warn!(%target, rcode, serial = snapshot.serial, "secondary refused NOTIFY; check its notify ACL");
                                acked = true;
                                refused = true;
                                break;
                            }
                            None => {}
                        }
                    }
                }
            }
            if acked || pending {
                break;
            }
            tracing::debug!(%target, serial = snapshot.serial, attempt, "NOTIFY not acknowledged yet");
            timeout *= 2;
        }
        if refused {
            metrics.notify(target, "refused");
        } else if acked {
            metrics.notify(target, "acknowledged");
            tracing::debug!(%target, serial = snapshot.serial, "NOTIFY acknowledged");
        } else if !pending {
            metrics.notify(target, "unanswered");
            tracing::warn!(%target, serial = snapshot.serial, attempts = ATTEMPTS, "secondary did not acknowledge NOTIFY; it will pick the change up at its next refresh");
        }
    }
}

fn rand_bytes() -> [u8; 2] {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    b
}
