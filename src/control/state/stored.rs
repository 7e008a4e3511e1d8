//! Applying a batch another instance committed to a shared store: each stored [`Op`] changes
//! the state as the operation that recorded it did on the leader, and marks what it touched
//! so the follower recomputes the same DNS names. Nothing is validated again: the leader
//! decided, and etcd ordered the batches.

use std::time::Instant;

use super::{Held, NodeState, State};
use crate::control::changes::Changes;
use crate::store::Op;

impl State {
    /// A stack came or went: whether its containers answer depends on it (as the leader's
    /// `put_stack` and `remove_stack` mark them).
    fn touch_stack_containers(
        &self,
        user: &crate::model::Label,
        stack: &crate::model::Label,
        changes: &mut Changes,
    ) {
        changes
            .containers
            .extend(self.containers_of_stack(user, stack).cloned());
    }

    /// Applies one stored op (as the leader's operation left the state); records the names it
    /// touched in `changes` (not the op: it is already stored).
    pub fn apply_stored(&mut self, op: Op, now: Instant, changes: &mut Changes) {
        match op {
            Op::PutNode(node) => {
                let name = node.name.clone();
                let (last_seen, live) = self
                    .nodes
                    .get(&name)
                    .map_or((now, true), |n| (n.last_seen, n.live));
                changes.nodes.insert(name.clone());
                changes.tokens_changed = true;
                self.nodes.insert(
                    name,
                    NodeState {
                        node,
                        last_seen,
                        live,
                    },
                );
            }
            Op::DeleteNode(name) => {
                self.nodes.remove(&name);
                changes.nodes.insert(name);
                changes.tokens_changed = true;
            }
            Op::SetLost(name, lost) => {
                if let Some(n) = self.nodes.get_mut(&name) {
                    n.live = !lost;
                    n.last_seen = now;
                }
                changes.nodes.insert(name);
            }
            Op::PutContainer(c) => self.hold(c, changes),
            Op::DeleteContainer(key) => {
                if let Some(Held(c)) = self.containers.take(&key) {
                    self.unindex(&c);
                    changes.services.insert(c.service_key());
                }
                changes.containers.insert(key);
            }
            Op::PutUserToken(hash, user) => {
                self.user_tokens.insert(hash, user);
                changes.tokens_changed = true;
            }
            Op::DeleteUserTokens(user) => {
                self.user_tokens.retain(|_, u| *u != user);
                changes.tokens_changed = true;
            }
            Op::PutUserLimits(user, limits) => {
                self.user_limits.insert(user, limits);
            }
            Op::PutStack(record) => {
                let (user, stack) = (record.user.clone(), record.stack.clone());
                let new = self.stacks.get(&user, &stack).is_none();
                self.stacks.stored_stack(&user, &stack, Some(*record), changes);
                if new {
                    self.touch_stack_containers(&user, &stack, changes);
                }
            }
            Op::DeleteStack(user, stack) => {
                self.stacks.stored_stack(&user, &stack, None, changes);
                self.touch_stack_containers(&user, &stack, changes);
            }
            Op::PutAssignment(a) => {
                let key = a.container.clone();
                self.stacks.stored_assignment(&key, Some(a), changes);
            }
            Op::DeleteAssignment(key) => self.stacks.stored_assignment(&key, None, changes),
            Op::AssignmentIndex(index) => self.stacks.stored_index(index),
            Op::PutFloor(node, floor) => {
                self.floors.insert(node, floor);
            }
        }
    }
}
