//! The name table: a hash map split into small shards, copied on write.
//!
//! The shards sit in a two-level tree: [`GROUPS`] groups of [`GROUP_SHARDS`] shards, each node
//! behind an `Arc`. The writer keeps one `Names` and changes it in place; [`Names::freeze`]
//! hands the DNS path an immutable view by cloning the group pointers. A later change to a
//! shard still shared with a published view copies that shard and its group only
//! (`Arc::make_mut`), so publishing a change costs a few dozen names and a group of pointers
//! per name touched, whatever the zone's size. A lookup is two hashes (the shard's, then the
//! map's own), two indexed loads and a probe of a map of a few dozen names. Keys and entries are `Arc`s, so copying a shard is
//! cheap.
//!
//! Empty non-terminals are kept by reference counting: every name counts its children (the
//! names one label longer), and exists while it has data of its own or any child. A new name
//! therefore touches its ancestors only up to the first that already existed, usually its
//! parent.

use std::hash::BuildHasher;
use std::sync::Arc;

use super::Entry;
use crate::name;

/// Groups of shards: a publication copies this many pointers.
const GROUPS: usize = 128;
/// Shards per group: copying a group for a change copies this many pointers.
const GROUP_SHARDS: usize = 128;
/// 16,384 shards in all: about 40 names each at 300k containers (700k names), 140 at a
/// million, so a change copies a small map, while a small zone does not pay for many nearly
/// empty maps. Shards without names share one empty map.
const SHARDS: usize = GROUPS * GROUP_SHARDS;

type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Clone)]
struct Slot {
    entry: Arc<Entry>,
    /// The name was set (it has data, or is known without data); unset names exist only as
    /// empty non-terminals.
    own: bool,
    /// Its children in the table; it stays as an empty non-terminal while this is non-zero.
    below: u32,
}

#[derive(Clone, Default)]
struct Shard {
    map: Map<Arc<[u8]>, Slot>,
}

#[derive(Clone)]
struct Group {
    shards: Box<[Arc<Shard>]>,
}

/// The writer's mutable name table.
pub struct Names {
    /// Picks the shard; the inner maps have seeds of their own.
    hasher: foldhash::fast::RandomState,
    groups: Vec<Arc<Group>>,
    empty: Arc<Entry>,
    len: usize,
    /// While recording: each changed name's entry as it was before its first change.
    before: Option<Map<Box<[u8]>, Arc<Entry>>>,
}

/// One name's change since recording started: (name, entry before, entry now).
pub type Change = (Box<[u8]>, Arc<Entry>, Arc<Entry>);

/// An immutable view of the table, as published.
#[derive(Clone)]
pub struct Frozen {
    hasher: foldhash::fast::RandomState,
    groups: Arc<[Arc<Group>]>,
    len: usize,
}

impl Default for Names {
    fn default() -> Self {
        // Every shard starts as the same empty map and every group as the same group: an
        // empty table is a few KiB, and the first change to a shard gives it a map of its own.
        let empty_shard = Arc::new(Shard::default());
        let empty_group = Arc::new(Group {
            shards: (0..GROUP_SHARDS).map(|_| empty_shard.clone()).collect(),
        });
        Self {
            hasher: foldhash::fast::RandomState::default(),
            groups: (0..GROUPS).map(|_| empty_group.clone()).collect(),
            empty: Arc::new(Entry::default()),
            len: 0,
            before: None,
        }
    }
}

impl Names {
    /// (group, shard within it) of a name.
    fn shard_of(hasher: &foldhash::fast::RandomState, rel: &[u8]) -> (usize, usize) {
        let i = hasher.hash_one(rel) as usize & (SHARDS - 1);
        (i / GROUP_SHARDS, i % GROUP_SHARDS)
    }

    fn shard(&self, rel: &[u8]) -> &Shard {
        let (g, s) = Self::shard_of(&self.hasher, rel);
        &self.groups[g].shards[s]
    }

    fn shard_mut(&mut self, rel: &[u8]) -> &mut Shard {
        let (g, s) = Self::shard_of(&self.hasher, rel);
        Arc::make_mut(&mut Arc::make_mut(&mut self.groups[g]).shards[s])
    }

    pub fn get(&self, rel: &[u8]) -> Option<&Entry> {
        self.get_arc(rel).map(|e| &**e)
    }

