//! TCP transport (RFC 1035 §4.2.2, RFC 7766): length-prefixed messages, several queries per
//! connection answered in order, an idle timeout, and a bound on open connections.
//!
//! What a message gets is decided by [`handler::handle`]; this module writes the reply, or
//! streams the zone transfer the handler hands back, built on a blocking thread.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::answer::{Scratch, Transport};
use super::handler::{self, Outcome, TransferJob};
use super::xfr::TransferAcl;
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

/// Streams the zone transfer `job`.
async fn transfer(job: TransferJob, stream: &mut TcpStream) -> std::io::Result<()> {
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
    Ok(())
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
        let outcome = {
            let snapshot = snapshots.load();
            handler::handle(
                &packet,
                peer.ip(),
                Transport::Tcp,
                &snapshot,
                &acl,
                &mut scratch,
                &mut out,
            )
        };
        match outcome {
            Outcome::Reply => write_frame(&mut stream, &mut frame, &out).await?,
            // Not a query (a response, or shorter than a header): nothing sane to say.
            Outcome::Drop => return Ok(()),
            Outcome::Transfer(job) => transfer(*job, &mut stream).await?,
        }
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
