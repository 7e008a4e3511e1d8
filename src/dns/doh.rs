//! DNS over HTTPS (RFC 8484): `GET /dns-query?dns=<base64url>` and `POST /dns-query` with an
//! `application/dns-message` body, over HTTP/2 (and HTTP/1.1 for simple clients) on TLS.
//!
//! Every message goes to [`handler::handle_message`] as it came and its reply goes back as it
//! was written, so DoH answers byte for byte what TCP answers (a signed reply included); zone
//! transfers are refused here (one response per request). A response may be cached for its
//! smallest record TTL (RFC 8484 §5.1). Connections count against the DNS TCP caps.
//!
//! hickory-server has a DoH listener, but 0.26.3's answers every GET with an error ("GET
//! unimplemented"), and RFC 8484 §4.1 says a server must implement both methods.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::answer::Scratch;
use super::handler::{self, Context, Single};
use super::stats::Channel;
use super::wire;
use crate::edge::{Caps, Gate};
use crate::snapshot::SnapshotHandle;

/// The path of the DoH endpoint (RFC 8484 leaves it to the server; clients default to this).
pub const PATH: &str = "/dns-query";
/// The media type of a DNS message (RFC 8484 §6).
const DNS_MESSAGE: &str = "application/dns-message";
/// ALPN: HTTP/2, and HTTP/1.1 for clients without it.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// Requests a connection may have in flight at once (HTTP/2 streams).
const MAX_STREAMS: u32 = 100;
/// A connection with no request in flight for this long is closed (one that never sends a
/// request included); also the time for a handshake, a request's headers and a POST body.
const IDLE_TIMEOUT: Duration = super::tcp::IDLE_TIMEOUT;

/// What every connection shares.
struct Shared {
    snapshots: SnapshotHandle,
    context: Arc<Context>,
}

/// Accepts DoH connections until `cancel` fires, then lets open ones finish their requests
/// (for at most [`IDLE_TIMEOUT`]).
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    snapshots: SnapshotHandle,
    context: Arc<Context>,
    caps: Caps,
    cancel: CancellationToken,
) {
    let gate = Gate::new(caps);
    let shared = Arc::new(Shared { snapshots, context });
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(IDLE_TIMEOUT);
    http.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        // Pings find peers that went away; the idle check closes the ones that stay silent.
        .keep_alive_interval(Some(IDLE_TIMEOUT))
        .keep_alive_timeout(Duration::from_secs(5));
    let connections = TaskTracker::new();
    while let Some((stream, peer)) = crate::edge::accept(&listener, &cancel, "DNS over HTTPS").await {
        let Ok(ticket) = gate.admit(peer.ip()) else {
            tracing::debug!(%peer, "DoH connection refused: over the connection caps");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, shared, http, cancel) =
            (acceptor.clone(), shared.clone(), http.clone(), cancel.clone());
        connections.spawn(async move {
            let Ok(Ok(stream)) = tokio::time::timeout(IDLE_TIMEOUT, acceptor.accept(stream)).await else {
                tracing::debug!(%peer, "DoH TLS handshake failed or timed out");
                return;
            };
            let activity = Arc::new(Activity::new());
            let service = hyper::service::service_fn({
                let activity = activity.clone();
                move |request| {
                    let (shared, busy) = (shared.clone(), activity.begin());
                    async move {
                        let response = respond(request, peer, &shared).await;
                        drop(busy);
                        Ok::<_, std::convert::Infallible>(response)
                    }
                }
            });
            let connection = http.serve_connection(TokioIo::new(stream), service).into_owned();
            if let Err(e) = until_idle(connection, &activity, &cancel).await {
                tracing::debug!(error = %e, %peer, "DoH connection ended");
            }
            drop(ticket);
        });
    }
    connections.close();
    connections.wait().await;
}

/// When a connection last had a request in flight.
struct Activity {
    in_flight: AtomicUsize,
    since: Instant,
    /// Milliseconds after `since` when the last request ended.
    last: AtomicU64,
}

/// A request in flight: the connection is busy until it is dropped.
struct Busy(Arc<Activity>);

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            since: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// How long the connection has had no request in flight (zero while it has one).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.since.elapsed().saturating_sub(last)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let now = u64::try_from(self.0.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last.store(now, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `connection` until it ends, or until it has had no request for [`IDLE_TIMEOUT`] (a
/// client that never sends one included) or `cancel` fires: then it is asked to finish what it
/// has, and dropped if that takes another [`IDLE_TIMEOUT`] (a client that stops reading).
async fn until_idle<C, E>(connection: C, activity: &Activity, cancel: &CancellationToken) -> Result<(), E>
where
    C: std::future::Future<Output = Result<(), E>> + Closable,
{
    let mut connection = std::pin::pin!(connection);
    let mut tick = tokio::time::interval(IDLE_TIMEOUT / 4);
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            result = connection.as_mut() => return result,
            () = cancel.cancelled(), if closing.is_none() => {
                connection.as_mut().close();
                closing = Some(Instant::now());
            }
            _ = tick.tick() => match closing {
                Some(since) if since.elapsed() >= IDLE_TIMEOUT => return Ok(()),
                Some(_) => {}
                None if activity.idle_for() >= IDLE_TIMEOUT => {
                    connection.as_mut().close();
                    closing = Some(Instant::now());
                }
                None => {}
            },
        }
    }
}

