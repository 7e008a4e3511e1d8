//! Each node's assignments (design §4): what placement wants its agent to run, with
//! Consul-style blocking queries (`?index=N&wait=30s`).

use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::routing::get;
use axum::{Json, Router};

use super::AppState;
use super::error::ApiError;
use super::types::{AssignmentItem, AssignmentList};
use crate::control::ControlError;
use crate::control::state::{Caller, State as ControlState};
use crate::model::Label;
use crate::placement::Assignment;

/// Longest a blocking assignment query may wait.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// Routes that may wait up to [`MAX_WAIT`], outside the API's request timeout.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/nodes/{node}/assignments", get(assignments))
}

/// `?index=N&wait=30s` of a blocking query.
fn blocking_params(query: Option<&str>) -> Result<(u64, Duration), ApiError> {
    let (mut index, mut wait) = (0u64, Duration::ZERO);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = |what: &str| ApiError::bad_request("invalid_value", format!("{key}={value:?}: {what}"));
        match key {
            "index" => index = value.parse().map_err(|_| bad("not a non-negative integer"))?,
            "wait" => {
                let (number, unit) = match value.strip_suffix("ms") {
                    Some(n) => (n, 0.001),
                    None => match value.strip_suffix('m') {
                        Some(n) => (n, 60.0),
                        None => (value.strip_suffix('s').unwrap_or(value), 1.0),
                    },
                };
                let seconds: f64 = number
                    .parse()
                    .map_err(|_| bad("a duration like 30s, 5m or 500ms"))?;
                if !seconds.is_finite() || seconds < 0.0 {
                    return Err(bad("a duration like 30s, 5m or 500ms"));
                }
                wait = Duration::try_from_secs_f64(seconds * unit)
                    .unwrap_or(MAX_WAIT)
                    .min(MAX_WAIT);
            }
            _ => {
                return Err(ApiError::bad_request(
                    "unknown_parameter",
                    format!("unknown query parameter {key:?}; index and wait are accepted"),
                ));
            }
        }
    }
    Ok((index, wait))
}

/// `GET /v1/nodes/{node}/assignments?index=&wait=`: what the node must run. With an index,
/// answers as soon as the node's assignments change past it, or when `wait` runs out.
async fn assignments(
    State(app): State<AppState>,
    caller: Caller,
    Path(node): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<AssignmentList>, ApiError> {
    let node = Label::parse("node", &node)?;
    let (index, wait) = blocking_params(query.as_deref())?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut changes = app.control.assignment_index();
    loop {
        changes.borrow_and_update();
        let (name, who, apex) = (node.clone(), caller.clone(), app.apex.clone());
        let done = app
            .control
            .run(move |ctx| {
                ctx.state.authorize_node(&who, &name)?;
                if !ctx.state.nodes.contains_key(&name) {
                    return Err(ControlError::NotFound {
                        what: "node",
                        name: name.to_string(),
                    });
                }
                let (node_index, list) = ctx.state.assignments_of(&name);
                let items = list
                    .into_iter()
                    .map(|a| assignment_item(ctx.state, a, &apex))
                    .collect();
                Ok((node_index, items))
            })
            .await?;
        let (node_index, items) = done.value;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if node_index > index || remaining.is_zero() {
            return Ok(Json(AssignmentList {
                node: node.to_string(),
                index: node_index,
                assignments: items,
                serial: done.serial,
            }));
        }
        if tokio::time::timeout(remaining, changes.changed()).await.is_err() {
            continue; // Timed out: answer with what there is.
        }
    }
}

/// One assignment with what the agent needs to run it.
fn assignment_item(state: &ControlState, a: &Assignment, apex: &str) -> AssignmentItem {
    let def = state
        .stacks
        .stacks
        .get(&(a.service.user.clone(), a.service.stack.clone()))
        .and_then(|s| s.file.services.get(&a.service.service));
    let k = &a.container;
    AssignmentItem {
        user: k.user.to_string(),
        stack: k.stack.to_string(),
        service: a.service.service.to_string(),
        name: k.name.to_string(),
        image: def.map(|d| d.image.clone()).unwrap_or_default(),
        command: def.and_then(|d| d.command.clone()),
        entrypoint: def.and_then(|d| d.entrypoint.clone()),
        environment: def.map(|d| d.environment.clone()).unwrap_or_default(),
        ports: a.ports.clone(),
        mem_limit_mb: a.mem_limit_mb,
        generation: a.generation,
        endpoint: format!("{}.{}.{}.cont.{apex}", k.name, k.stack, k.user),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_parameters() {
        assert_eq!(blocking_params(None).ok(), Some((0, Duration::ZERO)));
        assert_eq!(
            blocking_params(Some("index=7&wait=30s")).ok(),
            Some((7, Duration::from_secs(30)))
        );
        assert_eq!(
            blocking_params(Some("wait=500ms")).ok(),
            Some((0, Duration::from_millis(500)))
        );
        assert_eq!(
            blocking_params(Some("wait=2m")).ok(),
            Some((0, Duration::from_secs(120)))
        );
        assert_eq!(
            blocking_params(Some("wait=1e20")).ok(),
            Some((0, MAX_WAIT)),
            "capped, no overflow"
        );
        assert_eq!(blocking_params(Some("wait=1e308m")).ok(), Some((0, MAX_WAIT)));
        for bad in ["wait=-1s", "wait=soon", "index=-1", "colour=blue", "wait=NaN"] {
            assert!(blocking_params(Some(bad)).is_err(), "{bad}");
        }
    }
}
