//! Stacks (design §4–5): apply a Stackfile, show what runs where, scale, delete.
//!
//! Users see only their own stacks: any other user's stack answers 404, whether it exists or
//! not, so nothing leaks about who runs what.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header::CONTENT_TYPE};
use axum::routing::{get, patch, put};
use axum::{Json, Router};

use super::error::ApiError;
use super::types::*;
use super::{AppState, JsonBody, RawBody};
use crate::control::ControlError;
use crate::control::state::{Caller, State as ControlState};
use crate::model::{ContainerKey, Label, ServiceKey};
use crate::placement::{Assignment, Change, ServiceSpec};
use crate::stackfile::Stackfile;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/stacks/{user}", get(list))
        .route("/v1/stacks/{user}/{stack}", put(apply).get(show).delete(remove))
        .route("/v1/stacks/{user}/{stack}/services/{service}", patch(scale))
}

/// Node tokens have no business with stacks: 403 (users see 404 for others' stacks instead).
fn refuse_nodes(caller: &Caller) -> Result<(), ApiError> {
    match caller {
        Caller::Node { .. } => Err(ApiError::forbidden("a node token cannot act on stacks")),
        _ => Ok(()),
    }
}

/// Checks that `caller` may see the stack and that it exists: both failures are the same 404.
fn existing(state: &ControlState, caller: &Caller, user: &Label, stack: &Label) -> Result<(), ControlError> {
    let exists = state.stacks.stacks.contains_key(&(user.clone(), stack.clone()));
    if state.may_act_for(caller, user) && exists {
        Ok(())
    } else {
        Err(not_found(user, stack))
    }
}

fn not_found(user: &Label, stack: &Label) -> ControlError {
    ControlError::NotFound {
        what: "stack",
        name: format!("{user}/{stack}"),
    }
}

/// The services placement works from, as the Stackfile declares them.
fn specs(user: &Label, stack: &Label, file: &Stackfile) -> Vec<ServiceSpec> {
    file.services
        .iter()
        .map(|(name, def)| ServiceSpec {
            key: ServiceKey {
                user: user.clone(),
                stack: stack.clone(),
                service: name.clone(),
            },
            target: def.target_num_containers,
            strategy: def.deployment_strategy,
            tags: def.tags.iter().cloned().collect(),
            ports: def.ports.clone(),
            mem_limit_mb: def.mem_limit_mb,
            spec_hash: def.spec_hash(),
        })
        .collect()
}

/// `?dry_run=true` and nothing else.
fn dry_run_param(query: Option<&str>) -> Result<bool, ApiError> {
    let mut dry_run = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "true")) {
            ("dry_run", "true" | "1") => dry_run = true,
            ("dry_run", "false" | "0") => dry_run = false,
            (key, value) => {
                return Err(ApiError::bad_request(
                    "unknown_parameter",
                    format!("query parameter {key}={value:?}: only dry_run=true|false is accepted"),
                ));
            }
        }
    }
    Ok(dry_run)
}

