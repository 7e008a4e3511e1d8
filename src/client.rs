//! A typed client of the HTTP API, shared by the command-line client and the node agent: the
//! request and response bodies are the server's own (`api::types`).
//!
//! Several API addresses may be given; a request that cannot reach one (connection refused,
//! timeout) tries the next, starting from the one that answered last. An answer with an error
//! status is never retried here: it is the server's word, returned as [`ClientError::Api`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::types::*;

/// Every request but a blocking query gives up after this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request did not get the answer it asked for.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error: its status, code and message.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// No address answered.
    #[error("cannot reach the API at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// It answered something that is not the expected JSON.
    #[error("unexpected answer from {url}: {detail}")]
    Unexpected { url: String, detail: String },
    #[error("bad API address {0:?}: give one like http://127.0.0.1:8053")]
    BadAddress(String),
}

impl ClientError {
    /// The API's error code, if the server answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// An API client: the addresses, the bearer token, one connection pool.
pub struct Client {
    bases: Vec<String>,
    /// Index into `bases` of the address that answered last.
    current: AtomicUsize,
    /// Replaceable: an agent re-reads its token file when the API refuses the token.
    token: std::sync::RwLock<String>,
    http: reqwest::Client,
}

/// Percent-encodes one query-string value.
fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

impl Client {
    /// `api` is one address or several separated by commas (`http://a:8053,http://b:8053`).
    pub fn new(api: &str, token: impl Into<String>) -> Result<Self, ClientError> {
        let bases: Vec<String> = api
            .split(',')
            .map(|b| b.trim().trim_end_matches('/').to_owned())
            .filter(|b| !b.is_empty())
            .collect();
        if bases.is_empty()
            || bases
                .iter()
                .any(|b| !b.starts_with("http://") && !b.starts_with("https://"))
        {
            return Err(ClientError::BadAddress(api.to_owned()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|source| ClientError::Unreachable {
                url: api.to_owned(),
                source,
            })?;
        Ok(Self {
            bases,
            current: AtomicUsize::new(0),
            token: std::sync::RwLock::new(token.into()),
            http,
        })
    }

    /// Uses `token` from now on; whether it differs from the one in use.
    pub fn set_token(&self, token: &str) -> bool {
        let mut current = self.token.write().unwrap_or_else(|e| e.into_inner());
        let changed = *current != token;
        if changed {
            *current = token.to_owned();
        }
        changed
    }

    fn bearer(&self) -> String {
        self.token.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sends one request, trying each address in turn while none can be reached.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Body<'_>>,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let first = self.current.load(Ordering::Relaxed);
        let mut last_error = None;
        for k in 0..self.bases.len() {
            let i = (first + k) % self.bases.len();
            let url = format!("{}{path}", self.bases[i]);
            let mut request = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(self.bearer())
                .timeout(timeout);
            request = match &body {
                Some(Body::Json(value)) => request.json(value),
                Some(Body::Raw { bytes, content_type }) => request
                    .header(reqwest::header::CONTENT_TYPE, *content_type)
                    .body(bytes.to_vec()),
                None => request,
            };
            match request.send().await {
                Ok(response) => {
                    self.current.store(i, Ordering::Relaxed);
                    return read(url, response).await;
                }
                Err(source) if source.is_connect() || source.is_timeout() => {
                    last_error = Some(ClientError::Unreachable { url, source });
                }
                Err(source) => return Err(ClientError::Unreachable { url, source }),
            }
        }
        Err(last_error.unwrap_or_else(|| ClientError::BadAddress(String::new())))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None, REQUEST_TIMEOUT).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &(impl Serialize + Sync),
    ) -> Result<T, ClientError> {
        let value = serde_json::to_value(body).map_err(|e| ClientError::Unexpected {
            url: path.to_owned(),
            detail: e.to_string(),
        })?;
        self.call(method, path, Some(Body::Json(value)), REQUEST_TIMEOUT)
            .await
    }

    pub async fn info(&self) -> Result<ServerInfo, ClientError> {
        self.get("/v1/info").await
    }

    // Nodes

    pub async fn put_node(&self, node: &str, request: &NodeRequest) -> Result<NodeResponse, ClientError> {
        self.send(Method::PUT, &format!("/v1/nodes/{node}"), request)
            .await
    }

    pub async fn nodes(&self) -> Result<NodeList, ClientError> {
        self.get("/v1/nodes").await
    }

    pub async fn delete_node(&self, node: &str) -> Result<SerialResponse, ClientError> {
        self.call(
            Method::DELETE,
            &format!("/v1/nodes/{node}"),
            None,
            REQUEST_TIMEOUT,
        )
        .await
    }

    pub async fn rotate_node_token(&self, node: &str) -> Result<NodeResponse, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/nodes/{node}/token"),
            None,
            REQUEST_TIMEOUT,
        )
        .await
    }

    pub async fn heartbeat(&self, node: &str) -> Result<HeartbeatResponse, ClientError> {
        self.heartbeat_within(node, REQUEST_TIMEOUT).await
    }

