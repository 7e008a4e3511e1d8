//! Users and their tokens: an admin issues a token that acts on one user's stacks only.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};

use super::AppState;
use super::error::ApiError;
use super::types::{UserTokenResponse, UserTokensRevoked};
use crate::control::Caller;
use crate::model::Label;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/users/{user}/tokens", post(issue).delete(revoke))
}

/// `POST /v1/users/{user}/tokens`: a new token for the user (existing ones stay valid).
async fn issue(
    State(app): State<AppState>,
    caller: Caller,
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
