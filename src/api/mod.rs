//! The registration and control HTTP API (design §4), on axum.
//!
//! ```text
//!  connection (listener.rs: connection caps, header deadline)
//!  request -> declared size checked -> body read within the read deadline -> request slot
//!          (or 503) -> Caller (bearer token, auth.rs) -> handler: path, query and body
//!          validated into model types -> Control::<operation>(caller, ..) (authorizes, runs on
//!          the writer) -> Committed{value, serial} once durable and visible in DNS
//!          -> render.rs: view -> response body (types.rs) -> JSON
//! ```
//!
//! Handlers only translate: HTTP in, a named control operation, JSON out. They never see the
//! state or the store, and decide nothing about who may do what.

mod assignments;
mod auth;
pub mod error;
mod forward;
#[doc(hidden)]
pub mod fuzzing;
pub mod listener;
mod nodes;
mod query;
mod render;
mod sd;
mod stacks;
pub mod types;
mod ui;
mod users;

pub use forward::client as forwarding_client;
pub use ui::Sessions;

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::routing::get;
use serde::de::DeserializeOwned;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::control::Control;
use error::ApiError;
use query::NoQuery;

/// Largest request body accepted (a node's full container list fits many times over).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// A request that takes longer than this is answered 408.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub control: Control,
    pub admin_token_sha256: String,
    /// The zone apex as text with the trailing dot (`cluster.test.`), for FQDNs in responses.
    pub apex: String,
    pub node_ttl: Duration,
    /// TTL of the `svc`, `cont` and `node` records.
    pub dns_ttl: u32,
    /// Where DNS listens (UDP and TCP), for clients that look names up (`stackdns lookup`).
    pub dns_addr: std::net::SocketAddr,
    /// Users allowed privileged Stackfile options.
    pub privileged_users: std::sync::Arc<Vec<crate::model::Label>>,
    /// The largest `mem_limit`, MiB.
    pub max_container_memory_mb: u64,
    /// One permit per request being served (blocking queries excepted): beyond it, 503.
    pub requests: std::sync::Arc<tokio::sync::Semaphore>,
    /// How long a request's body may take to arrive (`--api-read-timeout-ms`).
    pub read_timeout: Duration,
    /// The DNS listeners' counters.
    pub dns_stats: crate::dns::DnsStats,
    /// The dashboard's logged-in sessions.
    pub sessions: std::sync::Arc<Sessions>,
    /// Forwards requests to the leader on a shared store.
    pub http: reqwest::Client,
}

impl AppState {
    /// What `user`'s Stackfiles may ask for.
    pub fn stackfile_policy(&self, user: &crate::model::Label) -> crate::stackfile::Policy {
        crate::stackfile::Policy {
            privileged: self.privileged_users.contains(user),
            max_memory_mb: self.max_container_memory_mb,
        }
    }
}

/// Routes and their paths: the router is built from these, and [`paths`] lists the same, so a
/// test can hold the OpenAPI description to what is really routed.
pub struct Routes {
    router: Router<AppState>,
    paths: Vec<&'static str>,
}

impl Routes {
    fn new() -> Self {
        Self {
            router: Router::new(),
            paths: Vec::new(),
        }
    }

    fn route(mut self, path: &'static str, methods: axum::routing::MethodRouter<AppState>) -> Self {
        self.router = self.router.route(path, methods);
        self.paths.push(path);
        self
    }

    fn merge(mut self, other: Routes) -> Self {
        self.router = self.router.merge(other.router);
        self.paths.extend(other.paths);
        self
    }
}

/// Routes served only when a request slot is free.
fn bounded_routes() -> Routes {
    nodes::routes()
        .merge(users::routes())
        .merge(stacks::routes())
        .merge(sd::routes())
        .route("/metrics", get(metrics_for_admin))
        .route("/v1/info", get(info))
}

/// Routes never refused for load: a busy server is alive, says whether it is ready, and
/// describes itself.
fn probe_routes() -> Routes {
    Routes::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/openapi.json", get(openapi))
}

/// The API's routes in their three groups, each behind its own layers in [`router`]: served
/// when a request slot is free; never refused; blocking queries, without the request timeout.
/// [`router`] and [`paths`] both take them from here, so an API route is added here or not at all.
fn groups() -> [Routes; 3] {
    [bounded_routes(), probe_routes(), assignments::routes()]
}

/// Every routed path of the API, in axum's `{param}` syntax (which OpenAPI shares).
pub fn paths() -> Vec<&'static str> {
    groups().into_iter().flat_map(|r| r.paths).collect()
}

