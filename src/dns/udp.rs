//! UDP transport: one blocking socket per worker thread, all bound to the same port with
//! `SO_REUSEPORT` so the kernel spreads queries over the workers.
//!
//! Blocking I/O on dedicated threads is the shortest path from packet to answer: no reactor,
//! no task wake-ups, one `recv_from` and one `send_to` per query, buffers reused. A short
//! receive timeout lets each worker notice shutdown.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use super::answer::{self, Scratch, Transport};
use super::tsig::{self, Check};
use super::wire;
use super::xfr::{self, TransferAcl};
use crate::snapshot::Snapshot;
use crate::snapshot::SnapshotHandle;

/// How often an idle worker checks whether it should stop.
const SHUTDOWN_POLL: Duration = Duration::from_millis(200);
/// Kernel receive buffer per socket: absorbs bursts while a worker is busy.
const RECV_BUFFER: usize = 4 << 20;
/// Largest UDP datagram we read; anything longer is not a DNS query we can answer.
const MAX_DATAGRAM: usize = 65535;

/// Binds `count` sockets to `addr` (port 0 picks one port for all of them).
pub fn bind(addr: SocketAddr, count: usize) -> std::io::Result<Vec<UdpSocket>> {
    let mut sockets = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_port(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        // Best effort: the kernel caps it at net.core.rmem_max.
        let _ = socket.set_recv_buffer_size(RECV_BUFFER);
        socket.bind(&addr.into())?;
        socket.set_read_timeout(Some(SHUTDOWN_POLL))?;
        let socket: UdpSocket = socket.into();
        addr = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// Answers queries on `socket` until `stop` is set.
pub fn serve(socket: UdpSocket, snapshots: SnapshotHandle, acl: Arc<TransferAcl>, stop: Arc<AtomicBool>) {
    let mut packet = vec![0u8; MAX_DATAGRAM];
    let mut out = Vec::with_capacity(answer::MAX_UDP_PAYLOAD as usize);
    let mut scratch = Scratch::default();
    while !stop.load(Ordering::Relaxed) {
        let (len, peer) = match socket.recv_from(&mut packet) {
            Ok(received) => received,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => {
                // ICMP errors from earlier sends surface here on Linux; they concern one peer.
                tracing::debug!(error = %e, "udp receive failed");
                continue;
            }
        };
        let snapshot = snapshots.load();
        // A bug in answer building must cost one query, not the worker.
        let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let packet = &packet[..len];
            match tsig::check(&acl.keys, packet) {
                Check::Unsigned => {
                    if !(acl.allows(peer.ip()) && ixfr_over_udp(&snapshot, packet, 0, &mut out)) {
                        answer::respond(&snapshot, packet, Transport::Udp, 0, &mut scratch, &mut out);
                    }
                }
                Check::Valid(mut signer) => {
                    let reserve = signer.reserve();
                    if !ixfr_over_udp(&snapshot, packet, reserve, &mut out) {
                        answer::respond(&snapshot, packet, Transport::Udp, reserve, &mut scratch, &mut out);
                    }
                    if !out.is_empty() {
                        signer.sign(&mut out);
                    }
                }
                Check::Refused(reply) => {
                    out.clear();
                    out.extend_from_slice(&reply);
                }
            }
        }));
        if answered.is_err() {
            tracing::error!(%peer, "answering a query panicked; query dropped");
            scratch = Scratch::default();
            out.clear();
        }
        if !out.is_empty() {
            if let Err(e) = socket.send_to(&out, peer) {
                tracing::debug!(error = %e, %peer, "udp send failed");
            }
        }
    }
}

/// IXFR over UDP from an allowed peer (RFC 1995 §2): the increment itself when the journal
/// has it and it fits one datagram, otherwise the current SOA alone, which says "up to date"
/// to a current client and "come back over TCP" to any other. `false` if not an IXFR.
fn ixfr_over_udp(snapshot: &Snapshot, packet: &[u8], reserve: usize, out: &mut Vec<u8>) -> bool {
    let Ok(query) = wire::parse(packet) else {
        return false;
    };
    if query.qtype != crate::zone::rtype::IXFR
        || !xfr::is_transfer(&query)
        || query.lower_qname() != &snapshot.apex[..]
    {
        return false;
    }
    let limit = query.edns.map_or(wire::MIN_UDP_PAYLOAD, |e| {
        e.udp_size.clamp(wire::MIN_UDP_PAYLOAD, answer::MAX_UDP_PAYLOAD)
    }) as usize;
    let client = xfr::ixfr_client_serial(packet, &query);
    if client
        .is_some_and(|c| !xfr::serial_at_least(c, snapshot.serial) && snapshot.journal.since(c).is_some())
    {
        let mut messages = Vec::new();
        let _ = xfr::transfer::<std::convert::Infallible>(snapshot, &query, client, |m| {
            messages.push(m.to_vec());
            Ok(())
        });
        if let [only] = &messages[..] {
            if only.len() + reserve <= limit {
                out.clear();
                out.extend_from_slice(only);
                return true;
            }
        }
    }
    out.clear();
    let _ = xfr::transfer::<std::convert::Infallible>(snapshot, &query, Some(snapshot.serial), |m| {
        out.extend_from_slice(m);
        Ok(())
    });
    true
}
