//! The authoritative DNS server: transports, query parsing and answer building.
//!
//! The only module that knows the DNS wire format or imports hickory (for the zone file, and
//! hickory-server for the DoQ listener).
//! It reads the published [`Snapshot`](crate::snapshot::Snapshot) and nothing else: it never
//! touches the store and never waits for a writer.
//!
//! ```text
//!  UDP worker threads (SO_REUSEPORT)        TCP and DoT tasks (tokio)
//!     recv_from                               read length + message
//!         |                                        |      DoH (hyper), DoQ (hickory-server):
//!         |                                        |      handler::handle_message, one reply
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
mod doh;
pub mod handler;
mod hickory;
pub mod lookup;
pub mod notify;
pub mod rrl;
pub mod stats;
mod tcp;
pub mod tls;
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

use tokio_rustls::TlsAcceptor;
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
    #[error("cannot bind DNS over TLS on {addr}: {source}")]
    BindDot {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot bind DNS over HTTPS on {addr}: {source}")]
    BindDoh {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot bind DNS over QUIC on {addr}: {source}")]
    BindDoq {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start a UDP worker thread: {0}")]
    Thread(std::io::Error),
}

/// The encrypted listeners asked for (`--dot`, `--doh`, `--doq`) and the certificate they
/// present; none without a certificate.
pub struct Encrypted {
    pub dot: Option<SocketAddr>,
    pub doh: Option<SocketAddr>,
    pub doq: Option<SocketAddr>,
    /// The DoT and DoH listeners' connection caps, each (DoQ has hickory's own).
    pub connections: crate::edge::Caps,
    pub certificates: Option<Arc<tls::Certificates>>,
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
    /// Appends the answer path's counters, and rate limiting's if it is on, in Prometheus text
    /// format.
    pub fn render(&self, out: &mut String) {
        self.0.counters.render(out);
        if let Some(rrl) = &self.0.rrl {
            let slipped = rrl.counters.slipped.load(Ordering::Relaxed);
            let dropped = rrl.counters.dropped.load(Ordering::Relaxed);
            out.push_str(&format!(
                "# HELP stackdns_rrl_responses_total UDP responses held back by response rate limiting.\n\
                 # TYPE stackdns_rrl_responses_total counter\n\
                 stackdns_rrl_responses_total{{action=\"slipped\"}} {slipped}\n\
                 stackdns_rrl_responses_total{{action=\"dropped\"}} {dropped}\n"
            ));
        }
    }
}

/// Running listeners. Dropping it does not stop them: call [`DnsServer::stop`].
pub struct DnsServer {
    /// The bound address (UDP and TCP share the port).
    pub addr: SocketAddr,
    /// The bound DoT, DoH and DoQ addresses, if they were asked for.
    pub dot: Option<SocketAddr>,
    pub doh: Option<SocketAddr>,
    pub doq: Option<SocketAddr>,
    pub stats: DnsStats,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    tcp: tokio::task::JoinHandle<()>,
    /// The DoT and DoH accept loops.
    stream_tasks: Vec<tokio::task::JoinHandle<()>>,
    doq_listener: Option<hickory::Doq>,
}

impl DnsServer {
    /// Binds UDP and TCP on `addr` (port 0 picks a free port, the same for both) and starts
    /// `udp_workers` UDP threads and the TCP accept loop, then the `encrypted` listeners.
    pub async fn start(
        addr: SocketAddr,
        udp_workers: usize,
        snapshots: SnapshotHandle,
        context: handler::Context,
        tcp_limits: TcpLimits,
        encrypted: Encrypted,
        cancel: CancellationToken,
    ) -> Result<Self, DnsError> {
        let (sockets, listener) = bind(addr, udp_workers)?;
        let context = Arc::new(handler::Context {
            counters: stats::DnsCounters::new(sockets.len()),
            ..context
        });
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
                    move || udp::serve(socket, i, snapshots, context, stop)
                })
                .map_err(DnsError::Thread)?;
            workers.push(worker);
        }
        let stats = DnsStats(context.clone());
        let (mut dot, mut doh, mut stream_tasks, mut doq_listener) = (None, None, Vec::new(), None);
        if let Some(certificates) = &encrypted.certificates {
            if let Some(addr) = encrypted.dot {
                let error = |source| DnsError::BindDot { addr, source };
                let listener = tcp::bind(addr).map_err(error)?;
                dot = Some(listener.local_addr().map_err(error)?);
                let acceptor = TlsAcceptor::from(Arc::new(certificates.server_config(&[tls::ALPN_DOT])));
                let limits = TcpLimits {
                    connections: encrypted.connections,
                    ..tcp_limits
                };
                stream_tasks.push(tokio::spawn(tcp::serve(
                    listener,
                    snapshots.clone(),
                    context.clone(),
                    limits,
                    Some(acceptor),
                    cancel.clone(),
                )));
            }
            if let Some(addr) = encrypted.doh {
                let error = |source| DnsError::BindDoh { addr, source };
                let listener = tcp::bind(addr).map_err(error)?;
                doh = Some(listener.local_addr().map_err(error)?);
                let acceptor = TlsAcceptor::from(Arc::new(certificates.server_config(&doh::ALPN)));
                stream_tasks.push(tokio::spawn(doh::serve(
                    listener,
                    acceptor,
                    snapshots.clone(),
                    context.clone(),
                    encrypted.connections,
                    cancel.clone(),
                )));
            }
            if let Some(addr) = encrypted.doq {
                let listener = hickory::Doq::start(addr, certificates, snapshots.clone(), context.clone())
                    .await
                    .map_err(|source| DnsError::BindDoq { addr, source })?;
                doq_listener = Some(listener);
            }
        }
        let tcp = tokio::spawn(tcp::serve(listener, snapshots, context, tcp_limits, None, cancel));
        Ok(Self {
            addr: bound,
            dot,
            doh,
            doq: doq_listener.as_ref().map(|d| d.addr),
            stats,
            stop,
            workers,
            tcp,
            stream_tasks,
            doq_listener,
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
        for task in self.stream_tasks {
            let _ = task.await;
        }
        if let Some(doq) = self.doq_listener {
            doq.stop().await;
        }
    }
}
