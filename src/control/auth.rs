//! Who a caller is, and the tokens that say so.
//!
//! The API turns a bearer token into a [`Caller`] (authentication); every control operation
//! decides what that caller may do (authorization), once, on the writer, against the state
//! the operation acts on (`State::authorize_*`), so a token rotated a moment ago is already
//! refused.
//!
//! Tokens are 256 random bits, so a plain SHA-256 is a sound storage hash (there is nothing to
//! brute-force); only hashes are stored.

use sha2::{Digest, Sha256};

use crate::model::Label;

/// Who sent a request, as far as the API could tell without the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin,
    /// A node's token, by its SHA-256 (hex), as the published token index knew it.
    Node {
        node: Label,
        token_sha256: String,
    },
    /// A user's token: it may act on that user's stacks only.
    User {
        user: Label,
        token_sha256: String,
    },
}

/// Whom a non-admin token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Node(Label),
    User(Label),
}

/// A fresh token: 64 hex characters of OS randomness.
pub fn generate_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(hex(&bytes))
}

/// The stored form of a token.
pub fn hash_token(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// Compares two strings without an early exit on the first difference.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
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
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("ab", "abc"));
    }
}
