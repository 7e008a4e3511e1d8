//! What one batch of operations changed: the store ops to commit, and the DNS names to
//! recompute before the batch is published.

use std::collections::BTreeSet;

use crate::model::{ContainerKey, Label, ServiceKey};
use crate::store::Op;

#[derive(Debug, Default)]
pub struct Changes {
    pub ops: Vec<Op>,
    /// Nodes whose address, existence or lease changed (their containers follow).
    pub nodes: BTreeSet<Label>,
    pub containers: BTreeSet<ContainerKey>,
    pub services: BTreeSet<ServiceKey>,
    /// A token was issued or revoked: the API's token index must be republished.
    pub tokens_changed: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.nodes.is_empty() && self.containers.is_empty() && self.services.is_empty()
    }

    /// Whether a node was stored or deleted (its token may have come or gone).
    pub fn touches_nodes(&self) -> bool {
        self.ops
            .iter()
            .any(|op| matches!(op, Op::PutNode(_) | Op::DeleteNode(_)))
    }
}

/// Whether an operation changed anything (an identical re-report does not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Created,
    Updated,
    Unchanged,
}