/// The OpenAPI 3.1 description of the whole API, served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// The whole API, ready to serve.
pub fn router(state: AppState) -> Router {
    let [bounded_api, probes, blocking] = groups();
    bounded_api
        .router
        // The dashboard is not the API: not in the OpenAPI description, but bounded the same.
        .merge(ui::router())
        .layer(axum::middleware::from_fn_with_state(state.clone(), bounded))
        .merge(probes.router)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        // Blocking queries wait longer than any other request may take, by design; each holds
        // a connection, which the listener's caps bound.
        .merge(blocking.router)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(declared_size))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(CatchPanicLayer::new())
        // Outside the others, so refusals for size and a handler's panic (500) are counted too.
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Reads the body within the read deadline, then serves the request if a request slot is free,
/// else answers 503 at once: a queue in front of the single writer would only turn overload
/// into timeouts. The body comes first so that a client trickling one cannot hold a slot.
async fn bounded(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = request.into_parts();
    let read = tokio::time::timeout(state.read_timeout, axum::body::to_bytes(body, MAX_BODY_BYTES)).await;
    let body = match read {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            let e = e.into_inner();
            return if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                too_large().into_response()
            } else {
                ApiError::bad_request("invalid_body", format!("the request body could not be read: {e}"))
                    .into_response()
            };
        }
        Err(_) => {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} ms",
                    state.read_timeout.as_millis()
                ),
            )
            .into_response();
        }
    };
    let Ok(_slot) = state.requests.try_acquire() else {
        // With `Retry-After: 1`, as every 503.
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the server is serving as many requests as it may; retry shortly",
        )
        .into_response();
    };
    if let Some(answered) = forward::to_leader(&state, &parts, &body).await {
        return answered;
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(body)))
        .await
}

/// Refuses a body whose declared length is over the limit before reading any of it, instead
/// of waiting for bytes that may never come. Bodies without a length are cut at the limit
/// as they are read.
///
/// The refusal goes out at once; what the client still sends is read and thrown away for a
/// little while (a lingering close, as nginx and Apache do it), so that a client that writes
/// its whole body before it reads gets the 413 instead of a reset connection.
async fn declared_size(request: Request, next: axum::middleware::Next) -> axum::response::Response {
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > MAX_BODY_BYTES as u64 => {
            tokio::spawn(linger(request.into_body()));
            let mut refused = axum::response::IntoResponse::into_response(too_large());
            refused.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            refused
        }
        _ => next.run(request).await,
    }
}

/// How long, and how much, a refused body is read before the connection is closed.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 16 << 20;

async fn linger(body: axum::body::Body) {
    use futures_util::StreamExt;
    let mut chunks = body.into_data_stream();
    let mut read = 0;
    let _ = tokio::time::timeout(LINGER, async {
        while let Some(Ok(chunk)) = chunks.next().await {
            read += chunk.len();
            if read > LINGER_BYTES {
                break;
            }
        }
    })
    .await;
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the request body is larger than the limit of {MAX_BODY_BYTES} bytes"),
    )
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see docs/api.md",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method; see docs/api.md",
    )
}

/// Alive: the process answers HTTP.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready: the writer answers and can commit, so writes will be accepted. After a failed
/// commit this retries the commit that rebuilds the zone, so it turns ready again by itself
/// once the disk takes writes again.
async fn readyz(axum::extract::State(state): axum::extract::State<AppState>) -> Result<String, ApiError> {
    match state.control.ready().await {
        Ok(done) => Ok(format!("ready serial={}\n", done.serial)),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                format!("writes are refused: {e}; DNS answers the last published zone"),
            ))
        }
    }
}

/// `GET /v1/info`, for any valid token: the zone, where DNS answers, the TTLs.
async fn info(
    axum::extract::State(state): axum::extract::State<AppState>,
    caller: crate::control::Caller,
    _: NoQuery,
) -> Result<axum::Json<types::ServerInfo>, ApiError> {
    let role = match caller {
        crate::control::Caller::Admin => "admin",
        crate::control::Caller::Node { .. } => "node",
        crate::control::Caller::User { .. } => "user",
    };
    let serial = state.control.ready().await?.serial;
    let cluster = state.control.cluster();
    Ok(axum::Json(types::ServerInfo {
        zone: state.apex.clone(),
        dns: state.dns_addr.to_string(),
        dns_ttl: state.dns_ttl,
        node_ttl_seconds: state.node_ttl.as_secs(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        role: role.to_owned(),
        serial,
        store: if cluster.is_some() { "etcd" } else { "redb" }.to_owned(),
        leader: cluster.and_then(|c| c.leader.borrow().as_ref().map(|l| l.api.clone())),
        leads: cluster.map(crate::control::ClusterView::leads),
    }))
}

/// `/metrics` alone, without a token, for the listener of `--metrics-addr`.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .with_state(state)
}

/// `/metrics` on the API's address: the admin token only (it tells tenant counts).
async fn metrics_for_admin(
    axum::extract::State(state): axum::extract::State<AppState>,
    caller: crate::control::Caller,
) -> Result<impl axum::response::IntoResponse, ApiError> {
    if caller != crate::control::Caller::Admin {
        return Err(ApiError::forbidden(
            "on the API's address /metrics needs the admin token; Prometheus scrapes --metrics-addr",
        ));
    }
    metrics(axum::extract::State(state)).await
}