/// `PUT /v1/stacks/{user}/{stack}`: the whole stack as declared; placement decides or refuses.
async fn apply(
    State(app): State<AppState>,
    caller: Caller,
    Path((user, stack)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<StackResponse>), ApiError> {
    refuse_nodes(&caller)?;
    let user = Label::parse("user", &user)?;
    let stack = Label::parse("stack", &stack)?;
    let dry_run = dry_run_param(query.as_deref())?;
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let file = crate::stackfile::parse(&body, content_type.as_deref()).map_err(|e| {
        let status = if e.code() == "too_large" {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(status, e.code(), e.to_string())
    })?;
    let body = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::bad_request("invalid_body", "the Stackfile is not UTF-8"))?;
    let apex = app.apex.clone();
    let done = app
        .control
        .run(move |ctx| {
            if !ctx.state.may_act_for(&caller, &user) {
                return Err(not_found(&user, &stack));
            }
            let services = specs(&user, &stack, &file);
            let change = Change::Apply {
                user: user.clone(),
                stack: stack.clone(),
                services: services.clone(),
            };
            let plan = ctx.state.plan(&change, dry_run)?;
            let created = !ctx
                .state
                .stacks
                .stacks
                .contains_key(&(user.clone(), stack.clone()));
            if dry_run {
                let view = preview(
                    ctx.state,
                    &user,
                    &stack,
                    &file,
                    &plan.services,
                    &plan.assignments,
                    &apex,
                );
                let verdicts = serde_json::to_value(&plan.verdicts).ok();
                return Ok((created, view, None, verdicts));
            }
            let applied = ctx.state.apply_plan(&plan, ctx.changes);
            let record = crate::store::StackRecord {
                user: user.clone(),
                stack: stack.clone(),
                body,
                content_type,
                file: file.clone(),
                services: plan
                    .services
                    .iter()
                    .filter(|s| s.key.user == user && s.key.stack == stack)
                    .cloned()
                    .collect(),
            };
            ctx.state.put_stack(record, ctx.changes);
            let view = view(ctx.state, &user, &stack, &apex).ok_or_else(|| not_found(&user, &stack))?;
            Ok((created, view, Some(applied), None))
        })
        .await?;
    let (created, stack, applied, verdicts) = done.value;
    let status = if created && !dry_run {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(StackResponse {
            stack,
            dry_run,
            changes: applied,
            verdicts,
            serial: done.serial,
        }),
    ))
}

/// What a stack looks like: declared services, their endpoints, and each container with the
/// node placement chose, its host ports and whether its agent reports it running.
pub fn view(state: &ControlState, user: &Label, stack: &Label, apex: &str) -> Option<StackView> {
    let s = state.stacks.stacks.get(&(user.clone(), stack.clone()))?;
    let assignments: Vec<Assignment> = state
        .stacks
        .assignments
        .values()
        .filter(|a| &a.service.user == user && &a.service.stack == stack)
        .cloned()
        .collect();
    Some(preview(
        state,
        user,
        stack,
        &s.file,
        &s.services,
        &assignments,
        apex,
    ))
}

/// The view of a stack with the given file and assignments (a dry run's, or the current ones;
/// those of other stacks are left out).
fn preview(
    state: &ControlState,
    user: &Label,
    stack: &Label,
    file: &Stackfile,
    specs: &[ServiceSpec],
    assignments: &[Assignment],
    apex: &str,
) -> StackView {
    let mut services = Vec::new();
    for (name, def) in &file.services {
        let key = ServiceKey {
            user: user.clone(),
            stack: stack.clone(),
            service: name.clone(),
        };
        let target = specs
            .iter()
            .find(|spec| spec.key == key)
            .map_or(def.target_num_containers, |spec| spec.target);
        let running = state
            .containers_of_service(&key)
            .filter(|c| state.live_address(c).is_some())
            .count();
        let fqdn = format!("{name}.{stack}.{user}.svc.{apex}");
        services.push(ServiceView {
            name: name.to_string(),
            image: def.image.clone(),
            strategy: def.deployment_strategy,
            target_num_containers: target,
            assigned: assignments.iter().filter(|a| a.service == key).count(),
            running,
            srv: def
                .ports
                .iter()
                .map(|p| format!("_{}._{}.{fqdn}", p.container_port, p.protocol.as_str()))
                .collect(),
            endpoint: fqdn,
        });
    }
    let containers = assignments
        .iter()
        .filter(|a| &a.service.user == user && &a.service.stack == stack)
        .map(|a| {
            let observed = state.containers.get(&a.container);
            let state_word = match observed {
                Some(c) if c.running && c.node == a.node && c.generation >= a.generation => {
                    if state.live_address(c).is_some() {
                        "running"
                    } else {
                        "lost"
                    }
                }
                _ => "assigned",
            };
            container_view(a, state_word, apex)
        })
        .collect();
    StackView {
        user: user.to_string(),
        stack: stack.to_string(),
        services,
        containers,
    }
}