    /// Number of names, empty non-terminals included.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn get_arc(&self, rel: &[u8]) -> Option<&Arc<Entry>> {
        self.shard(rel).map.get(rel).map(|s| &s.entry)
    }

    /// From now on, remember what each changed name held before (for zone differences).
    pub fn record_changes(&mut self) {
        self.before.get_or_insert_with(Map::default);
    }

    /// The names changed since the last call (or since recording started), with their entries
    /// before and now; names that ended as they began are left out.
    pub fn take_changes(&mut self) -> Vec<Change> {
        let Some(before) = self.before.as_mut() else {
            return Vec::new();
        };
        let before = std::mem::take(before);
        let mut changes: Vec<Change> = before
            .into_iter()
            .filter_map(|(rel, old)| {
                let new = self.get_arc(&rel).cloned().unwrap_or_else(|| self.empty.clone());
                (!Arc::ptr_eq(&old, &new) && !old.same_data(&new)).then_some((rel, old, new))
            })
            .collect();
        changes.sort_by(|a, b| a.0.cmp(&b.0));
        changes
    }

    /// Notes `rel`'s current entry, the first time it changes while recording.
    fn remember(&mut self, rel: &[u8]) {
        if self.before.as_ref().is_none_or(|b| b.contains_key(rel)) {
            return;
        }
        let old = self.get_arc(rel).cloned().unwrap_or_else(|| self.empty.clone());
        if let Some(before) = self.before.as_mut() {
            before.insert(rel.into(), old);
        }
    }

    /// Gives `rel` this entry. Setting an equal entry again changes nothing, so the published
    /// shard is not copied and the RRsets keep their rotation cursors.
    pub fn set(&mut self, rel: &[u8], entry: Entry) {
        if let Some(slot) = self.shard(rel).map.get(rel)
            && slot.own
            && slot.entry.same_data(&entry)
        {
            return;
        }
        self.remember(rel);
        let entry = Arc::new(entry);
        let shard = self.shard_mut(rel);
        let inserted = match shard.map.get_mut(rel) {
            Some(slot) => {
                slot.entry = entry;
                slot.own = true;
                false
            }
            None => {
                let slot = Slot {
                    entry,
                    own: true,
                    below: 0,
                };
                shard.map.insert(rel.into(), slot);
                true
            }
        };
        if inserted {
            self.len += 1;
            self.child_added(rel);
        }
    }

    /// Takes away what was set at `rel`; it stays as an empty non-terminal if names remain below.
    pub fn unset(&mut self, rel: &[u8]) {
        if !self.shard(rel).map.get(rel).is_some_and(|slot| slot.own) {
            return; // Nothing to take away: leave the published shard shared.
        }
        self.remember(rel);
        let empty = self.empty.clone();
        let shard = self.shard_mut(rel);
        let Some(slot) = shard.map.get_mut(rel) else {
            return;
        };
        if !slot.own {
            return;
        }
        slot.own = false;
        slot.entry = empty;
        if slot.below == 0 {
            shard.map.remove(rel);
            self.len -= 1;
            self.child_removed(rel);
        }
    }

    /// `rel` came into the table: its parent counts one more child, and is created (as an
    /// empty non-terminal, counting in its own parent) if it did not exist.
    fn child_added(&mut self, rel: &[u8]) {
        let empty = self.empty.clone();
        for parent in name::ancestors(rel) {
            let shard = self.shard_mut(parent);
            if let Some(slot) = shard.map.get_mut(parent) {
                slot.below += 1;
                return;
            }
            let slot = Slot {
                entry: empty.clone(),
                own: false,
                below: 1,
            };
            shard.map.insert(parent.into(), slot);
            self.len += 1;
        }
    }

    /// `rel` left the table: its parent counts one child fewer, and goes too if that leaves
    /// it an empty non-terminal without children.
    fn child_removed(&mut self, rel: &[u8]) {
        for parent in name::ancestors(rel) {
            let shard = self.shard_mut(parent);
            let Some(slot) = shard.map.get_mut(parent) else {
                return;
            };
            slot.below = slot.below.saturating_sub(1);
            if slot.below > 0 || slot.own {
                return;
            }
            shard.map.remove(parent);
            self.len -= 1;
        }
    }

    /// The published view: shares every shard with this table until the next change.
    pub fn freeze(&self) -> Frozen {
        Frozen {
            hasher: self.hasher.clone(),
            groups: self.groups.iter().cloned().collect(),
            len: self.len,
        }
    }
}

impl Frozen {
    pub fn get(&self, rel: &[u8]) -> Option<&Entry> {
        let (g, s) = Names::shard_of(&self.hasher, rel);
        self.groups[g].shards[s].map.get(rel).map(|s| &*s.entry)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every name; a shard shared by several slots (the empty one) is empty, so nothing is
    /// seen twice.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &Entry)> {
        self.groups
            .iter()
            .flat_map(|g| g.shards.iter())
            .flat_map(|s| s.map.iter().map(|(k, v)| (&k[..], &*v.entry)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    /// Wire form of a relative name from its labels, nearest first.
    fn rel(labels: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in labels {
            out.extend_from_slice(&[1, b'a' + l]);
        }
        out
    }

    proptest! {
        // Each step walks all 16,384 shards: a few dozen cases are plenty.
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// After any sequence of sets and unsets, a name exists exactly when it was set, or
        /// a set name lies below it (an empty non-terminal), and published views keep what
        /// they saw.
        #[test]
        fn names_exist_while_they_or_their_descendants_are_set(
            ops in proptest::collection::vec((any::<bool>(), proptest::collection::vec(0u8..3, 1..4)), 1..40),
        ) {
            let mut names = Names::default();
            let mut own: BTreeSet<Vec<u8>> = BTreeSet::new();
            let mut views = Vec::new();
            for (set, labels) in ops {
                let name = rel(&labels);
                if set {
                    names.set(&name, Entry::default());
                    own.insert(name);
                } else {
                    names.unset(&name);
                    own.remove(&name);
                }
                let mut expected: BTreeSet<Vec<u8>> = own.clone();
                for n in &own {
                    expected.extend(name::ancestors(n).map(<[u8]>::to_vec));
                }
                let frozen = names.freeze();
                let seen: BTreeSet<Vec<u8>> = frozen.iter().map(|(k, _)| k.to_vec()).collect();
                prop_assert_eq!(&seen, &expected);
                prop_assert_eq!(frozen.len(), expected.len());
                views.push((frozen, expected));
            }
            for (frozen, expected) in views {
                let seen: BTreeSet<Vec<u8>> = frozen.iter().map(|(k, _)| k.to_vec()).collect();
                prop_assert_eq!(seen, expected, "a published view never changes");
            }
        }
    }
}
