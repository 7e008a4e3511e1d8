//! Nodes, their leases and the containers their agents report (design §4).

use std::net::IpAddr;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};

use super::error::ApiError;
use super::query::NoQuery;
use super::types::*;
use super::{AppState, JsonBody, Routes, query, render};
use crate::control::{Caller, Effect, NodeRegistered, NodeSpec, Report};
use crate::model::{ContainerKey, Label, Port};

pub fn routes() -> Routes {
    Routes::new()
        .route("/v1/nodes", get(list_nodes))
        .route(
            "/v1/nodes/{node}",
            put(put_node).get(get_node).delete(delete_node),
        )
        .route("/v1/nodes/{node}/token", post(rotate_token))
        .route("/v1/nodes/{node}/heartbeat", post(heartbeat))
        .route(
            "/v1/nodes/{node}/containers",
            put(replace_containers).get(list_containers),
        )
        .route(
            "/v1/nodes/{node}/containers/{user}/{stack}/{container}",
            put(put_container).delete(delete_container),
        )
}

type Reply<T> = Result<(StatusCode, Json<T>), ApiError>;

fn ok<T>(body: T) -> Reply<T> {
    Ok((StatusCode::OK, Json(body)))
}

fn parse_ip(field: &'static str, value: &str) -> Result<IpAddr, ApiError> {
    value.trim().parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_address",
            format!("{field} {value:?} is not an IPv4 or IPv6 address"),
        )
    })
}

fn check_ports(ports: &[Port]) -> Result<(), ApiError> {
    for p in ports {
        if p.container_port == 0 || p.host_port == Some(0) {
            return Err(ApiError::bad_request(
                "invalid_port",
                format!("ports: {p:?} has port 0; ports are 1-65535"),
            ));
        }
    }
    Ok(())
}

