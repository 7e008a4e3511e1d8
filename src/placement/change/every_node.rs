//! `every_node` services: one container on each live node that carries the service's tags,
//! following the nodes as they join, leave or change tags.
//!
//! A node that is only lost keeps its container (it runs again when the node is back); one
//! that left the cluster or no longer matches loses it. Numbers follow node-name order, lowest
//! free first, like every other service.

use std::collections::BTreeSet;

use super::{Planner, container_name, free_numbers};
use crate::model::{ContainerKey, Label};
use crate::placement::cluster::container_key;
use crate::placement::{Assignment, PlacementError, Refusal, ServiceSpec};

impl Planner<'_> {
    /// Places a changed `every_node` service again: its containers on live matching nodes stay
    /// on them (the lowest number if a node had several), the others go, and every live
    /// matching node without one gets one.
    pub(super) fn redeploy_every_node(
        &mut self,
        spec: &ServiceSpec,
        previous: Vec<Assignment>,
    ) -> Result<(), PlacementError> {
        let mut taken = BTreeSet::new();
        for old in previous {
            let Some(i) = self.cluster.node_index(&old.node) else {
                continue;
            };
            let info = &self.cluster.nodes()[i].info;
            if !info.live
                || !spec.tags.is_subset(&info.tags)
                || !info.serves(&spec.key.user)
                || !taken.insert(i)
            {
                continue;
            }
            let node = info.name.clone();
            let generation = old.generation.saturating_add(1);
            if let Err(reason) = self.place_on(spec, old.container.clone(), generation, i) {
                return Err(PlacementError::NodeRefused {
                    container: old.container,
                    node,
                    reason: Box::new(reason),
                });
            }
        }
        match self.follow_nodes(spec)?.into_iter().next() {
            Some((container, node, reason)) => Err(PlacementError::NodeRefused {
                container,
                node,
                reason: Box::new(reason),
            }),
            None => Ok(()),
        }
    }

    /// Gives every live node that carries the service's tags and has none of its containers
    /// one, under the lowest free numbers in node-name order. Returns the nodes that refused,
    /// with the name their container would have had.
    pub(super) fn follow_nodes(
        &mut self,
        spec: &ServiceSpec,
    ) -> Result<Vec<(ContainerKey, Label, Refusal)>, PlacementError> {
        self.cluster.track_spread(&spec.key);
        let wanting: Vec<usize> = (self.cluster.live().iter().copied())
            .filter(|&i| spec.tags.is_subset(&self.cluster.nodes()[i].info.tags))
            .filter(|&i| self.cluster.nodes()[i].info.serves(&spec.key.user))
            .filter(|&i| self.cluster.of_service(&spec.key, i) == 0)
            .collect();
        let numbers = free_numbers(&self.cluster.members(&spec.key), wanting.len());
        let mut numbers = numbers.into_iter().peekable();
        let mut refused = Vec::new();
        for i in wanting {
            // A refused node does not use up its number: the next node gets it.
            let Some(&n) = numbers.peek() else { break };
            let key = container_key(&spec.key, container_name(spec, n)?);
            let generation = self.new_generation(&key);
            match self.place_on(spec, key.clone(), generation, i) {
                Ok(()) => {
                    numbers.next();
                }
                Err(reason) => refused.push((key, self.cluster.nodes()[i].info.name.clone(), reason)),
            }
        }
        Ok(refused)
    }

    /// Removes an `every_node` service's containers from nodes that left the cluster or no
    /// longer carry its tags, and duplicates on one node. A node that is only lost keeps its
    /// container: it runs again when the node comes back.
    pub(super) fn prune_every_node(&mut self, spec: &ServiceSpec) {
        let mut taken = BTreeSet::new();
        for (_, key) in self.cluster.members(&spec.key) {
            let node = self.cluster.node_of(&key);
            let keep = node.is_some_and(|i| {
                let info = &self.cluster.nodes()[i].info;
                spec.tags.is_subset(&info.tags) && info.serves(&spec.key.user) && taken.insert(i)
            });
            if !keep {
                self.cluster.remove(&key);
            }
        }
    }
}
