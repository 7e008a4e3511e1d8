//! Nodes, their leases and the containers their agents report (design §4).

use std::net::IpAddr;
use std::time::Instant;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};

use super::auth::{Admin, new_token};
use super::error::ApiError;
use super::types::*;
use super::{AppState, JsonBody};
use crate::control::state::{Caller, Effect, NodeSpec, NodeState, Report};
use crate::model::{Container, ContainerKey, Label, Port};

pub fn router() -> Router<AppState> {
    Router::new()
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

fn node_spec(req: NodeRequest) -> Result<NodeSpec, ApiError> {
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
    if let Some(c) = req.capacity {
        if c.memory_mb == 0 || !(c.cpus.is_finite() && c.cpus > 0.0) {
            return Err(ApiError::bad_request(
                "invalid_value",
                format!(
                    "capacity: memory_mb ({}) and cpus ({}) must be positive",
                    c.memory_mb, c.cpus
                ),
            ));
        }
    }
    Ok(NodeSpec {
        address: parse_ip("address", &req.address)?,
        labels: req.labels,
        tags,
        capacity: req.capacity,
    })
}

/// How a node looks from the API at `now`.
fn node_info(n: &NodeState, running: usize, now: Instant, apex: &str) -> NodeInfo {
    NodeInfo {
        name: n.node.name.to_string(),
        address: n.node.address.to_string(),
        labels: n.node.labels.clone(),
        tags: n.node.tags.iter().map(ToString::to_string).collect(),
        capacity: n.node.capacity,
        state: if n.live { "live" } else { "lost" }.to_owned(),
        last_heartbeat_seconds_ago: now.saturating_duration_since(n.last_seen).as_secs_f64(),
        containers_running: running,
        fqdn: format!("{}.node.{apex}", n.node.name),
    }
}

fn container_info(c: &Container, apex: &str) -> ContainerInfo {
    let k = &c.key;
    ContainerInfo {
        user: k.user.to_string(),
        stack: k.stack.to_string(),
        name: k.name.to_string(),
        service: c.service.to_string(),
        node: c.node.to_string(),
        address: c.address.map(|a| a.to_string()),
        ports: c.ports.clone(),
        generation: c.generation,
        state: if c.running { "running" } else { "stopped" }.to_owned(),
        fqdn: format!("{}.{}.{}.cont.{apex}", k.name, k.stack, k.user),
        service_fqdn: format!("{}.{}.{}.svc.{apex}", c.service, k.stack, k.user),
    }
}

async fn put_node(
    State(app): State<AppState>,
    _: Admin,
    Path(node): Path<String>,
    JsonBody(req): JsonBody<NodeRequest>,
) -> Reply<NodeResponse> {
    let name = Label::parse("node", &node)?;
    let spec = node_spec(req)?;
    let (token, token_hash) = new_token()?;
    let apex = app.apex.clone();
    let done = app
        .control
        .run(move |ctx| {
            let effect = ctx.state.put_node(&name, spec, token_hash, ctx.now, ctx.changes);
            let n = &ctx.state.nodes[&name];
            let running = ctx.state.running_on(&name).count();
            Ok((effect, node_info(n, running, ctx.now, &apex)))
        })
        .await?;
    let (effect, node) = done.value;
    let created = effect == Effect::Created;
    if created {
        tracing::info!(node = %node.name, address = %node.address, "node registered");
    }
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(NodeResponse {
            node,
            token: created.then_some(token),
            serial: done.serial,
        }),
    ))
}

async fn get_node(State(app): State<AppState>, _: Admin, Path(node): Path<String>) -> Reply<NodeResponse> {
    let name = Label::parse("node", &node)?;
    let apex = app.apex.clone();
    let done = app
        .control
        .run(move |ctx| {
            let n = ctx
                .state
                .nodes
                .get(&name)
                .ok_or_else(|| crate::control::ControlError::NotFound {
                    what: "node",
                    name: name.to_string(),
                })?;
            Ok(node_info(n, ctx.state.running_on(&name).count(), ctx.now, &apex))
        })
        .await?;
    ok(NodeResponse {
        node: done.value,
        token: None,
        serial: done.serial,
    })
}

async fn list_nodes(State(app): State<AppState>, _: Admin) -> Reply<NodeList> {
    let apex = app.apex.clone();
    let done = app
        .control
        .run(move |ctx| {
            Ok(ctx
                .state
                .nodes
                .values()
                .map(|n| node_info(n, ctx.state.running_on(&n.node.name).count(), ctx.now, &apex))
                .collect())
        })
        .await?;
    ok(NodeList {
        nodes: done.value,
        serial: done.serial,
    })
}

async fn delete_node(
    State(app): State<AppState>,
    _: Admin,
    Path(node): Path<String>,
) -> Reply<SerialResponse> {
    let name = Label::parse("node", &node)?;
    let done = app
        .control
        .run(move |ctx| ctx.state.delete_node(&name, ctx.changes))
        .await?;
    tracing::info!(node = %done.value.name, "node deleted");
    ok(SerialResponse { serial: done.serial })
}

async fn rotate_token(
    State(app): State<AppState>,
    _: Admin,
    Path(node): Path<String>,
) -> Reply<NodeResponse> {
    let name = Label::parse("node", &node)?;
    let (token, token_hash) = new_token()?;
    let apex = app.apex.clone();
    let done = app
        .control
        .run(move |ctx| {
            ctx.state.set_node_token(&name, token_hash, ctx.changes)?;
            let n = &ctx.state.nodes[&name];
            Ok(node_info(n, ctx.state.running_on(&name).count(), ctx.now, &apex))
        })
        .await?;
    ok(NodeResponse {
        node: done.value,
        token: Some(token),
        serial: done.serial,
    })
}

