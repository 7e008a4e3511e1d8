//! Authentication: the bearer token of a request, turned into a [`Caller`].
//!
//! The admin token is compared here; node and user tokens are looked up in the writer's
//! published token index, so an unknown token is refused (401) without reaching the writer.
//! What a caller may do is decided by each control operation, not here.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;
use crate::control::{Caller, Principal, hash_token, same_secret};

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthorized("missing Authorization header; send `Authorization: Bearer <token>`")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <token>`"))?;
        caller_of(state, hash_token(token))
            .ok_or_else(|| ApiError::unauthorized("the bearer token is not known"))
    }
}

/// Whom the token with SHA-256 `hashed` belongs to, as of the last commit: the bearer token's
/// check, and the dashboard's for the token behind a session (so revoking a token ends the
/// sessions opened with it).
pub fn caller_of(state: &AppState, hashed: String) -> Option<Caller> {
    if same_secret(&hashed, &state.admin_token_sha256) {
        return Some(Caller::Admin);
    }
    match state.control.principal_of(&hashed)? {
        Principal::Node(node) => Some(Caller::Node {
            node,
            token_sha256: hashed,
        }),
        Principal::User(user) => Some(Caller::User {
            user,
            token_sha256: hashed,
        }),
    }
}
