//! Bearer tokens: generation, hashing and the caller extractor.
//!
//! Tokens are 256 random bits, so a plain SHA-256 is a sound storage hash (there is nothing to
//! brute-force); only hashes are stored. The admin token is compared here, and node tokens are
//! looked up in the writer's published token index, so an unknown token is refused without
//! reaching the writer. Jobs check a node token again against the node they act on
//! (`State::authorize_node`), since it may have been rotated meanwhile.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;
use crate::control::state::{Caller, Principal};

/// A fresh token: 64 hex characters of OS randomness.
pub fn generate_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(hex(&bytes))
}

/// A fresh token and its stored form, or the API error saying none could be made.
pub fn new_token() -> Result<(String, String), ApiError> {
    let token = generate_token().map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "no_randomness",
            format!("cannot generate a token: {e}"),
        )
    })?;
    let hash = hash_token(&token);
    Ok((token, hash))
}

/// The stored form of a token.
pub fn hash_token(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two equal-length strings without an early exit.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

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
        let hashed = hash_token(token);
        if same(&hashed, &state.admin_token_sha256) {
            return Ok(Caller::Admin);
        }
        // Unknown tokens are refused here, before any work reaches the writer.
        match state.control.principal_of(&hashed) {
            Some(Principal::Node(node)) => Ok(Caller::Node {
                node,
                token_sha256: hashed,
            }),
            Some(Principal::User(user)) => Ok(Caller::User {
                user,
                token_sha256: hashed,
            }),
            None => Err(ApiError::unauthorized("the bearer token is not known")),
        }
    }
}

/// Admin-only endpoints take this instead of [`Caller`].
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match Caller::from_request_parts(parts, state).await? {
            Caller::Admin => Ok(Admin),
            Caller::Node { .. } | Caller::User { .. } => Err(ApiError::forbidden(
                "this endpoint needs the admin token; node and user tokens act on their own node or stacks",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hash_stably() {
        let a = generate_token().expect("random");
        let b = generate_token().expect("random");
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(hash_token("x"), hash_token("x"));
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("ab", "abc"));
    }
}
