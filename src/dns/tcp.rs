//! TCP transport (RFC 1035 §4.2.2, RFC 7766): length-prefixed messages, several queries per
//! connection answered in order, and the limits that keep one client from locking out the rest:
//!
//! - caps on open connections per client and in total ([`crate::edge::Gate`]);
//! - at the total cap, a new connection replaces the one that has waited longest for its next
//!   query (RFC 7766 §6.2.3: close idle connections early under pressure), so idle connections
//!   cannot lock other clients out; only when none is idle is the new one closed;
//! - a message must arrive whole within the I/O deadline once its first byte is in (Knot's
//!   `tcp-io-timeout`), and a connection waits at most [`IDLE_TIMEOUT`] for its next message.
//!
//! What a message gets is decided by [`handler::handle`]; this module writes the reply, or
//! streams the zone transfer the handler hands back, built on a blocking thread.
//!
//! DNS over TLS (RFC 7858) and zone transfers over TLS (RFC 9103) are this same listener with a
//! rustls handshake first: the same limits, pipelining and streamed transfers (which need TLS
//! 1.3). It is ours rather than hickory-server's TLS listener because that one queues a
//! request's messages, at most 32, until the handler returns, so a transfer of any size fails,
//! and it has no per-client limits.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::answer::{Scratch, Transport};
use super::handler::{self, Context, Outcome, TransferJob};
use crate::edge::{Caps, Gate, Refused, Ticket};
use crate::snapshot::SnapshotHandle;

/// A connection with no new query for this long is closed (RFC 7766 §6.2.3 suggests seconds).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// A transfer's chunk must be taken by the reader within this long.
const TRANSFER_WRITE_TIMEOUT: Duration = IDLE_TIMEOUT;
/// A TLS handshake must be done within this long (it holds a connection's place meanwhile).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Transfer messages are written in chunks of about this many bytes...
const TRANSFER_CHUNK: usize = 192 * 1024;
/// ... with at most this many chunks built ahead of the writer.
const TRANSFER_QUEUE: usize = 4;

/// The limits of the TCP listener (`--dns-tcp-*`).
#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    pub connections: Caps,
    /// To receive a whole message once its first byte is in, and to send an answer.
    pub io_timeout: Duration,
}

/// Connections waiting for their next query, in the order they began to wait, each parked
/// with its [`Ticket`]: evicting one frees its place at once.
#[derive(Default)]
struct Idle {
    next: u64,
    waiting: BTreeMap<u64, (Ticket, CancellationToken)>,
}

impl Idle {
    /// Parks a waiting connection; `evicted` fires if it is closed to make room.
    fn park(&mut self, ticket: Ticket, evicted: CancellationToken) -> u64 {
        self.next += 1;
        self.waiting.insert(self.next, (ticket, evicted));
        self.next
    }

    /// The ticket back, unless the connection was evicted meanwhile.
    fn resume(&mut self, parked: u64) -> Option<Ticket> {
        self.waiting.remove(&parked).map(|(ticket, _)| ticket)
    }

    /// Closes the connection that has waited longest; false if none is waiting.
    fn evict_oldest(&mut self) -> bool {
        let Some((_, (ticket, evicted))) = self.waiting.pop_first() else {
            return false;
        };
        evicted.cancel();
        drop(ticket);
        true
    }
}

/// What every connection task shares.
struct Shared {
    snapshots: SnapshotHandle,
    context: Arc<Context>,
    idle: Mutex<Idle>,
    io_timeout: Duration,
}

impl Shared {
    /// The idle list; it holds only tickets and tokens, so a panic cannot leave it inconsistent.
    fn idle(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Binds the listener like the UDP sockets: IPv6 addresses serve IPv6 only.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Accepts connections until `cancel` fires; with `tls`, each begins with its handshake.
pub async fn serve(
    listener: TcpListener,
    snapshots: SnapshotHandle,
    context: Arc<Context>,
    limits: TcpLimits,
    tls: Option<TlsAcceptor>,
    cancel: CancellationToken,
) {
    let gate = Gate::new(limits.connections);
    let shared = Arc::new(Shared {
        snapshots,
        context,
        idle: Mutex::default(),
        io_timeout: limits.io_timeout,
    });
    let what = if tls.is_some() {
        "DNS over TLS"
    } else {
        "DNS over TCP"
    };
    while let Some((stream, peer)) = crate::edge::accept(&listener, &cancel, what).await {
        let admitted = match gate.admit(peer.ip()) {
            Err(Refused::Full) if shared.idle().evict_oldest() => gate.admit(peer.ip()),
            admitted => admitted,
        };
        let ticket = match admitted {
            Ok(ticket) => ticket,
            Err(refused) => {
                tracing::debug!(%peer, ?refused, "tcp connection refused");
                continue;
            }
        };
        let (shared, cancel, tls) = (shared.clone(), cancel.clone(), tls.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                result = open(stream, peer, &shared, ticket, tls) => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, %peer, "tcp connection ended");
                    }
                }
            }
        });
    }
}