fn container_view(a: &Assignment, state: &str, apex: &str) -> StackContainer {
    let k: &ContainerKey = &a.container;
    StackContainer {
        name: k.name.to_string(),
        service: a.service.service.to_string(),
        node: a.node.to_string(),
        ports: a.ports.clone(),
        generation: a.generation,
        state: state.to_owned(),
        endpoint: format!("{}.{}.{}.cont.{apex}", k.name, k.stack, k.user),
    }
}

async fn show(
    State(app): State<AppState>,
    caller: Caller,
    Path((user, stack)): Path<(String, String)>,
) -> Result<Json<StackResponse>, ApiError> {
    refuse_nodes(&caller)?;
    let user = Label::parse("user", &user)?;
    let stack = Label::parse("stack", &stack)?;
    let apex = app.apex.clone();
    let done = app
        .control
        .run(move |ctx| {
            let allowed = ctx.state.may_act_for(&caller, &user);
            let found = allowed.then(|| view(ctx.state, &user, &stack, &apex)).flatten();
            found.ok_or_else(|| not_found(&user, &stack))
        })
        .await?;
    Ok(Json(StackResponse {
        stack: done.value,
        dry_run: false,
        changes: None,
        verdicts: None,
        serial: done.serial,
    }))
}

async fn list(
    State(app): State<AppState>,
    caller: Caller,
    Path(user): Path<String>,
) -> Result<Json<StackList>, ApiError> {
    refuse_nodes(&caller)?;
    let user = Label::parse("user", &user)?;
    let name = user.clone();
    let done = app
        .control
        .run(move |ctx| {
            if !ctx.state.may_act_for(&caller, &name) {
                return Ok(Vec::new()); // Nothing to see, and nothing said about why.
            }
            Ok(ctx
                .state
                .stacks
                .stacks
                .keys()
                .filter(|(u, _)| u == &name)
                .map(|(_, s)| s.to_string())
                .collect())
        })
        .await?;
    Ok(Json(StackList {
        user: user.to_string(),
        stacks: done.value,
        serial: done.serial,
    }))
}

async fn scale(
    State(app): State<AppState>,
    caller: Caller,
    Path((user, stack, service)): Path<(String, String, String)>,
    JsonBody(req): JsonBody<ScaleRequest>,
) -> Result<Json<StackResponse>, ApiError> {
    refuse_nodes(&caller)?;
    let user = Label::parse("user", &user)?;
    let stack = Label::parse("stack", &stack)?;
    let service = Label::parse("service", &service)?;
    let apex = app.apex.clone();
    let done = app
        .control
        .run(move |ctx| {
            existing(ctx.state, &caller, &user, &stack)?;
            let key = ServiceKey {
                user: user.clone(),
                stack: stack.clone(),
                service,
            };
            let change = Change::Scale {
                service: key,
                target: req.target_num_containers,
            };
            let plan = ctx.state.plan(&change, false)?;
            let applied = ctx.state.apply_plan(&plan, ctx.changes);
            let view = view(ctx.state, &user, &stack, &apex).ok_or_else(|| not_found(&user, &stack))?;
            Ok((view, applied))
        })
        .await?;
    let (stack, applied) = done.value;
    Ok(Json(StackResponse {
        stack,
        dry_run: false,
        changes: Some(applied),
        verdicts: None,
        serial: done.serial,
    }))
}

async fn remove(
    State(app): State<AppState>,
    caller: Caller,
    Path((user, stack)): Path<(String, String)>,
) -> Result<Json<SerialResponse>, ApiError> {
    refuse_nodes(&caller)?;
    let user = Label::parse("user", &user)?;
    let stack = Label::parse("stack", &stack)?;
    let done = app
        .control
        .run(move |ctx| {
            existing(ctx.state, &caller, &user, &stack)?;
            let change = Change::DeleteStack {
                user: user.clone(),
                stack: stack.clone(),
            };
            let plan = ctx.state.plan(&change, false)?;
            ctx.state.apply_plan(&plan, ctx.changes);
            ctx.state.remove_stack(&user, &stack, ctx.changes)
        })
        .await?;
    Ok(Json(SerialResponse { serial: done.serial }))
}
