//! Stored state held in memory as tables, changed by batches exactly as redb's tables are:
//! how a log-structured store (etcd) turns its last image and the batches after it into what
//! `Store::load` answers. Only loads and compactions hold one; the writer keeps its own state.

use std::collections::{BTreeMap, BTreeSet};

use super::{Batch, JournalWrite, Loaded, Op, StackRecord};
use crate::model::{Assignment, Container, ContainerKey, Label, Limits, Node};

/// Every table of the store, as redb keys them (so both stores read back in the same order).
#[derive(Debug, Default)]
pub struct Image {
    pub serial: u32,
    pub fingerprint: Option<u64>,
    /// Differences by the serial each leads to (as redb orders them: by number).
    pub journal: BTreeMap<u32, Vec<u8>>,
    nodes: BTreeMap<Label, Node>,
    containers: BTreeMap<ContainerKey, Container>,
    lost: BTreeSet<Label>,
    user_tokens: BTreeMap<String, Label>,
    user_limits: BTreeMap<Label, Limits>,
    stacks: BTreeMap<(Label, Label), StackRecord>,
    assignments: BTreeMap<ContainerKey, Assignment>,
    assignment_index: u64,
    floors: BTreeMap<Label, u64>,
}

impl Image {
    /// Holds everything `loaded` holds.
    pub fn from_loaded(loaded: Loaded) -> Self {
        let mut image = Image {
            serial: loaded.serial,
            fingerprint: loaded.fingerprint,
            journal: loaded.journal.into_iter().collect(),
            assignment_index: loaded.assignment_index,
            ..Image::default()
        };
        image.nodes = loaded.nodes.into_iter().map(|n| (n.name.clone(), n)).collect();
        image.containers = (loaded.containers.into_iter())
            .map(|c| (c.key.clone(), c))
            .collect();
        image.lost = loaded.lost.into_iter().collect();
        image.user_tokens = loaded.user_tokens.into_iter().collect();
        image.user_limits = loaded.user_limits.into_iter().collect();
        image.stacks = (loaded.stacks.into_iter())
            .map(|s| ((s.user.clone(), s.stack.clone()), s))
            .collect();
        image.assignments = (loaded.assignments.into_iter())
            .map(|a| (a.container.clone(), a))
            .collect();
        image.floors = loaded.floors.into_iter().collect();
        image
    }

    /// Applies a committed batch: its ops in order, its journal write, its serial.
    pub fn apply(&mut self, batch: &Batch<'_>) {
        for op in batch.ops {
            self.apply_op(op.clone());
        }
        match batch.journal {
            JournalWrite::Keep => {}
            JournalWrite::Append { to, diff, keep_from } => {
                self.journal.insert(to, diff.to_vec());
                while self
                    .journal
                    .first_key_value()
                    .is_some_and(|(serial, _)| *serial < keep_from)
                {
                    self.journal.pop_first();
                }
            }
            JournalWrite::Reset { fingerprint } => {
                self.journal.clear();
                self.fingerprint = Some(fingerprint);
            }
        }
        self.serial = batch.serial;
    }

    /// Applies one op, as redb's commit does.
    pub fn apply_op(&mut self, op: Op) {
        match op {
            Op::PutNode(node) => {
                self.nodes.insert(node.name.clone(), node);
            }
            Op::DeleteNode(name) => {
                self.nodes.remove(&name);
            }
            Op::PutContainer(c) => {
                self.containers.insert(c.key.clone(), c);
            }
            Op::DeleteContainer(key) => {
                self.containers.remove(&key);
            }
            Op::SetLost(node, true) => {
                self.lost.insert(node);
            }
            Op::SetLost(node, false) => {
                self.lost.remove(&node);
            }
            Op::PutUserToken(hash, user) => {
                self.user_tokens.insert(hash, user);
            }
            Op::DeleteUserTokens(user) => self.user_tokens.retain(|_, u| *u != user),
            Op::PutStack(record) => {
                self.stacks
                    .insert((record.user.clone(), record.stack.clone()), *record);
            }
            Op::DeleteStack(user, stack) => {
                self.stacks.remove(&(user, stack));
            }
            Op::PutUserLimits(user, limits) => {
                self.user_limits.insert(user, limits);
            }
            Op::PutAssignment(a) => {
                self.assignments.insert(a.container.clone(), a);
            }
            Op::DeleteAssignment(key) => {
                self.assignments.remove(&key);
            }
            Op::AssignmentIndex(index) => self.assignment_index = index,
            Op::PutFloor(node, floor) => {
                self.floors.insert(node, floor);
            }
        }
    }

    /// What `Store::load` answers for this image.
    pub fn into_loaded(self) -> Loaded {
        Loaded {
            serial: self.serial,
            nodes: self.nodes.into_values().collect(),
            containers: self.containers.into_values().collect(),
            lost: self.lost.into_iter().collect(),
            user_tokens: self.user_tokens.into_iter().collect(),
            stacks: self.stacks.into_values().collect(),
            user_limits: self.user_limits.into_iter().collect(),
            assignments: self.assignments.into_values().collect(),
            assignment_index: self.assignment_index,
            journal: self.journal.into_iter().collect(),
            fingerprint: self.fingerprint,
            floors: self.floors.into_iter().collect(),
            position: 0,
        }
    }
}