/// A connection that can be asked to finish its requests and close.
trait Closable {
    fn close(self: std::pin::Pin<&mut Self>);
}

impl<I, S, E, B> Closable for auto::Connection<'static, I, S, E>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper_util::server::conn::auto::HttpServerConnExec<S::Future, B>,
{
    fn close(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Answers one HTTP request.
async fn respond(request: Request<Incoming>, peer: SocketAddr, shared: &Shared) -> Response<Full<Bytes>> {
    if request.uri().path() != PATH {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: DNS over HTTPS is at /dns-query\n",
        );
    }
    let packet = match *request.method() {
        Method::GET => match query_message(request.uri().query()) {
            Ok(packet) => packet,
            Err(why) => return plain(StatusCode::BAD_REQUEST, why),
        },
        Method::POST => {
            let content_type = request.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
            if content_type.is_none_or(|t| !t.eq_ignore_ascii_case(DNS_MESSAGE)) {
                return plain(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "a POST body must be Content-Type: application/dns-message\n",
                );
            }
            let body = Limited::new(request.into_body(), usize::from(u16::MAX));
            match tokio::time::timeout(IDLE_TIMEOUT, body.collect()).await {
                Err(_) => return plain(StatusCode::REQUEST_TIMEOUT, "the body did not arrive in time\n"),
                Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                    return plain(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "a DNS message is at most 65535 bytes\n",
                    );
                }
                Ok(Err(_)) => return plain(StatusCode::BAD_REQUEST, "the body could not be read\n"),
                Ok(Ok(body)) => body.to_bytes().to_vec(),
            }
        }
        _ => {
            let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST\n");
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, POST"));
            return response;
        }
    };
    let mut out = Vec::new();
    let single = {
        let snapshot = shared.snapshots.load();
        handler::handle_message(
            &packet,
            peer.ip(),
            Channel::Https,
            &snapshot,
            &shared.context,
            &mut Scratch::default(),
            shared.context.counters.shared(),
            &mut out,
        )
    };
    match single {
        Single::Drop => plain(StatusCode::BAD_REQUEST, "not a DNS query\n"),
        Single::Reply(signer) => {
            // A signed reply is for the one client that holds the key: no shared cache.
            let scope = if signer.is_some() { "private, " } else { "" };
            if let Some(mut signer) = signer {
                signer.sign(&mut out);
            }
            let max_age = wire::min_ttl(&out).unwrap_or(0);
            let mut response = Response::new(Full::new(Bytes::from(out)));
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(DNS_MESSAGE));
            if let Ok(value) = HeaderValue::from_str(&format!("{scope}max-age={max_age}")) {
                headers.insert(CACHE_CONTROL, value);
            }
            response
        }
    }
}

/// The message of a GET: the `dns` parameter, base64url (RFC 4648 §5) without padding, which
/// RFC 8484 §4.1 asks for; padding is tolerated.
fn query_message(query: Option<&str>) -> Result<Vec<u8>, &'static str> {
    let value = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(key, _)| key == "dns")
        .map(|(_, value)| value.into_owned())
        .ok_or("a GET needs the query in ?dns=<base64url>\n")?;
    if value.len() > usize::from(u16::MAX).div_ceil(3) * 4 {
        return Err("a DNS message is at most 65535 bytes\n");
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('='))
        .map_err(|_| "?dns= is not base64url\n")
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_get_parameter_is_base64url_with_or_without_padding() {
        // RFC 8484 §4.1.1's example: www.example.com A, ID 0.
        let example = "AAABAAABAAAAAAAAA3d3dwdleGFtcGxlA2NvbQAAAQAB";
        let message = query_message(Some(&format!("dns={example}"))).expect("decodes");
        assert_eq!(&message[..2], &[0, 0]);
        assert_eq!(message.len(), 33);
        assert_eq!(
            query_message(Some("ct&dns=AAAB")).expect("other parameters"),
            [0, 0, 1]
        );
        assert_eq!(query_message(Some("dns=AAA=")).expect("padding"), [0, 0]);
        assert!(query_message(Some("dns=***")).is_err());
        assert!(query_message(None).is_err());
        assert!(query_message(Some("name=x")).is_err());
        let huge = format!("dns={}", "A".repeat(87_400));
        assert_eq!(
            query_message(Some(&huge)),
            Err("a DNS message is at most 65535 bytes\n")
        );
    }
}