/// How long a scrape waits for the writer's fleet counts.
const WRITER_WAIT: Duration = Duration::from_secs(2);

/// The content type of the Prometheus text format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Prometheus text format: zone and fleet gauges, the DNS counters, the control plane's
/// metrics (docs/operations.md lists them all).
async fn metrics(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<impl axum::response::IntoResponse, ApiError> {
    let snapshot = state.control.snapshots().load_full();
    // The fleet's counts come from the writer; a writer stuck on a slow disk must not make the
    // scrape fail too, so without an answer in time they are left out and the gauge says why.
    let fleet = tokio::time::timeout(WRITER_WAIT, state.control.fleet()).await;
    let (responsive, fleet) = match fleet {
        Ok(done) => (1, Some(done?.value)),
        Err(_) => (0, None),
    };
    let mut out = format!(
        "# HELP stackdns_control_writer_responsive Whether the control writer answered this scrape within {} s \
         (0: writes are stuck, most likely on the disk; DNS answers the last published zone).\n\
         # TYPE stackdns_control_writer_responsive gauge\nstackdns_control_writer_responsive {responsive}\n",
        WRITER_WAIT.as_secs()
    );
    if let Some(crate::control::Fleet {
        nodes_live: live,
        nodes_lost: lost,
        containers_running: running,
        containers_stopped: stopped,
    }) = fleet
    {
        out.push_str(&format!(
            "# HELP stackdns_nodes Registered nodes by lease state.\n\
             # TYPE stackdns_nodes gauge\nstackdns_nodes{{state=\"live\"}} {live}\nstackdns_nodes{{state=\"lost\"}} {lost}\n\
             # HELP stackdns_containers Known containers by state (running ones on lost nodes included).\n\
             # TYPE stackdns_containers gauge\nstackdns_containers{{state=\"running\"}} {running}\nstackdns_containers{{state=\"stopped\"}} {stopped}\n"
        ));
    }
    out.push_str(&format!(
        "# HELP stackdns_zone_serial SOA serial of the published zone.\n\
         # TYPE stackdns_zone_serial gauge\nstackdns_zone_serial {}\n\
         # HELP stackdns_zone_names Names in the published zone, empty non-terminals included.\n\
         # TYPE stackdns_zone_names gauge\nstackdns_zone_names {}\n",
        snapshot.serial,
        snapshot.len(),
    ));
    if let Some(cluster) = state.control.cluster() {
        out.push_str(&format!(
            "# HELP stackdns_cluster_leader Whether this instance leads the instances sharing its etcd store (1) or follows (0).\n\
             # TYPE stackdns_cluster_leader gauge\nstackdns_cluster_leader {}\n",
            u8::from(cluster.leads())
        ));
    }
    state.dns_stats.render(&mut out);
    state.control.metrics().render(&mut out);
    Ok(([(axum::http::header::CONTENT_TYPE, PROMETHEUS_TEXT)], out))
}

/// Counts every request by route (the matched path template, so names in paths do not become
/// label values), method and status.
async fn track(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::Method;
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = match *request.method() {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "other",
    };
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    state
        .control
        .metrics()
        .http_request(&route, method, response.status().as_u16(), started.elapsed());
    response
}

/// A raw body (a Stackfile) within the size limit, with the API's 413.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(body_rejection)
    }
}

fn body_rejection(r: axum::extract::rejection::BytesRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large()
    } else {
        ApiError::bad_request("invalid_body", r.body_text())
    }
}

/// A JSON body with errors in the API's own shape: 413 over the limit, 400 naming the
/// unknown field or the syntax error's line and column.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(body_rejection)?;
        decode_json(&bytes).map(JsonBody)
    }
}

/// A JSON body as [`JsonBody`] reads it, with its errors.
fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let message = e.to_string();
        let code = if message.starts_with("unknown field") {
            "unknown_field"
        } else {
            "invalid_json"
        };
        ApiError::bad_request(code, format!("request body: {message}"))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The OpenAPI description names exactly the routed paths; `tests/integration/operations.rs`
    /// checks the methods of each against the running server.
    #[test]
    fn the_openapi_description_has_every_routed_path_and_no_other() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).expect("openapi.json is JSON");
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
        let described: BTreeSet<&str> = doc["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .map(String::as_str)
            .collect();
        let routed: BTreeSet<&str> = super::paths().into_iter().collect();
        assert_eq!(
            routed.difference(&described).collect::<Vec<_>>(),
            Vec::<&&str>::new(),
            "routed but not described"
        );
        assert_eq!(
            described.difference(&routed).collect::<Vec<_>>(),
            Vec::<&&str>::new(),
            "described but not routed"
        );
    }
}
