//! The API's connection loop: HTTP/1.1 on hyper, with the limits a public listener needs.
//!
//! - a connection over the total cap is answered `503`, one over its client's cap `429`
//!   (Consul's `http_max_conns_per_client` is the model), both written at once without waiting
//!   for the request; the connection then lingers up to a second, reading and dropping what
//!   the client sends, so that it reads the refusal instead of a reset (at most
//!   [`LINGERING`] at a time, so refusing stays cheap under a flood);
//! - request headers must arrive within the header deadline, which also bounds how long a
//!   kept-alive connection may sit idle, so trickling a byte a second holds nothing for long;
//! - on shutdown, idle connections close at once and busy ones after their response.
//!
//! What a request may do once its headers are in (size, concurrency, duration) is the router's
//! business ([`super::router`]).

use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::edge::{Caps, Gate, Refused};

/// Refused connections that may linger at once; beyond this they are closed at once.
const LINGERING: usize = 64;
/// How long a refused connection lingers.
const LINGER: Duration = Duration::from_secs(1);

/// The limits of one HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connections: Caps,
    /// How long a client has to send a request's headers, idle time before them included.
    pub header_timeout: Duration,
}

/// Serves `app` on `listener` until `cancel` fires, then waits for open connections to finish.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, cancel: CancellationToken) {
    let gate = Gate::new(limits.connections);
    let lingering = std::sync::Arc::new(tokio::sync::Semaphore::new(LINGERING));
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    while let Some((stream, peer)) = crate::edge::accept(&listener, &cancel, "API").await {
        let ticket = match gate.admit(peer.ip()) {
            Ok(ticket) => ticket,
            Err(refused) => {
                tracing::debug!(%peer, ?refused, "API connection refused");
                refuse(stream, refused, gate.caps(), &lingering);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, %peer, "API connection ended");
            }
            drop(ticket);
        });
    }
    graceful.shutdown().await;
}

/// Writes the refusal in one non-blocking write (the socket's send buffer is empty, so it
/// fits), then lets the connection linger: the write side is shut (the client sees the end of
/// the response) and what the client sends is read and dropped for up to [`LINGER`], because
/// closing on unread bytes would reset the connection and could discard the answer.
fn refuse(
    stream: TcpStream,
    refused: Refused,
    caps: Caps,
    lingering: &std::sync::Arc<tokio::sync::Semaphore>,
) {
    let (status, code, message) = match refused {
        Refused::Full => (
            "503 Service Unavailable",
            "too_many_connections",
            format!(
                "the API holds its limit of {} connections; retry shortly",
                caps.total
            ),
        ),
        Refused::Client => (
            "429 Too Many Requests",
            "too_many_connections_from_client",
            format!(
                "this address holds the limit of {} connections per client; reuse or close some",
                caps.per_client
            ),
        ),
    };
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    if stream.try_write(response.as_bytes()).is_err() {
        return;
    }
    let Ok(permit) = lingering.clone().try_acquire_owned() else {
        return; // Too many lingering already: close now.
    };
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = stream;
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(LINGER, async {
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
        drop(permit);
    });
}
