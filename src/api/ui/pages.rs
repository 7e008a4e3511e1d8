//! The dashboard's pages: each handler runs the control operations the API's endpoint would,
//! as the logged-in caller, and fills its template. Nothing here decides who may see what.

use std::collections::BTreeMap;
use std::time::SystemTime;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::header::{CONTENT_TYPE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::{PageError, SESSION_TTL, Viewer};
use crate::api::error::ApiError;
use crate::api::types::StackContainer;
use crate::api::{AppState, RawBody, render};
use crate::control::{Caller, EndpointFilter};
use crate::model::{Label, ServiceKey};

/// What the frame around every page shows.
struct Frame {
    who: Option<String>,
    section: &'static str,
    csrf: String,
    zone: String,
    serial: u32,
}

impl Frame {
    fn new(state: &AppState, viewer: Option<&Viewer>, section: &'static str) -> Self {
        Self {
            who: viewer.map(Viewer::who),
            section,
            csrf: viewer.map(|v| v.csrf.clone()).unwrap_or_default(),
            zone: state.apex.clone(),
            serial: state.control.snapshots().load().serial,
        }
    }
}

/// A rendered template as an HTML response with `status`.
fn html(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(body) => (
            status,
            [(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"))],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a dashboard page did not render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered\n",
            )
                .into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "ui/error.html")]
struct ErrorPage {
    frame: Frame,
    status: String,
    message: String,
}

/// An error as a page (with the header of a logged-in `viewer`, if any).
pub(super) fn error_page(viewer: Option<&Viewer>, status: StatusCode, message: String) -> Response {
    let frame = Frame {
        who: viewer.map(Viewer::who),
        section: "",
        csrf: viewer.map(|v| v.csrf.clone()).unwrap_or_default(),
        zone: String::new(),
        serial: 0,
    };
    let page = ErrorPage {
        frame,
        status: status.to_string(),
        message,
    };
    html(status, &page)
}

/// A control operation's refusal as a page.
fn refused(viewer: &Viewer, e: impl Into<ApiError>) -> PageError {
    PageError::from((viewer, e.into()))
}

#[derive(Template)]
#[template(path = "ui/login.html")]
struct LoginPage {
    frame: Frame,
    error: Option<String>,
    session_hours: u64,
}

fn login_page(state: &AppState, status: StatusCode, error: Option<String>) -> Response {
    let page = LoginPage {
        frame: Frame::new(state, None, "login"),
        error,
        session_hours: SESSION_TTL.as_secs() / 3600,
    };
    html(status, &page)
}

pub async fn login_form(State(state): State<AppState>) -> Response {
    login_page(&state, StatusCode::OK, None)
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// `POST /ui/login`: an admin or user token opens a session.
pub async fn login(State(state): State<AppState>, headers: HeaderMap, RawBody(body): RawBody) -> Response {
    if super::foreign_origin(&headers) {
        return error_page(
            None,
            StatusCode::FORBIDDEN,
            "a form from another site cannot log in here".to_owned(),
        );
    }
    let Ok(form) = serde_urlencoded::from_bytes::<LoginForm>(&body) else {
        return login_page(
            &state,
            StatusCode::BAD_REQUEST,
            Some("send the form with a token".to_owned()),
        );
    };
    let hashed = crate::control::hash_token(form.token.trim());
    match super::super::auth::caller_of(&state, hashed.clone()) {
        None => login_page(
            &state,
            StatusCode::UNAUTHORIZED,
            Some(
                "That token is not known: use the admin token or a user token (stackdns user token)."
                    .to_owned(),
            ),
        ),
        Some(Caller::Node { .. }) => login_page(
            &state,
            StatusCode::FORBIDDEN,
            Some(
                "A node token cannot log in to the dashboard: use the admin token or a user token."
                    .to_owned(),
            ),
        ),
        Some(_) => match state.sessions.open(hashed) {
            Ok(None) => login_page(
                &state,
                StatusCode::SERVICE_UNAVAILABLE,
                Some("The dashboard has as many sessions open as it keeps; try again later.".to_owned()),
            ),
            Ok(Some(id)) => {
                let mut response = Redirect::to("/ui").into_response();
                response.headers_mut().insert(SET_COOKIE, super::set_cookie(&id));
                response
            }
            Err(e) => error_page(
                None,
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot open a session: {e}"),
            ),
        },
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /ui/logout`.
pub async fn logout(State(state): State<AppState>, viewer: Viewer, RawBody(body): RawBody) -> Response {
    let form: CsrfForm = serde_urlencoded::from_bytes(&body).unwrap_or(CsrfForm { csrf: String::new() });
    if let Err(refusal) = viewer.check_csrf(&form.csrf) {
        return refusal.into_response();
    }
    state.sessions.close(&viewer.session);
    let mut response = Redirect::to("/ui/login").into_response();
    response.headers_mut().insert(SET_COOKIE, super::clear_cookie());
    response
}

/// A service's row: its DNS names, where it answers, running against desired.
struct ServiceRow {
    name: String,
    image: String,
    endpoint: String,
    srv: Vec<String>,
    /// `address:port` of each running container's published ports.
    endpoints: Vec<String>,
    running: usize,
    assigned: usize,
    desired: u32,
    short: bool,
    /// Selected in the dry-run form.
    chosen: bool,
}

struct StackRow {
    user: String,
    stack: String,
    services: Vec<ServiceRow>,
}

/// `address:port` of every endpoint the viewer may see, by (user, stack, service).
async fn endpoints_by_service(
    state: &AppState,
    viewer: &Viewer,
    filter: EndpointFilter,
) -> Result<BTreeMap<(String, String, String), Vec<String>>, PageError> {
    let endpoints = state
        .control
        .endpoints(viewer.caller.clone(), filter)
        .await
        .map_err(|e| refused(viewer, e))?
        .value;
    let mut by_service: BTreeMap<_, Vec<String>> = BTreeMap::new();
    for e in endpoints {
        let key = (
            e.container.user.to_string(),
            e.container.stack.to_string(),
            e.service.to_string(),
        );
        by_service
            .entry(key)
            .or_default()
            .push(std::net::SocketAddr::new(e.address, e.port).to_string());
    }
    Ok(by_service)
}

fn service_rows(
    view: &crate::api::types::StackView,
    endpoints: &BTreeMap<(String, String, String), Vec<String>>,
    chosen: Option<&str>,
) -> Vec<ServiceRow> {
    view.services
        .iter()
        .enumerate()
        .map(|(i, s)| ServiceRow {
            name: s.name.clone(),
            image: s.image.clone(),
            endpoint: s.endpoint.clone(),
            srv: s.srv.clone(),
            endpoints: endpoints
                .get(&(view.user.clone(), view.stack.clone(), s.name.clone()))
                .cloned()
                .unwrap_or_default(),
            running: s.running,
            assigned: s.assigned,
            desired: s.target_num_containers,
            short: s.running < s.target_num_containers as usize,
            chosen: chosen.map_or(i == 0, |c| c == s.name),
        })
        .collect()
}

#[derive(Template)]
#[template(path = "ui/stacks.html")]
struct StacksPage {
    frame: Frame,
    admin: bool,
    stacks: Vec<StackRow>,
}

/// `GET /ui`: every stack the viewer may see, its services, names and endpoints.
pub async fn stacks(State(state): State<AppState>, viewer: Viewer) -> Result<Response, PageError> {
    let statuses = state
        .control
        .visible_stack_statuses(viewer.caller.clone())
        .await
        .map_err(|e| refused(&viewer, e))?
        .value;
    let endpoints = endpoints_by_service(&state, &viewer, EndpointFilter::default()).await?;
    let stacks = statuses
        .iter()
        .map(|status| {
            let view = render::stack(status, &state.apex);
            StackRow {
                services: service_rows(&view, &endpoints, None),
                user: view.user,
                stack: view.stack,
            }
        })
        .collect();
    let page = StacksPage {
        frame: Frame::new(&state, Some(&viewer), "stacks"),
        admin: viewer.is_admin(),
        stacks,
    };
    Ok(html(StatusCode::OK, &page))
}

/// One node's verdict on one container, as the dry run shows it.
struct VerdictRow {
    container: String,
    node: String,
    kind: &'static str,
    why: String,
}

/// What a dry run said.
struct Outcome {
    headline: String,
    error: Option<String>,
    verdicts: Vec<VerdictRow>,
    verdicts_total: usize,
}

#[derive(Template)]
#[template(path = "ui/stack.html")]
struct StackPage {
    frame: Frame,
    user: String,
    stack: String,
    services: Vec<ServiceRow>,
    containers: Vec<StackContainer>,
    target: u32,
    outcome: Option<Outcome>,
}

fn labels(user: &str, stack: &str) -> Result<(Label, Label), ApiError> {
    Ok((Label::parse("user", user)?, Label::parse("stack", stack)?))
}

/// The stack page, with a dry run's `outcome` and its form's choices if there was one.
async fn stack_page(
    state: &AppState,
    viewer: &Viewer,
    (user, stack): (Label, Label),
    form: Option<(&str, u32)>,
    outcome: Option<Outcome>,
) -> Result<Response, PageError> {
    let status = state
        .control
        .stack(viewer.caller.clone(), user.clone(), stack.clone())
        .await
        .map_err(|e| refused(viewer, e))?
        .value;
    let view = render::stack(&status, &state.apex);
    let filter = EndpointFilter {
        user: Some(user),
        stack: Some(stack),
        ..EndpointFilter::default()
    };
    let endpoints = endpoints_by_service(state, viewer, filter).await?;
    let services = service_rows(&view, &endpoints, form.map(|(s, _)| s));
    let target = form
        .map(|(_, t)| t)
        .or_else(|| services.iter().find(|s| s.chosen).map(|s| s.desired))
        .unwrap_or(1);
    let page = StackPage {
        frame: Frame::new(state, Some(viewer), "stacks"),
        user: view.user,
        stack: view.stack,
        services,
        containers: view.containers,
        target,
        outcome,
    };
    Ok(html(StatusCode::OK, &page))
}

/// `GET /ui/stacks/{user}/{stack}`: services, containers, and the dry-run form.
pub async fn stack(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((user, stack)): Path<(String, String)>,
) -> Result<Response, PageError> {
    let names = labels(&user, &stack).map_err(|e| refused(&viewer, e))?;
    stack_page(&state, &viewer, names, None, None).await
}

#[derive(Deserialize)]
struct DryRunForm {
    #[serde(default)]
    csrf: String,
    service: String,
    target: u32,
}

/// `POST /ui/stacks/{user}/{stack}/dry-run`: placement's plan for a new target, node by node,
/// applied to nothing.
pub async fn dry_run(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((user, stack)): Path<(String, String)>,
    RawBody(body): RawBody,
) -> Result<Response, PageError> {
    let names = labels(&user, &stack).map_err(|e| refused(&viewer, e))?;
    let form: DryRunForm = serde_urlencoded::from_bytes(&body).map_err(|e| {
        refused(
            &viewer,
            ApiError::bad_request("invalid_body", format!("the form: {e}")),
        )
    })?;
    viewer.check_csrf(&form.csrf)?;
    let service = Label::parse("service", &form.service).map_err(|e| refused(&viewer, e))?;
    let key = ServiceKey {
        user: names.0.clone(),
        stack: names.1.clone(),
        service,
    };
    let planned = state
        .control
        .scale_service(viewer.caller.clone(), key, form.target, true)
        .await;
    let outcome = match planned {
        Ok(done) => {
            let applied = done.value;
            let verdicts = applied.verdicts.unwrap_or_default();
            Outcome {
                headline: format!(
                    "{} at {} containers: placement would do this",
                    form.service, form.target
                ),
                error: None,
                verdicts_total: applied.verdicts_total.max(verdicts.len()),
                verdicts: verdicts
                    .into_iter()
                    .map(|v| {
                        let (kind, why) = match v.verdict {
                            crate::placement::Verdict::Chosen { containers, of_service } => (
                                "chosen",
                                format!("{containers} containers there, {of_service} of this service"),
                            ),
                            crate::placement::Verdict::Fits { containers, of_service } => (
                                "fits",
                                format!("ranked after the chosen node: {containers} containers, {of_service} of this service"),
                            ),
                            crate::placement::Verdict::Refused { reason } => ("refused", reason.to_string()),
                            crate::placement::Verdict::Stranded => {
                                ("stranded", "left on a node that is not live: no live node can take it".to_owned())
                            }
                        };
                        VerdictRow {
                            container: v.container.name.to_string(),
                            node: v.node.to_string(),
                            kind,
                            why,
                        }
                    })
                    .collect(),
            }
        }
        Err(e) => {
            let e = ApiError::from(e);
            if e.status == StatusCode::UNPROCESSABLE_ENTITY {
                Outcome {
                    headline: format!(
                        "{} at {} containers: placement refuses",
                        form.service, form.target
                    ),
                    error: Some(e.message),
                    verdicts: Vec::new(),
                    verdicts_total: 0,
                }
            } else {
                return Err(refused(&viewer, e));
            }
        }
    };
    stack_page(
        &state,
        &viewer,
        names,
        Some((&form.service, form.target)),
        Some(outcome),
    )
    .await
}

struct NodeRow {
    name: String,
    address: String,
    state: &'static str,
    /// Seconds until the lease lapses, while it is live.
    expires_in: Option<u64>,
    since_heartbeat: u64,
    running: usize,
    owner: String,
    tags: String,
}

#[derive(Template)]
#[template(path = "ui/nodes.html")]
struct NodesPage {
    frame: Frame,
    admin: bool,
    ttl_seconds: u64,
    nodes: Vec<NodeRow>,
}

/// `GET /ui/nodes`: every node for the admin, a user's own nodes for a user.
pub async fn nodes(State(state): State<AppState>, viewer: Viewer) -> Result<Response, PageError> {
    let nodes = state
        .control
        .nodes(viewer.caller.clone())
        .await
        .map_err(|e| refused(&viewer, e))?
        .value;
    let rows = nodes
        .into_iter()
        .map(|n| NodeRow {
            name: n.node.name.to_string(),
            address: n.node.address.to_string(),
            state: if n.live { "live" } else { "lost" },
            expires_in: n
                .live
                .then(|| state.node_ttl.saturating_sub(n.since_heartbeat).as_secs()),
            since_heartbeat: n.since_heartbeat.as_secs(),
            running: n.containers_running,
            owner: n
                .node
                .owner
                .as_ref()
                .map_or_else(|| "platform".to_owned(), ToString::to_string),
            tags: n
                .node
                .tags
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        })
        .collect();
    let page = NodesPage {
        frame: Frame::new(&state, Some(&viewer), "nodes"),
        admin: viewer.is_admin(),
        ttl_seconds: state.node_ttl.as_secs(),
        nodes: rows,
    };
    Ok(html(StatusCode::OK, &page))
}

struct SecondaryRow {
    address: String,
    serial: u32,
    kind: &'static str,
    ago: u64,
    current: bool,
}

#[derive(Template)]
#[template(path = "ui/zone.html")]
struct ZonePage {
    frame: Frame,
    admin: bool,
    zone: String,
    serial: u32,
    /// The zone's size, for the admin only (it tells how much every tenant runs).
    names: Option<usize>,
    journal: Option<usize>,
    secondaries: Vec<SecondaryRow>,
}

/// `GET /ui/zone`: the serial, and (for the admin) what each secondary last transferred.
pub async fn zone(State(state): State<AppState>, viewer: Viewer) -> Response {
    let snapshot = state.control.snapshots().load_full();
    let admin = viewer.is_admin();
    let secondaries = if admin {
        let now = SystemTime::now();
        state
            .control
            .metrics()
            .secondaries()
            .into_iter()
            .map(|(address, t)| SecondaryRow {
                address: address.to_string(),
                serial: t.serial,
                kind: t.kind,
                ago: now.duration_since(t.at).map_or(0, |d| d.as_secs()),
                current: t.serial == snapshot.serial,
            })
            .collect()
    } else {
        Vec::new()
    };
    let page = ZonePage {
        frame: Frame::new(&state, Some(&viewer), "zone"),
        admin,
        zone: state.apex.clone(),
        serial: snapshot.serial,
        names: admin.then(|| snapshot.len()),
        journal: admin.then(|| snapshot.journal.len()),
        secondaries,
    };
    html(StatusCode::OK, &page)
}
