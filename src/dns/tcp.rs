//! TCP transport (RFC 1035 §4.2.2, RFC 7766): length-prefixed messages, several queries per
//! connection answered in order, an idle timeout, and a bound on open connections.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::answer::{self, Scratch, Transport};
use super::tsig::{self, Check};
use super::wire;
use super::xfr::{self, TransferAcl};
use crate::snapshot::SnapshotHandle;

/// A connection with no new query for this long is closed (RFC 7766 §6.2.3 suggests seconds).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Transfer messages are written in chunks of about this many bytes...
const TRANSFER_CHUNK: usize = 192 * 1024;
/// ... with at most this many chunks built ahead of the writer.
const TRANSFER_QUEUE: usize = 4;
/// Open connections beyond this are closed at once, so a flood cannot exhaust memory.
const MAX_CONNECTIONS: usize = 1024;

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

/// Accepts connections until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    snapshots: SnapshotHandle,
    acl: Arc<TransferAcl>,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "too many tcp connections; closing");
            continue;
        };
        let snapshots = snapshots.clone();
        let cancel = cancel.clone();
        let acl = acl.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                result = connection(stream, peer, snapshots, acl) => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, %peer, "tcp connection ended");
                    }
                }
            }
            drop(slot);
        });
    }
}

/// Streams a zone transfer if `packet` asks for one of the zone; `false` if it does not.
async fn transfer(
    packet: &[u8],
    snapshots: &SnapshotHandle,
    signer: Option<tsig::Signer>,
    stream: &mut TcpStream,
) -> std::io::Result<bool> {
    let Ok(query) = wire::parse(packet) else {
        return Ok(false);
    };
    let snapshot = snapshots.load_full();
    if !xfr::is_transfer(&query) || query.lower_qname() != &snapshot.apex[..] {
        return Ok(false);
    }
    let started = std::time::Instant::now();
    let client_serial = xfr::ixfr_client_serial(packet, &query);
    let kind = match (query.qtype, client_serial) {
        (crate::zone::rtype::IXFR, Some(c)) if xfr::serial_at_least(c, snapshot.serial) => {
            "IXFR (up to date)"
        }
        (crate::zone::rtype::IXFR, Some(c)) if snapshot.journal.since(c).is_some() => "IXFR",
        (crate::zone::rtype::IXFR, _) => "IXFR (whole zone)",
        _ => "AXFR",
    };
    let serial = snapshot.serial;
    let signed = signer.is_some();

    // The messages are built on a blocking thread and streamed through a short queue, so a
    // large zone never sits in memory whole and a slow reader slows the builder down.
    let (chunks_tx, mut chunks) = tokio::sync::mpsc::channel::<Vec<u8>>(TRANSFER_QUEUE);
    let packet = packet.to_vec();
    let producer = tokio::task::spawn_blocking(move || {
        let Ok(query) = wire::parse(&packet) else {
            return 0;
        };
        let mut signer = signer;
        let mut framed = Vec::with_capacity(TRANSFER_CHUNK + 65536);
        let mut signed = Vec::new();
        let sent = xfr::transfer(&snapshot, &query, client_serial, |message| {
            let message = match signer.as_mut() {
                Some(signer) => {
                    signed.clear();
                    signed.extend_from_slice(message);
                    signer.sign(&mut signed);
                    &signed[..]
                }
                None => message,
            };
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
    while let Some(chunk) = chunks.recv().await {
        bytes += chunk.len();
        write_timed(stream, &chunk).await?;
    }
    let records = producer.await.unwrap_or(0);
    tracing::info!(
        serial,
        records,
        bytes,
        signed,
        ms = started.elapsed().as_secs_f64() * 1e3,
        kind,
        "zone transfer served"
    );
    Ok(true)
}

/// Serves one connection: read a message, answer it, repeat until EOF or idle timeout.
async fn connection(
    mut stream: TcpStream,
    peer: std::net::SocketAddr,
    snapshots: SnapshotHandle,
    acl: Arc<TransferAcl>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut packet = Vec::new();
    let mut out = Vec::new();
    let mut frame = Vec::new();
    let mut scratch = Scratch::default();
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(IDLE_TIMEOUT, stream.read_exact(&mut len)).await {
            Err(_) => return Ok(()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(result) => result?,
        };
        packet.resize(u16::from_be_bytes(len) as usize, 0);
        tokio::time::timeout(IDLE_TIMEOUT, stream.read_exact(&mut packet))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let mut signer = match tsig::check(&acl.keys, &packet) {
            Check::Unsigned => None,
            Check::Valid(signer) => Some(signer),
            Check::Refused(reply) => {
                write_frame(&mut stream, &mut frame, &reply).await?;
                continue;
            }
        };
        // A valid signature allows a transfer from anywhere; otherwise the address must match.
        let may_transfer = signer.is_some() || acl.allows(peer.ip());
        if may_transfer && transfer(&packet, &snapshots, signer.clone(), &mut stream).await? {
            continue;
        }
        {
            let snapshot = snapshots.load();
            let reserve = signer.as_ref().map_or(0, tsig::Signer::reserve);
            answer::respond(
                &snapshot,
                &packet,
                Transport::Tcp,
                reserve,
                &mut scratch,
                &mut out,
            );
        }
        if out.is_empty() {
            // Not a query (a response, or shorter than a header): nothing sane to say.
            return Ok(());
        }
        if let Some(signer) = signer.as_mut() {
            signer.sign(&mut out);
        }
        write_frame(&mut stream, &mut frame, &out).await?;
    }
}

/// Writes one length-prefixed message with a single write.
async fn write_frame(stream: &mut TcpStream, frame: &mut Vec<u8>, message: &[u8]) -> std::io::Result<()> {
    frame.clear();
    frame.extend_from_slice(&(message.len() as u16).to_be_bytes());
    frame.extend_from_slice(message);
    write_timed(stream, frame).await
}

/// Writes with the idle timeout: a client that stops reading loses its connection instead
/// of holding a slot (and, for a transfer, a builder thread and a snapshot) for ever.
async fn write_timed(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    tokio::time::timeout(IDLE_TIMEOUT, stream.write_all(bytes))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}