    /// A heartbeat that gives up (and tries the next address) after `timeout`: one that takes
    /// longer than the lease is no heartbeat at all.
    pub async fn heartbeat_within(
        &self,
        node: &str,
        timeout: Duration,
    ) -> Result<HeartbeatResponse, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/nodes/{node}/heartbeat"),
            None,
            timeout,
        )
        .await
    }

    // Containers, as an agent reports them

    pub async fn put_container(
        &self,
        node: &str,
        (user, stack, name): (&str, &str, &str),
        request: &ContainerRequest,
    ) -> Result<ContainerResponse, ClientError> {
        let path = format!("/v1/nodes/{node}/containers/{user}/{stack}/{name}");
        self.send(Method::PUT, &path, request).await
    }

    pub async fn stop_container(
        &self,
        node: &str,
        (user, stack, name): (&str, &str, &str),
        generation: u64,
        detail: Option<&str>,
    ) -> Result<ContainerResponse, ClientError> {
        let mut path = format!("/v1/nodes/{node}/containers/{user}/{stack}/{name}?generation={generation}");
        if let Some(detail) = detail {
            path.push_str(&format!("&detail={}", encode(detail)));
        }
        self.call(Method::DELETE, &path, None, REQUEST_TIMEOUT).await
    }

    pub async fn replace_containers(
        &self,
        node: &str,
        request: &ContainerListRequest,
    ) -> Result<ContainerListResponse, ClientError> {
        self.send(Method::PUT, &format!("/v1/nodes/{node}/containers"), request)
            .await
    }

    /// What `node` must run; with `wait`, a blocking query that answers once the
    /// assignments change past `index` (or `wait` runs out).
    pub async fn assignments(
        &self,
        node: &str,
        index: u64,
        wait: Duration,
    ) -> Result<AssignmentList, ClientError> {
        let path = format!(
            "/v1/nodes/{node}/assignments?index={index}&wait={}ms",
            wait.as_millis()
        );
        self.call(Method::GET, &path, None, wait + REQUEST_TIMEOUT).await
    }

    // Stacks

    pub async fn apply_stack(
        &self,
        (user, stack): (&str, &str),
        stackfile: &[u8],
        content_type: &'static str,
        dry_run: bool,
    ) -> Result<StackResponse, ClientError> {
        let path = format!("/v1/stacks/{user}/{stack}?dry_run={dry_run}");
        let body = Body::Raw {
            bytes: stackfile,
            content_type,
        };
        self.call(Method::PUT, &path, Some(body), REQUEST_TIMEOUT).await
    }

    pub async fn stack(&self, user: &str, stack: &str) -> Result<StackResponse, ClientError> {
        self.get(&format!("/v1/stacks/{user}/{stack}")).await
    }

    pub async fn all_stacks(&self) -> Result<AllStacks, ClientError> {
        self.get("/v1/stacks").await
    }

    pub async fn stacks_of(&self, user: &str) -> Result<StackList, ClientError> {
        self.get(&format!("/v1/stacks/{user}")).await
    }

    pub async fn delete_stack(&self, user: &str, stack: &str) -> Result<SerialResponse, ClientError> {
        self.call(
            Method::DELETE,
            &format!("/v1/stacks/{user}/{stack}"),
            None,
            REQUEST_TIMEOUT,
        )
        .await
    }

    pub async fn scale(
        &self,
        (user, stack, service): (&str, &str, &str),
        target: u32,
        dry_run: bool,
    ) -> Result<StackResponse, ClientError> {
        let path = format!("/v1/stacks/{user}/{stack}/services/{service}?dry_run={dry_run}");
        let body = ScaleRequest {
            target_num_containers: target,
        };
        self.send(Method::PATCH, &path, &body).await
    }

    // Users

    pub async fn issue_user_token(&self, user: &str) -> Result<UserTokenResponse, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/users/{user}/tokens"),
            None,
            REQUEST_TIMEOUT,
        )
        .await
    }

    pub async fn revoke_user_tokens(&self, user: &str) -> Result<UserTokensRevoked, ClientError> {
        self.call(
            Method::DELETE,
            &format!("/v1/users/{user}/tokens"),
            None,
            REQUEST_TIMEOUT,
        )
        .await
    }
}

/// A request body.
enum Body<'a> {
    Json(serde_json::Value),
    Raw {
        bytes: &'a [u8],
        content_type: &'static str,
    },
}

/// The JSON answer, or the API's error as [`ClientError::Api`].
async fn read<T: DeserializeOwned>(url: String, response: reqwest::Response) -> Result<T, ClientError> {
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|source| ClientError::Unreachable {
            url: url.clone(),
            source,
        })?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|e| ClientError::Unexpected {
            url,
            detail: format!(
                "{e} in {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ),
        });
    }
    #[derive(serde::Deserialize)]
    struct Envelope {
        error: Detail,
    }
    #[derive(serde::Deserialize)]
    struct Detail {
        code: String,
        message: String,
    }
    match serde_json::from_slice::<Envelope>(&bytes) {
        Ok(Envelope { error }) => Err(ClientError::Api {
            status: status.as_u16(),
            code: error.code,
            message: error.message,
        }),
        Err(_) => Err(ClientError::Api {
            status: status.as_u16(),
            code: status_code(status).to_owned(),
            message: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
        }),
    }
}

/// A code for an error answer that did not come from the API itself (a proxy, say).
fn status_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        408 => "timeout",
        500..=599 => "server_error",
        _ => "http_error",
    }
}