async fn heartbeat(
    State(app): State<AppState>,
    caller: Caller,
    Path(node): Path<String>,
) -> Reply<HeartbeatResponse> {
    let name = Label::parse("node", &node)?;
    let done = app
        .control
        .run(move |ctx| {
            ctx.state.authorize_node(&caller, &name)?;
            ctx.state.heartbeat(&name, ctx.now, ctx.changes)?;
            Ok(name)
        })
        .await?;
    ok(HeartbeatResponse {
        node: done.value.to_string(),
        state: "live".to_owned(),
        lease_seconds: app.node_ttl.as_secs(),
        serial: done.serial,
    })
}

fn container_key(user: &str, stack: &str, name: &str) -> Result<ContainerKey, ApiError> {
    Ok(ContainerKey {
        user: Label::parse("user", user)?,
        stack: Label::parse("stack", stack)?,
        name: Label::parse("container", name)?,
    })
}

fn report(
    service: &str,
    address: Option<&str>,
    ports: Vec<Port>,
    generation: u64,
) -> Result<Report, ApiError> {
    check_ports(&ports)?;
    Ok(Report {
        service: Label::parse("service", service)?,
        address: address.map(|a| parse_ip("address", a)).transpose()?,
        ports,
        generation,
    })
}

async fn put_container(
    State(app): State<AppState>,
    caller: Caller,
    Path((node, user, stack, container)): Path<(String, String, String, String)>,
    JsonBody(req): JsonBody<ContainerRequest>,
) -> Reply<ContainerResponse> {
    let node = Label::parse("node", &node)?;
    let key = container_key(&user, &stack, &container)?;
    let report = report(&req.service, req.address.as_deref(), req.ports, req.generation)?;
    let done = app
        .control
        .run(move |ctx| {
            ctx.state.authorize_node(&caller, &node)?;
            ctx.state.put_container(&node, key, report, ctx.now, ctx.changes)
        })
        .await?;
    let (c, effect) = done.value;
    Ok((
        if effect == Effect::Created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(ContainerResponse {
            container: container_info(&c, &app.apex),
            serial: done.serial,
        }),
    ))
}

/// `?generation=N`, parsed here so a bad value gets the API's error shape.
fn generation_param(query: Option<&str>) -> Result<Option<u64>, ApiError> {
    let mut generation = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "generation" => {
                generation = Some(value.parse().map_err(|_| {
                    ApiError::bad_request(
                        "invalid_value",
                        format!("generation {value:?} is not a non-negative integer"),
                    )
                })?);
            }
            other => {
                return Err(ApiError::bad_request(
                    "unknown_parameter",
                    format!("unknown query parameter {other:?}; only `generation` is accepted"),
                ));
            }
        }
    }
    Ok(generation)
}

async fn delete_container(
    State(app): State<AppState>,
    caller: Caller,
    Path((node, user, stack, container)): Path<(String, String, String, String)>,
    RawQuery(query): RawQuery,
) -> Reply<ContainerResponse> {
    let node = Label::parse("node", &node)?;
    let key = container_key(&user, &stack, &container)?;
    let generation = generation_param(query.as_deref())?;
    let done = app
        .control
        .run(move |ctx| {
            ctx.state.authorize_node(&caller, &node)?;
            ctx.state
                .delete_container(&node, &key, generation, ctx.now, ctx.changes)
        })
        .await?;
    ok(ContainerResponse {
        container: container_info(&done.value.0, &app.apex),
        serial: done.serial,
    })
}

async fn replace_containers(
    State(app): State<AppState>,
    caller: Caller,
    Path(node): Path<String>,
    JsonBody(req): JsonBody<ContainerListRequest>,
) -> Reply<ContainerListResponse> {
    let node = Label::parse("node", &node)?;
    let reports = req
        .containers
        .into_iter()
        .map(|c| {
            let key = container_key(&c.user, &c.stack, &c.name)?;
            Ok((
                key,
                report(&c.service, c.address.as_deref(), c.ports, c.generation)?,
            ))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let apex = app.apex.clone();
    let done = app
        .control
        .run(move |ctx| {
            ctx.state.authorize_node(&caller, &node)?;
            let summary = ctx
                .state
                .replace_containers(&node, reports, ctx.now, ctx.changes)?;
            let running = ctx
                .state
                .running_on(&node)
                .map(|c| container_info(c, &apex))
                .collect();
            Ok((summary, running))
        })
        .await?;
    let (s, containers) = done.value;
    ok(ContainerListResponse {
        containers,
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
    Path(node): Path<String>,
) -> Reply<ContainerList> {
    let node = Label::parse("node", &node)?;
    let apex = app.apex.clone();
    let done = app
        .control
        .run(move |ctx| {
            ctx.state.authorize_node(&caller, &node)?;
            if !ctx.state.nodes.contains_key(&node) {
                return Err(crate::control::ControlError::NotFound {
                    what: "node",
                    name: node.to_string(),
                });
            }
            Ok(ctx
                .state
                .running_on(&node)
                .map(|c| container_info(c, &apex))
                .collect())
        })
        .await?;
    ok(ContainerList {
        containers: done.value,
        serial: done.serial,
    })
}
