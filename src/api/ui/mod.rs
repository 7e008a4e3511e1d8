//! The web dashboard at `/ui` (design §10): server-rendered pages (askama templates under
//! `templates/ui/`), usable without JavaScript, on the same control operations as the API, so
//! a user sees exactly what their token may see.
//!
//! ```text
//!  POST /ui/login (token) -> caller_of(token) -> session id (random) -> HTTP-only cookie
//!  GET  /ui/...  cookie -> session -> token hash -> Caller -> control op -> page
//!  POST /ui/...  + the form's csrf field == HMAC(secret, session id), Origin (if sent) == Host
//! ```
//!
//! Sessions hold the token's hash, never the token, and are resolved to a caller on every
//! request, so a revoked token ends its sessions at once. They live in memory: a restart logs
//! everyone out. Cookies are `SameSite=Strict` and forms carry a CSRF token besides.
//!
//! | file        | owns                                             |
//! |-------------|--------------------------------------------------|
//! | `mod.rs`    | routes, sessions, the cookie, CSRF, page errors  |
//! | `pages.rs`  | each page: its control operations and template   |

mod pages;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header::{CONTENT_TYPE, COOKIE, HOST, ORIGIN};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::AppState;
use super::error::ApiError;
use crate::control::Caller;

/// The session cookie's name.
const COOKIE_NAME: &str = "stackdns_ui";
/// How long a session lasts after login.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most: beyond it logins are refused (never someone else's session closed).
const MAX_SESSIONS: usize = 10_000;
/// Sessions one token may hold; its own oldest goes first beyond it.
const SESSIONS_PER_TOKEN: usize = 16;

/// The dashboard's routes (not the API's: they are not in the OpenAPI description).
pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/ui", get(pages::stacks))
        .route("/ui/login", get(pages::login_form).post(pages::login))
        .route("/ui/logout", post(pages::logout))
        .route("/ui/stacks/{user}/{stack}", get(pages::stack))
        .route("/ui/stacks/{user}/{stack}/dry-run", post(pages::dry_run))
        .route("/ui/nodes", get(pages::nodes))
        .route("/ui/zone", get(pages::zone))
        .route("/ui/assets/{file}", get(asset))
        .layer(axum::middleware::from_fn(headers))
}

/// Every dashboard response: no caching of pages, no framing, nothing loaded from elsewhere.
async fn headers(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.entry("cache-control")
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "style.css" => (include_str!("assets/style.css"), "text/css; charset=utf-8"),
        "countdown.js" => (
            include_str!("assets/countdown.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => return pages::error_page(None, StatusCode::NOT_FOUND, "no such file".to_owned()),
    };
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(kind)),
            (
                axum::http::header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=3600"),
            ),
        ],
        body,
    )
        .into_response()
}

struct Session {
    token_sha256: String,
    expires: Instant,
}

