//! UDP transport: one blocking socket per worker thread, all bound to the same port with
//! `SO_REUSEPORT` so the kernel spreads queries over the workers.
//!
//! Blocking I/O on dedicated threads is the shortest path from packet to answer: no reactor,
//! no task wake-ups, one `recv_from` and one `send_to` per query, buffers reused. A short
//! receive timeout lets each worker notice shutdown. What a datagram gets is decided by
//! [`handler::handle`]; this module only moves bytes.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use super::answer::{self, Scratch, Transport};
use super::handler::{self, Context, Outcome};
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
/// `worker` numbers the thread, for its counters' shard.
pub fn serve(
    socket: UdpSocket,
    worker: usize,
    snapshots: SnapshotHandle,
    context: Arc<Context>,
    stop: Arc<AtomicBool>,
) {
    let shard = context.counters.udp(worker);
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
        let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            handler::handle(
                &packet[..len],
                peer.ip(),
                Transport::Udp,
                &snapshot,
                &context,
                &mut scratch,
                shard,
                &mut out,
            )
        }));
        match handled {
            Ok(Outcome::Reply) => {
                if let Err(e) = socket.send_to(&out, peer) {
                    tracing::debug!(error = %e, %peer, "udp send failed");
                }
            }
            // Transfers are only ever streamed over TCP.
            Ok(Outcome::Drop | Outcome::Transfer(_)) => {}
            Err(_) => {
                tracing::error!(%peer, "answering a query panicked; query dropped");
                scratch = Scratch::default();
                out.clear();
            }
        }
    }
}
