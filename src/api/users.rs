//! Users and their tokens: an admin issues a token that acts on one user's stacks only.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{post, put};

use super::error::ApiError;
use super::query::NoQuery;
use super::types::{LimitsRequest, LimitsResponse, UserTokenResponse, UserTokensRevoked};
use super::{AppState, JsonBody, Routes};
use crate::control::Caller;
use crate::model::Label;

pub fn routes() -> Routes {
    Routes::new()
        .route("/v1/users/{user}/tokens", post(issue).delete(revoke))
        .route("/v1/users/{user}/limits", put(set_limits).get(limits))
}

fn limits_response(
    user: &Label,
    done: crate::control::Committed<(crate::model::Limits, (u32, u32))>,
) -> LimitsResponse {
    let (limits, (containers, stacks)) = done.value;
    LimitsResponse {
        user: user.to_string(),
        limits,
        containers,
        stacks,
        serial: done.serial,
    }
}

/// `PUT /v1/users/{user}/limits`: what the user may run (admin).
async fn set_limits(
    State(app): State<AppState>,
    caller: Caller,
    _: NoQuery,
    Path(user): Path<String>,
    JsonBody(req): JsonBody<LimitsRequest>,
) -> Result<Json<LimitsResponse>, ApiError> {
    let user = Label::parse("user", &user)?;
    let done = app
        .control
        .set_user_limits(
            caller,
            user.clone(),
            req.max_containers,
            req.max_stacks,
            req.max_nodes,
        )
        .await?;
    tracing::info!(%user, limits = ?done.value.0, "user limits set");
    Ok(Json(limits_response(&user, done)))
}

/// `GET /v1/users/{user}/limits`: the limits and the usage (admin, or the user).
async fn limits(
    State(app): State<AppState>,
    caller: Caller,
    _: NoQuery,
    Path(user): Path<String>,
) -> Result<Json<LimitsResponse>, ApiError> {
    let user = Label::parse("user", &user)?;
    let done = app.control.user_limits(caller, user.clone()).await?;
    Ok(Json(limits_response(&user, done)))
}

/// `POST /v1/users/{user}/tokens`: a new token for the user (existing ones stay valid).
async fn issue(
    State(app): State<AppState>,
    caller: Caller,
    _: NoQuery,
    Path(user): Path<String>,
) -> Result<(StatusCode, Json<UserTokenResponse>), ApiError> {
    let user = Label::parse("user", &user)?;
    let done = app.control.issue_user_token(caller, user.clone()).await?;
    tracing::info!(%user, "user token issued");
    Ok((
        StatusCode::CREATED,
        Json(UserTokenResponse {
            user: user.to_string(),
            token: done.value,
            serial: done.serial,
        }),
    ))
}

/// `DELETE /v1/users/{user}/tokens`: every token of the user stops working.
async fn revoke(
    State(app): State<AppState>,
    caller: Caller,
    _: NoQuery,
    Path(user): Path<String>,
) -> Result<Json<UserTokensRevoked>, ApiError> {
    let user = Label::parse("user", &user)?;
    let done = app.control.revoke_user_tokens(caller, user.clone()).await?;
    tracing::info!(%user, revoked = done.value, "user tokens revoked");
    Ok(Json(UserTokensRevoked {
        user: user.to_string(),
        revoked: done.value,
        serial: done.serial,
    }))
}