pub(super) fn node_spec(req: NodeRequest) -> Result<NodeSpec, ApiError> {
    let tags = req
        .tags
        .iter()
        .map(|t| Label::parse("tag", t))
        .collect::<Result<Vec<_>, _>>()?;
    for (k, v) in &req.labels {
        if k.is_empty() || k.len() > 253 || v.len() > 253 {
            return Err(ApiError::bad_request(
                "invalid_value",
                format!("labels: {k:?}={v:?}: keys must be 1-253 characters and values at most 253"),
            ));
        }
    }
    if let Some(c) = req.capacity
        && (c.memory_mb == 0 || !(c.cpus.is_finite() && c.cpus > 0.0))
    {
        return Err(ApiError::bad_request(
            "invalid_value",
            format!(
                "capacity: memory_mb ({}) and cpus ({}) must be positive",
                c.memory_mb, c.cpus
            ),
        ));
    }
    let tenants = req
        .tenants
        .map(|users| {
            users
                .iter()
                .map(|u| Label::parse("tenants", u))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    Ok(NodeSpec {
        address: parse_ip("address", &req.address)?,
        labels: req.labels,
        tags,
        capacity: req.capacity,
        tenants,
    })
}

/// A node write's answer: 201 with the token when the node was created.
fn registered(done: crate::control::Committed<NodeRegistered>, apex: &str) -> Reply<NodeResponse> {
    let NodeRegistered {
        status,
        created,
        token,
    } = done.value;
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = NodeResponse {
        node: render::node(&status, apex),
        token,
        serial: done.serial,
    };
    Ok((code, Json(body)))
}

async fn put_node(
    State(app): State<AppState>,
    caller: Caller,
    _: NoQuery,
    Path(node): Path<String>,
    JsonBody(req): JsonBody<NodeRequest>,
) -> Reply<NodeResponse> {
    let name = Label::parse("node", &node)?;
    let spec = node_spec(req)?;
    let done = app.control.register_node(caller, name, spec).await?;
    if done.value.created {
        let node = &done.value.status.node;
        tracing::info!(node = %node.name, address = %node.address, "node registered");
    }
    registered(done, &app.apex)
}

async fn get_node(
    State(app): State<AppState>,
    caller: Caller,
    _: NoQuery,
    Path(node): Path<String>,
) -> Reply<NodeResponse> {
    let name = Label::parse("node", &node)?;
    let done = app.control.node(caller, name).await?;
    ok(NodeResponse {
        node: render::node(&done.value, &app.apex),
        token: None,
        serial: done.serial,
    })
}

async fn list_nodes(State(app): State<AppState>, caller: Caller, _: NoQuery) -> Reply<NodeList> {
    let done = app.control.nodes(caller).await?;
    ok(NodeList {
        nodes: done.value.iter().map(|n| render::node(n, &app.apex)).collect(),
        serial: done.serial,
    })
}

async fn delete_node(
    State(app): State<AppState>,
    caller: Caller,
    _: NoQuery,
    Path(node): Path<String>,
) -> Reply<SerialResponse> {
    let name = Label::parse("node", &node)?;
    let done = app.control.delete_node(caller, name).await?;
    tracing::info!(node = %done.value.name, "node deleted");
    ok(SerialResponse { serial: done.serial })
}

async fn rotate_token(
    State(app): State<AppState>,
    caller: Caller,
    _: NoQuery,
    Path(node): Path<String>,
) -> Reply<NodeResponse> {
    let name = Label::parse("node", &node)?;
    let done = app.control.rotate_node_token(caller, name).await?;
    registered(done, &app.apex)
}

async fn heartbeat(
    State(app): State<AppState>,
    caller: Caller,
    _: NoQuery,
    Path(node): Path<String>,
) -> Reply<HeartbeatResponse> {
    let name = Label::parse("node", &node)?;
    let done = app.control.heartbeat(caller, name.clone()).await?;
    ok(HeartbeatResponse {
        node: name.to_string(),
        state: "live".to_owned(),
        lease_seconds: app.node_ttl.as_secs(),
        address: done.value.to_string(),
        serial: done.serial,
    })
}

pub(super) fn container_key(user: &str, stack: &str, name: &str) -> Result<ContainerKey, ApiError> {
    Ok(ContainerKey {
        user: Label::parse("user", user)?,
        stack: Label::parse("stack", stack)?,
        name: Label::parse("container", name)?,
    })
}

/// Longest `detail` an agent may attach to a report.
const MAX_DETAIL: usize = 200;

pub(super) fn check_detail(detail: Option<&str>) -> Result<(), ApiError> {
    match detail {
        Some(d) if d.chars().count() > MAX_DETAIL || d.chars().any(char::is_control) => {
            Err(ApiError::bad_request(
                "invalid_value",
                format!("detail: at most {MAX_DETAIL} characters of text without control characters"),
            ))
        }
        _ => Ok(()),
    }
}

pub(super) fn report(
    service: &str,
    address: Option<&str>,
    ports: Vec<Port>,
    generation: u64,
    ready: bool,
    detail: Option<String>,
) -> Result<Report, ApiError> {
    check_ports(&ports)?;
    check_detail(detail.as_deref())?;
    Ok(Report {
        service: Label::parse("service", service)?,
        address: address.map(|a| parse_ip("address", a)).transpose()?,
        ports,
        generation,
        ready,
        detail,
    })
}

async fn put_container(
    State(app): State<AppState>,
    caller: Caller,
    _: NoQuery,
    Path((node, user, stack, container)): Path<(String, String, String, String)>,
    JsonBody(req): JsonBody<ContainerRequest>,
) -> Reply<ContainerResponse> {
    let node = Label::parse("node", &node)?;
    let key = container_key(&user, &stack, &container)?;
    let report = report(
        &req.service,
        req.address.as_deref(),
        req.ports,
        req.generation,
        req.ready,
        req.detail,
    )?;
    let done = app.control.put_container(caller, node, key, report).await?;
    let (c, effect) = done.value;
    let code = if effect == Effect::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = ContainerResponse {
        container: render::container(&c, &app.apex),
        serial: done.serial,
    };
    Ok((code, Json(body)))
}

/// `DELETE …/containers/{user}/{stack}/{container}?generation=N&detail=…`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StopParams {
    #[serde(default)]
    generation: Option<u64>,
    /// Why it stopped ("exited with status 1"), shown by `stack ps`.
    #[serde(default)]
    pub(super) detail: Option<String>,
}

async fn delete_container(
    State(app): State<AppState>,
    caller: Caller,
    Path((node, user, stack, container)): Path<(String, String, String, String)>,
    RawQuery(raw): RawQuery,
) -> Reply<ContainerResponse> {
    let node = Label::parse("node", &node)?;
    let key = container_key(&user, &stack, &container)?;
    let params: StopParams = query::parse(raw.as_deref())?;
    check_detail(params.detail.as_deref())?;
    let done = app
        .control
        .stop_container(caller, node, key, params.generation, params.detail)
        .await?;
    ok(ContainerResponse {
        container: render::container(&done.value, &app.apex),
        serial: done.serial,
    })
}

/// The items of an anti-entropy list, validated; the first bad one refuses the list.
pub(super) fn list_reports(req: ContainerListRequest) -> Result<Vec<(ContainerKey, Report)>, ApiError> {
    req.containers
        .into_iter()
        .map(|c| {
            let key = container_key(&c.user, &c.stack, &c.name)?;
            Ok((
                key,
                report(
                    &c.service,
                    c.address.as_deref(),
                    c.ports,
                    c.generation,
                    c.ready,
                    c.detail,
                )?,
            ))
        })
        .collect()
}

async fn replace_containers(
    State(app): State<AppState>,
    caller: Caller,
    _: NoQuery,
    Path(node): Path<String>,
    JsonBody(req): JsonBody<ContainerListRequest>,
) -> Reply<ContainerListResponse> {
    let node = Label::parse("node", &node)?;
    let reports = list_reports(req)?;
    let done = app.control.replace_containers(caller, node, reports).await?;
    let (s, running) = done.value;
    ok(ContainerListResponse {
        containers: running.iter().map(|c| render::container(c, &app.apex)).collect(),
        started: s.started,
        updated: s.updated,
        stopped: s.stopped,
        unchanged: s.unchanged,
        serial: done.serial,
    })
}

async fn list_containers(
    State(app): State<AppState>,
    caller: Caller,
    _: NoQuery,
    Path(node): Path<String>,
) -> Reply<ContainerList> {
    let node = Label::parse("node", &node)?;
    let done = app.control.node_containers(caller, node).await?;
    ok(ContainerList {
        containers: done
            .value
            .iter()
            .map(|c| render::container(c, &app.apex))
            .collect(),
        serial: done.serial,
    })
}
