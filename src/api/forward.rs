//! On a shared store (etcd), every instance answers the API, but only the leader commits: an
//! API request that reaches another instance is sent on to the leader, and its answer comes
//! back once this instance's own DNS serves the change (the serial in the leader's answer),
//! so "answered only after it is visible in DNS" holds on whichever instance was asked.
//!
//! Served here without forwarding: blocking assignment queries (from this instance's own copy
//! of the state, woken as it follows the log), service discovery, `/v1/info`, metrics, the
//! dashboard and the probes.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderName, StatusCode, request::Parts};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;

/// Marks a request one instance sent to another: the leader never forwards it again.
pub const FORWARDED: HeaderName = HeaderName::from_static("stackdns-forwarded");
/// How long a forwarded request may take at the leader; with [`VISIBLE_TIMEOUT`], inside this
/// instance's own request timeout (30 s), so the caller gets the leader's answer, not a 408.
const LEADER_TIMEOUT: Duration = Duration::from_secs(25);
/// How long the answer waits for this instance's DNS to serve the leader's serial.
const VISIBLE_TIMEOUT: Duration = Duration::from_secs(3);
/// Headers of one connection, not of the request (RFC 9110 §7.6.1), and those the HTTP
/// client sets itself.
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

fn end_to_end(name: &HeaderName) -> bool {
    !HOP_BY_HOP.contains(&name.as_str())
        && name != axum::http::header::HOST
        && name != axum::http::header::EXPECT
}

/// The HTTP client instances forward with.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(LEADER_TIMEOUT)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default()
}

/// Whether `path` is served by the leader.
fn leader_serves(path: &str) -> bool {
    path.starts_with("/v1/")
        && !path.starts_with("/v1/sd/")
        && path != "/v1/info"
        && path != "/v1/openapi.json"
}

/// A 503 (with `Retry-After`, as every 503 of the API).
fn unavailable(code: &'static str, message: String) -> Response {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message).into_response()
}

/// Sends the request to the leader if this instance does not lead; `None`: serve it here.
pub async fn to_leader(state: &AppState, parts: &Parts, body: &Bytes) -> Option<Response> {
    let cluster = state.control.cluster()?;
    if cluster.leads() || !leader_serves(parts.uri.path()) {
        return None;
    }
    if parts.headers.contains_key(FORWARDED) {
        return Some(unavailable(
            "not_leader",
            "this request was forwarded here as to the leader, but this instance no longer leads; retry"
                .to_owned(),
        ));
    }
    let Some(leader) = cluster.leader.borrow().clone() else {
        return Some(unavailable(
            "no_leader",
            "no instance leads the cluster right now (an election is under way, or etcd cannot be reached); retry"
                .to_owned(),
        ));
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{path}", leader.api);
    let mut request = state.http.request(parts.method.clone(), &url);
    for (name, value) in parts.headers.iter().filter(|(name, _)| end_to_end(name)) {
        request = request.header(name, value);
    }
    let sent = request
        .header(FORWARDED, cluster.id.as_str())
        .body(body.clone())
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(leader = %leader.api, error = %e, "cannot forward a request to the leader");
            // Only a request that never reached the leader is surely not applied.
            let message = if e.is_connect() {
                format!("the leader ({}) cannot be reached: {e}; retry", leader.api)
            } else {
                format!(
                    "the leader ({}) did not answer: {e}; the change may have been made: read it back, then retry",
                    leader.api
                )
            };
            return Some(unavailable("leader_unreachable", message));
        }
    };
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = match response.bytes().await {
        Ok(bytes) => bytes,
        Err(e) => {
            return Some(unavailable(
                "leader_unreachable",
                format!("the leader's answer was cut off: {e}; the change may have been made, read it back"),
            ));
        }
    };
    if let Some(serial) = serial_of(&bytes).filter(|_| status.is_success()) {
        wait_visible(state, serial).await;
    }
    let mut out = Response::builder().status(status);
    for (name, value) in headers.iter().filter(|(name, _)| end_to_end(name)) {
        out = out.header(name, value);
    }
    Some(
        out.body(axum::body::Body::from(bytes))
            .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response()),
    )
}

/// The `serial` of a JSON object answer, if it has one.
fn serial_of(bytes: &[u8]) -> Option<u32> {
    #[derive(serde::Deserialize)]
    struct WithSerial {
        serial: Option<u32>,
    }
    serde_json::from_slice::<WithSerial>(bytes).ok()?.serial
}

/// Waits until this instance publishes `serial` or a later one (RFC 1982), for at most
/// [`VISIBLE_TIMEOUT`]: the change is durable either way.
async fn wait_visible(state: &AppState, serial: u32) {
    let mut serials = state.control.serials();
    let reached = |s: u32| (s.wrapping_sub(serial) as i32) >= 0;
    let wait = serials.wait_for(|s| reached(*s));
    if tokio::time::timeout(VISIBLE_TIMEOUT, wait).await.is_err() {
        tracing::warn!(
            serial,
            "this instance did not publish the leader's serial in time"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_go_to_the_leader_and_local_reads_stay() {
        assert!(leader_serves("/v1/nodes/node-1/heartbeat"));
        assert!(leader_serves("/v1/stacks/u/s"));
        assert!(!leader_serves("/v1/sd/prometheus"));
        assert!(!leader_serves("/v1/info"));
        assert!(!leader_serves("/metrics"));
        assert!(!leader_serves("/ui/stacks"));
        assert_eq!(serial_of(br#"{"serial": 7, "x": [1]}"#), Some(7));
        assert_eq!(serial_of(br#"[{"serial": 7}]"#), None);
    }
}
