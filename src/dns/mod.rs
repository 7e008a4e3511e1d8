//! The authoritative DNS server: transports, query parsing and answer building.
//!
//! The only module that knows the DNS wire format or imports hickory (for the zone file).
//! It reads the published [`Snapshot`](crate::snapshot::Snapshot) and nothing else: it never
//! touches the store and never waits for a writer.
//!
//! ```text
//!  UDP worker threads (SO_REUSEPORT)        TCP tasks (tokio)
//!     recv_from                               read length + message
//!         |                                        |
//!         +--> handler::handle(packet, peer, transport, &snapshot, ..) <--+
//!                 |  wire::parse (once): header, question, OPT, where a TSIG sits
//!                 |  unknown opcode -> NOTIMP | unreadable -> FORMERR | response -> drop
//!                 |  tsig::check (from the parsed offset) -> BADKEY/BADSIG/BADTIME
//!                 |  allowed transfer -> TCP: Transfer(job)  UDP IXFR: xfr::transfer
//!                 |  otherwise answer::answer(&snapshot, &query, ..), signed if signed
//!                 v                     ^
//!   Outcome::Reply -> send_to / write   SnapshotHandle::load() (one atomic load per query)
//!   Outcome::Drop  -> nothing / close
//!   Outcome::Transfer(job) -> TCP streams job.run(..) from a blocking builder
//! ```

pub mod answer;
pub mod cookie;
pub mod handler;
pub mod lookup;
pub mod notify;
pub mod rrl;
mod tcp;
pub mod tsig;
mod udp;
pub mod wire;
pub mod xfr;
pub mod zonefile;

pub use tcp::TcpLimits;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use tokio_util::sync::CancellationToken;

use crate::snapshot::SnapshotHandle;

/// Why the DNS listeners could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot bind DNS UDP sockets on {addr}: {source}")]
    BindUdp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot bind DNS TCP listener on {addr}: {source}")]
    BindTcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start a UDP worker thread: {0}")]
    Thread(std::io::Error),
}

/// Seconds since the Unix epoch, for TSIG's time check and the cookies' timestamps.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How many ports to try when asked for port 0 and the UDP port's TCP twin is taken.
const PORT_ATTEMPTS: usize = 32;

/// Binds UDP and TCP on the same port. With port 0 the kernel picks a free UDP port, whose TCP
/// twin may be in use: then another port is tried.
fn bind(
    addr: SocketAddr,
    udp_workers: usize,
) -> Result<(Vec<std::net::UdpSocket>, tokio::net::TcpListener), DnsError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let sockets = udp::bind(addr, udp_workers).map_err(|source| DnsError::BindUdp { addr, source })?;
        let bound = sockets.first().and_then(|s| s.local_addr().ok()).unwrap_or(addr);
        match tcp::bind(bound) {
            Ok(listener) => return Ok((sockets, listener)),
            Err(e)
                if addr.port() == 0
                    && attempt < PORT_ATTEMPTS
                    && e.kind() == std::io::ErrorKind::AddrInUse => {}
            Err(source) => return Err(DnsError::BindTcp { addr: bound, source }),
        }
    }
}

/// What the DNS listeners count, for `/metrics`.
#[derive(Clone)]
pub struct DnsStats(Arc<handler::Context>);

impl DnsStats {
    /// Responses rate limiting slipped (sent truncated, or BADCOOKIE) and dropped, if it is on.
    pub fn rrl(&self) -> Option<(u64, u64)> {
        self.0.rrl.as_ref().map(|rrl| {
            (
                rrl.counters.slipped.load(Ordering::Relaxed),
                rrl.counters.dropped.load(Ordering::Relaxed),
            )
        })
    }
}

/// Running listeners. Dropping it does not stop them: call [`DnsServer::stop`].
pub struct DnsServer {
    /// The bound address (UDP and TCP share the port).
    pub addr: SocketAddr,
    pub stats: DnsStats,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    tcp: tokio::task::JoinHandle<()>,
}

impl DnsServer {
    /// Binds UDP and TCP on `addr` (port 0 picks a free port, the same for both) and starts
    /// `udp_workers` UDP threads and the TCP accept loop.
    pub async fn start(
        addr: SocketAddr,
        udp_workers: usize,
        snapshots: SnapshotHandle,
        context: handler::Context,
        tcp_limits: TcpLimits,
        cancel: CancellationToken,
    ) -> Result<Self, DnsError> {
        let context = Arc::new(context);
        let (sockets, listener) = bind(addr, udp_workers)?;
        let bound = listener
            .local_addr()
            .map_err(|source| DnsError::BindTcp { addr, source })?;

        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::with_capacity(sockets.len());
        for (i, socket) in sockets.into_iter().enumerate() {
            let (snapshots, stop) = (snapshots.clone(), stop.clone());
            let worker = std::thread::Builder::new()
                .name(format!("dns-udp-{i}"))
                .spawn({
                    let context = context.clone();
                    move || udp::serve(socket, snapshots, context, stop)
                })
                .map_err(DnsError::Thread)?;
            workers.push(worker);
        }
        let stats = DnsStats(context.clone());
        let tcp = tokio::spawn(tcp::serve(listener, snapshots, context, tcp_limits, cancel));
        Ok(Self {
            addr: bound,
            stats,
            stop,
            workers,
            tcp,
        })
    }

    /// Stops the UDP workers and waits for them and the TCP loop (cancel its token first).
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let workers = self.workers;
        let _ = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        })
        .await;
        let _ = self.tcp.await;
    }
}
