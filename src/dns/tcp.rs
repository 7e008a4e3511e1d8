//! TCP transport (RFC 1035 §4.2.2, RFC 7766): length-prefixed messages, several queries per
//! connection answered in order, an idle timeout, and a bound on open connections.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::answer::{self, Scratch, Transport};
use crate::snapshot::SnapshotHandle;

/// A connection with no new query for this long is closed (RFC 7766 §6.2.3 suggests seconds).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
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
pub async fn serve(listener: TcpListener, snapshots: SnapshotHandle, cancel: CancellationToken) {
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
        tokio::spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                result = connection(stream, snapshots) => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, %peer, "tcp connection ended");
                    }
                }
            }
            drop(slot);
        });
    }
}

/// Serves one connection: read a message, answer it, repeat until EOF or idle timeout.
async fn connection(mut stream: TcpStream, snapshots: SnapshotHandle) -> std::io::Result<()> {
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
        {
            let snapshot = snapshots.load();
            answer::respond(&snapshot, &packet, Transport::Tcp, &mut scratch, &mut out);
        }
        if out.is_empty() {
            // Not a query (a response, or shorter than a header): nothing sane to say.
            return Ok(());
        }
        frame.clear();
        frame.extend_from_slice(&(out.len() as u16).to_be_bytes());
        frame.extend_from_slice(&out);
        stream.write_all(&frame).await?;
    }
}
