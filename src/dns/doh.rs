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
use std::time::Duration;

use base64::Engine;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::answer::Scratch;
use super::handler::{self, Context, Single};
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

/// What every connection shares.
struct Shared {
    snapshots: SnapshotHandle,
    context: Arc<Context>,
    /// For a TLS handshake, a request's headers, and a POST body.
    io_timeout: Duration,
}

/// Accepts DoH connections until `cancel` fires, then lets open ones finish their requests.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    snapshots: SnapshotHandle,
    context: Arc<Context>,
    caps: Caps,
    cancel: CancellationToken,
) {
    let gate = Gate::new(caps);
    let shared = Arc::new(Shared {
        snapshots,
        context,
        io_timeout: super::tcp::IDLE_TIMEOUT,
    });
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.io_timeout);
    http.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        // Pings find peers that went away; the caps bound the ones that stay.
        .keep_alive_interval(Some(super::tcp::IDLE_TIMEOUT))
        .keep_alive_timeout(Duration::from_secs(5));
    let graceful = GracefulShutdown::new();
    while let Some((stream, peer)) = crate::edge::accept(&listener, &cancel, "DNS over HTTPS").await {
        let Ok(ticket) = gate.admit(peer.ip()) else {
            tracing::debug!(%peer, "DoH connection refused: over the connection caps");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, shared, http, watcher) =
            (acceptor.clone(), shared.clone(), http.clone(), graceful.watcher());
        tokio::spawn(async move {
            let Ok(Ok(stream)) = tokio::time::timeout(shared.io_timeout, acceptor.accept(stream)).await
            else {
                tracing::debug!(%peer, "DoH TLS handshake failed or timed out");
                return;
            };
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(request, peer, &shared).await) }
            });
            let connection = http.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(error = %e, %peer, "DoH connection ended");
            }
            drop(ticket);
        });
    }
    graceful.shutdown().await;
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
            match tokio::time::timeout(shared.io_timeout, body.collect()).await {
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
            &snapshot,
            &shared.context,
            &mut Scratch::default(),
            &mut out,
        )
    };
    match single {
        Single::Drop => plain(StatusCode::BAD_REQUEST, "not a DNS query\n"),
        Single::Reply(signer) => {
            if let Some(mut signer) = signer {
                signer.sign(&mut out);
            }
            let max_age = wire::min_ttl(&out).unwrap_or(0);
            let mut response = Response::new(Full::new(Bytes::from(out)));
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(DNS_MESSAGE));
            if let Ok(value) = HeaderValue::from_str(&format!("max-age={max_age}")) {
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
    }
}
