//! Stacks (design §4–5): apply a Stackfile, show what runs where, scale, delete.
//!
//! Users see only their own stacks: any other user's stack answers 404, whether it exists or
//! not, so nothing leaks about who runs what (decided in `control`).

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header::CONTENT_TYPE};
use axum::routing::{get, patch, put};
use serde::Deserialize;

use super::error::ApiError;
use super::query::NoQuery;
use super::types::*;
use super::{AppState, JsonBody, RawBody, Routes, query, render};
use crate::control::{Caller, StackSubmission};
use crate::model::{Label, ServiceKey};

pub fn routes() -> Routes {
    Routes::new()
        .route("/v1/stacks", get(list_all))
        .route("/v1/stacks/{user}", get(list))
        .route("/v1/stacks/{user}/{stack}", put(apply).get(show).delete(remove))
        .route("/v1/stacks/{user}/{stack}/services/{service}", patch(scale))
}

/// `?dry_run=true` and nothing else.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DryRun {
    #[serde(default, deserialize_with = "query::flag")]
    dry_run: bool,
}

/// `PUT /v1/stacks/{user}/{stack}`: the whole stack as declared; placement decides or refuses.
async fn apply(
    State(app): State<AppState>,
    caller: Caller,
    Path((user, stack)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<StackResponse>), ApiError> {
    let user = Label::parse("user", &user)?;
    let stack = Label::parse("stack", &stack)?;
    let DryRun { dry_run } = query::parse(raw.as_deref())?;
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let policy = app.stackfile_policy(&user);
    let file = crate::stackfile::parse_with(&body, content_type.as_deref(), &policy).map_err(|e| {
        let status = if e.code() == "too_large" {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(status, e.code(), e.to_string())
    })?;
    let body = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::bad_request("invalid_body", "the Stackfile is not UTF-8"))?;
    let submission = StackSubmission {
        user,
        stack,
        file,
        body,
        content_type,
    };
    let done = app.control.apply_stack(caller, submission, dry_run).await?;
    let applied = done.value;
    let status = if applied.created && !dry_run {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(StackResponse {
            stack: render::stack(&applied.status, &app.apex),
            dry_run,
            changes: applied.changes,
            verdicts_total: applied.verdicts.is_some().then_some(applied.verdicts_total),
            verdicts: applied.verdicts,
            serial: done.serial,
        }),
    ))
}

async fn show(
    State(app): State<AppState>,
    caller: Caller,
    _: NoQuery,
    Path((user, stack)): Path<(String, String)>,
) -> Result<Json<StackResponse>, ApiError> {
    let user = Label::parse("user", &user)?;
    let stack = Label::parse("stack", &stack)?;
    let done = app.control.stack(caller, user, stack).await?;
    Ok(Json(StackResponse {
        stack: render::stack(&done.value, &app.apex),
        dry_run: false,
        changes: None,
        verdicts: None,
        verdicts_total: None,
        serial: done.serial,
    }))
}

async fn list(
    State(app): State<AppState>,
    caller: Caller,
    _: NoQuery,
    Path(user): Path<String>,
) -> Result<Json<StackList>, ApiError> {
    let user = Label::parse("user", &user)?;
    let done = app.control.stacks_of(caller, user.clone()).await?;
    Ok(Json(StackList {
        user: user.to_string(),
        stacks: done.value.iter().map(ToString::to_string).collect(),
        serial: done.serial,
    }))
}

/// `GET /v1/stacks`: every stack the caller may see.
async fn list_all(
    State(app): State<AppState>,
    caller: Caller,
    _: NoQuery,
) -> Result<Json<AllStacks>, ApiError> {
    let done = app.control.visible_stacks(caller).await?;
    let stacks = done
        .value
        .iter()
        .map(|(user, stack)| StackName {
            user: user.to_string(),
            stack: stack.to_string(),
        })
        .collect();
    Ok(Json(AllStacks {
        stacks,
        serial: done.serial,
    }))
}

async fn scale(
    State(app): State<AppState>,
    caller: Caller,
    Path((user, stack, service)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
    JsonBody(req): JsonBody<ScaleRequest>,
) -> Result<Json<StackResponse>, ApiError> {
    let DryRun { dry_run } = query::parse(raw.as_deref())?;
    let service = ServiceKey {
        user: Label::parse("user", &user)?,
        stack: Label::parse("stack", &stack)?,
        service: Label::parse("service", &service)?,
    };
    let done = app
        .control
        .scale_service(caller, service, req.target_num_containers, dry_run)
        .await?;
    let applied = done.value;
    Ok(Json(StackResponse {
        stack: render::stack(&applied.status, &app.apex),
        dry_run,
        changes: applied.changes,
        verdicts_total: applied.verdicts.is_some().then_some(applied.verdicts_total),
        verdicts: applied.verdicts,
        serial: done.serial,
    }))
}

async fn remove(
    State(app): State<AppState>,
    caller: Caller,
    _: NoQuery,
    Path((user, stack)): Path<(String, String)>,
) -> Result<Json<SerialResponse>, ApiError> {
    let user = Label::parse("user", &user)?;
    let stack = Label::parse("stack", &stack)?;
    let done = app.control.delete_stack(caller, user, stack).await?;
    Ok(Json(SerialResponse { serial: done.serial }))
}