/// Serves an accepted connection, after its TLS handshake with `tls`.
async fn open(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    shared: &Shared,
    ticket: Ticket,
    tls: Option<TlsAcceptor>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let Some(acceptor) = tls else {
        return connection(stream, Transport::Tcp, peer, shared, ticket).await;
    };
    let stream = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let tls13 = stream.get_ref().1.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
    connection(stream, Transport::Tls { tls13 }, peer, shared, ticket).await
}

/// Streams the zone transfer `job`.
async fn transfer<S: AsyncWrite + Unpin>(
    job: TransferJob,
    transport: Transport,
    peer: std::net::SocketAddr,
    metrics: &crate::metrics::Metrics,
    stream: &mut S,
) -> std::io::Result<()> {
    let started = std::time::Instant::now();
    let kind = job.kind();
    let serial = job.snapshot.serial;
    let signed = job.signer.is_some();

    // The messages are built on a blocking thread and streamed through a short queue, so a
    // large zone never sits in memory whole and a slow reader slows the builder down.
    let (chunks_tx, mut chunks) = tokio::sync::mpsc::channel::<Vec<u8>>(TRANSFER_QUEUE);
    let producer = tokio::task::spawn_blocking(move || {
        let mut framed = Vec::with_capacity(TRANSFER_CHUNK + 65536);
        let sent = job.run(|message| {
            framed.extend_from_slice(&(message.len() as u16).to_be_bytes());
            framed.extend_from_slice(message);
            if framed.len() < TRANSFER_CHUNK {
                return Ok(());
            }
            let full = std::mem::replace(&mut framed, Vec::with_capacity(TRANSFER_CHUNK + 65536));
            chunks_tx.blocking_send(full).map_err(|_| ())
        });
        match sent {
            Ok(records) if chunks_tx.blocking_send(framed).is_ok() => records,
            _ => 0, // The connection went away.
        }
    });
    let mut bytes = 0usize;
    let tls = transport != Transport::Tcp;
    while let Some(chunk) = chunks.recv().await {
        bytes += chunk.len();
        if let Err(e) = write_timed(stream, &chunk, TRANSFER_WRITE_TIMEOUT).await {
            metrics.transfer(peer.ip(), kind, tls, serial, false);
            return Err(e);
        }
    }
    let records = producer.await.unwrap_or(0);
    metrics.transfer(peer.ip(), kind, tls, serial, records > 0);
    tracing::info!(
        serial,
        records,
        bytes,
        signed,
        ms = started.elapsed().as_secs_f64() * 1e3,
        kind,
        transport = if tls { "tls" } else { "tcp" },
        "zone transfer served"
    );
    Ok(())
}

/// Serves one connection: wait for a message, answer it, repeat until EOF, the idle timeout,
/// or eviction. `ticket` is the connection's place, parked in the idle list while it waits.
async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    transport: Transport,
    peer: std::net::SocketAddr,
    shared: &Shared,
    mut ticket: Ticket,
) -> std::io::Result<()> {
    let evicted = CancellationToken::new();
    let mut packet = Vec::new();
    let mut out = Vec::new();
    let mut frame = Vec::new();
    let mut scratch = Scratch::default();
    loop {
        let parked = shared.idle().park(ticket, evicted.clone());
        let first = tokio::select! {
            () = evicted.cancelled() => return Ok(()),
            first = tokio::time::timeout(IDLE_TIMEOUT, stream.read_u8()) => first,
        };
        // Evicted between the byte and here: the place is gone, so is the connection.
        let Some(resumed) = shared.idle().resume(parked) else {
            return Ok(());
        };
        ticket = resumed;
        let first = match first {
            Err(_) => return Ok(()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(first) => first?,
        };
        tokio::time::timeout(shared.io_timeout, async {
            let second = stream.read_u8().await?;
            packet.resize(usize::from(u16::from_be_bytes([first, second])), 0);
            stream.read_exact(&mut packet).await
        })
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let outcome = {
            let snapshot = shared.snapshots.load();
            handler::handle(
                &packet,
                peer.ip(),
                transport,
                &snapshot,
                &shared.context,
                &mut scratch,
                shared.context.counters.shared(),
                &mut out,
            )
        };
        match outcome {
            Outcome::Reply => write_frame(&mut stream, &mut frame, &out, shared.io_timeout).await?,
            // Not a query (a response, or shorter than a header): nothing sane to say.
            Outcome::Drop => return Ok(()),
            Outcome::Transfer(job) => {
                transfer(*job, transport, peer, &shared.context.metrics, &mut stream).await?;
            }
        }
    }
}

/// Writes one length-prefixed message with a single write.
async fn write_frame<S: AsyncWrite + Unpin>(
    stream: &mut S,
    frame: &mut Vec<u8>,
    message: &[u8],
    timeout: Duration,
) -> std::io::Result<()> {
    frame.clear();
    frame.extend_from_slice(&(message.len() as u16).to_be_bytes());
    frame.extend_from_slice(message);
    write_timed(stream, frame, timeout).await
}

/// Writes and flushes (TLS holds records back until then) within `timeout`: a client that
/// stops reading loses its connection instead of holding a place (and, for a transfer, a
/// builder thread and a snapshot) for ever.
async fn write_timed<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    timeout: Duration,
) -> std::io::Result<()> {
    tokio::time::timeout(timeout, async {
        stream.write_all(bytes).await?;
        stream.flush().await
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}
