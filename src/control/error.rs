//! Why a control-plane operation was not carried out; the API maps each to a status code.

use std::sync::Arc;

use crate::store::StoreError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    #[error("{what} {name:?} does not exist")]
    NotFound { what: &'static str, name: String },
    #[error(
        "stale report for container {container}: generation {reported} is not newer than the \
         stored generation {stored} ({detail}); nothing was changed"
    )]
    StaleGeneration {
        container: String,
        stored: u64,
        reported: u64,
        detail: String,
    },
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("the bearer token is not known; send the admin token or the node's own token")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    /// A node reported a container it may not publish (not placed there; a user it does not
    /// serve); `code` says which rule.
    #[error("{message}")]
    ReportRefused { code: &'static str, message: String },
    /// The commit failed; the state was reloaded from the store.
    #[error("the change could not be stored, so it was not applied: {0}")]
    Storage(#[source] Arc<StoreError>),
    /// The store could not be read back after a failed commit: writes wait until it can.
    #[error("the database could not be read back after a failed commit; nothing was changed")]
    Unreadable,
    /// A shared store (etcd) cannot be reached or refused the commit: nothing was changed
    /// unless the message says the batch may yet be stored (etcd's answer was lost); the
    /// request may be sent again, to any instance, once it was read back.
    #[error("the shared store is unavailable: {0}")]
    Unavailable(String),
    /// This instance does not lead the cluster (it is taking over, or just lost it).
    #[error("this instance does not lead the cluster right now; retry, or send the request to the leader")]
    NotLeader,
    /// An operation panicked on the writer; its batch was dropped and the state reloaded.
    #[error("internal error; nothing was changed")]
    Internal,
    #[error("cannot generate a token: {0}")]
    NoRandomness(getrandom::Error),
    #[error("the server is shutting down")]
    Stopped,
    /// The change would take the user over a limit; nothing was changed.
    #[error("{message}")]
    QuotaExceeded { message: String },
    /// Placement cannot satisfy the request; nothing was changed.
    #[error("{message}")]
    Unplaceable { code: &'static str, message: String },
}

impl From<crate::placement::PlacementError> for ControlError {
    fn from(e: crate::placement::PlacementError) -> Self {
        ControlError::Unplaceable {
            code: e.code(),
            message: e.to_string(),
        }
    }
}