/// The open sessions, and the key their CSRF tokens are made with.
pub struct Sessions {
    key: [u8; 32],
    open: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// A fresh store with a random CSRF key.
    pub fn new() -> Result<Self, getrandom::Error> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)?;
        Ok(Self {
            key,
            open: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a session for the token with hash `token_sha256`; returns its id, or `None` when
    /// every session place is taken. A token past its own share loses its oldest session, so
    /// one token logging in over and over cannot log anyone else out.
    fn open(&self, token_sha256: String) -> Result<Option<String>, getrandom::Error> {
        let mut id = [0u8; 32];
        getrandom::fill(&mut id)?;
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let now = Instant::now();
        let mut open = self.lock();
        open.retain(|_, s| s.expires > now);
        let mut own: Vec<(&String, Instant)> = open
            .iter()
            .filter(|(_, s)| s.token_sha256 == token_sha256)
            .map(|(k, s)| (k, s.expires))
            .collect();
        if own.len() >= SESSIONS_PER_TOKEN {
            own.sort_by_key(|(_, expires)| *expires);
            let oldest = own[0].0.clone();
            open.remove(&oldest);
        } else if open.len() >= MAX_SESSIONS {
            return Ok(None);
        }
        open.insert(
            id.clone(),
            Session {
                token_sha256,
                expires: now + SESSION_TTL,
            },
        );
        Ok(Some(id))
    }

    /// The token hash of session `id`, if it is open.
    fn token_of(&self, id: &str) -> Option<String> {
        let open = self.lock();
        open.get(id)
            .filter(|s| s.expires > Instant::now())
            .map(|s| s.token_sha256.clone())
    }

    fn close(&self, id: &str) {
        self.lock().remove(id);
    }

    /// The CSRF token of session `id`: only this server can make it, and only for this session.
    fn csrf(&self, id: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The session cookie's value, if the request has one.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_owned())
}

fn set_cookie(id: &str) -> HeaderValue {
    let value = format!(
        "{COOKIE_NAME}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("stackdns_ui=; Max-Age=0"))
}

fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("stackdns_ui=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// A form posted from elsewhere: the browser says where from in `Origin` (always, for a
/// cross-site POST), and it must be this server.
fn foreign_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = headers.get(HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    origin_host != host
}

/// A logged-in dashboard user: who, and their session's id (for its CSRF token).
pub struct Viewer {
    pub caller: Caller,
    session: String,
    csrf: String,
}

impl Viewer {
    /// What the page header says about who is logged in.
    fn who(&self) -> String {
        match &self.caller {
            Caller::Admin => "admin".to_owned(),
            Caller::User { user, .. } => format!("user {user}"),
            Caller::Node { node, .. } => format!("node {node}"),
        }
    }

    fn is_admin(&self) -> bool {
        self.caller == Caller::Admin
    }

    /// Refuses a posted form whose CSRF token is not this session's.
    fn check_csrf(&self, sent: &str) -> Result<(), PageError> {
        if crate::control::same_secret(sent, &self.csrf) {
            Ok(())
        } else {
            Err(PageError::page(pages::error_page(
                Some(self),
                StatusCode::FORBIDDEN,
                "the form is out of date or did not come from this dashboard; reload the page and try again"
                    .to_owned(),
            )))
        }
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let to_login = || Redirect::to("/ui/login").into_response();
        let session = session_cookie(&parts.headers).ok_or_else(to_login)?;
        let token = state.sessions.token_of(&session).ok_or_else(to_login)?;
        let Some(caller) = super::auth::caller_of(state, token) else {
            // The token was revoked since: the session ends with it.
            state.sessions.close(&session);
            return Err(to_login());
        };
        if parts.method == axum::http::Method::POST && foreign_origin(&parts.headers) {
            return Err(pages::error_page(
                None,
                StatusCode::FORBIDDEN,
                "a form from another site cannot act here".to_owned(),
            ));
        }
        let csrf = state.sessions.csrf(&session);
        Ok(Viewer {
            caller,
            session,
            csrf,
        })
    }
}

/// A control-plane refusal as a page with its status and message.
impl From<(&Viewer, ApiError)> for PageError {
    fn from((viewer, e): (&Viewer, ApiError)) -> Self {
        PageError::page(pages::error_page(Some(viewer), e.status, e.message))
    }
}

/// An error already rendered as a page.
pub struct PageError(Box<Response>);

impl PageError {
    fn page(response: Response) -> Self {
        Self(Box::new(response))
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        *self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_open_resolve_and_close_and_csrf_tokens_are_per_session() {
        let sessions = Sessions::new().expect("randomness");
        let a = sessions.open("hash-a".to_owned()).expect("open").expect("room");
        let b = sessions.open("hash-b".to_owned()).expect("open").expect("room");
        assert_ne!(a, b);
        assert_eq!(sessions.token_of(&a).as_deref(), Some("hash-a"));
        assert_ne!(sessions.csrf(&a), sessions.csrf(&b));
        assert_eq!(sessions.csrf(&a), sessions.csrf(&a));
        sessions.close(&a);
        assert_eq!(sessions.token_of(&a), None);
        assert_eq!(sessions.token_of("not-a-session"), None);
        // One token logging in again and again only ever closes its own oldest sessions.
        let first = sessions.open("hash-c".to_owned()).expect("open").expect("room");
        for _ in 0..SESSIONS_PER_TOKEN * 3 {
            sessions.open("hash-c".to_owned()).expect("open").expect("room");
        }
        assert_eq!(sessions.token_of(&first), None, "its own oldest went");
        assert_eq!(sessions.token_of(&b).as_deref(), Some("hash-b"), "nobody else's");
        let held = sessions
            .lock()
            .values()
            .filter(|s| s.token_sha256 == "hash-c")
            .count();
        assert_eq!(held, SESSIONS_PER_TOKEN);
    }

    #[test]
    fn the_cookie_is_found_among_others_and_origins_are_compared_with_the_host() {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_static("theme=dark; stackdns_ui=abc123; x=y"),
        );
        assert_eq!(session_cookie(&h).as_deref(), Some("abc123"));
        h.insert(HOST, HeaderValue::from_static("127.0.0.1:8053"));
        assert!(!foreign_origin(&h), "no Origin: not a cross-site form");
        h.insert(ORIGIN, HeaderValue::from_static("http://127.0.0.1:8053"));
        assert!(!foreign_origin(&h));
        h.insert(ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(foreign_origin(&h));
        h.insert(ORIGIN, HeaderValue::from_static("null"));
        assert!(foreign_origin(&h));
    }
}
