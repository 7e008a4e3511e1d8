//! The changes (Apply, Scale, DeleteStack, Reconcile) as steps on the working cluster.
//!
//! Every change first releases what goes away (containers of removed or changed services,
//! scale-downs), so that a host port or memory freed that way can be taken in the same change,
//! then places what is missing, most constrained services first: `every_node` (each container
//! is bound to one node), then services with fixed host ports, then the rest, by name within
//! each group. Placing the constrained ones first only makes a fit more likely; any order is
//! deterministic.

use std::collections::{BTreeMap, BTreeSet};

use super::cluster::{Cluster, container_key};
use super::index::{Index, number};
use super::{
    Assignment, Change, Declared, MAX_CONTAINERS_PER_SERVICE, NodeVerdict, PlacementError, Plan, Refusal,
    ServiceSpec, Verdict, strategy,
};
use crate::model::{ContainerKey, Label, Port, ServiceKey, Strategy};

mod every_node;

/// One plan in the making.
pub(super) struct Planner<'a> {
    cluster: Cluster<'a>,
    /// The services declared before the change.
    declared: &'a dyn Declared,
    /// What the change declares or removes (`None`), over `declared`.
    services: BTreeMap<ServiceKey, Option<ServiceSpec>>,
    verdicts: Vec<NodeVerdict>,
    /// Record every node's verdict, not only the chosen one (dry runs).
    explain: bool,
}

impl<'a> Planner<'a> {
    pub fn new(index: &'a mut Index, declared: &'a dyn Declared, explain: bool) -> Self {
        Planner {
            cluster: Cluster::new(index),
            declared,
            services: BTreeMap::new(),
            verdicts: Vec::new(),
            explain,
        }
    }

    pub fn run(&mut self, change: &Change) -> Result<(), PlacementError> {
        match change {
            Change::Apply {
                user,
                stack,
                services,
            } => self.apply(user, stack, services),
            Change::Scale { service, target } => self.scale(service, *target),
            Change::DeleteStack { user, stack } => {
                for key in self.cluster.stack_containers(user, stack) {
                    self.cluster.remove(&key);
                }
                for spec in self.declared.of_stack(user, stack) {
                    self.services.insert(spec.key.clone(), None);
                }
                Ok(())
            }
            Change::Reconcile => {
                self.reconcile();
                Ok(())
            }
        }
    }

    /// The plan: how it differs from the index, which is put back as it was when `restore`.
    pub fn finish(self, restore: bool) -> Plan {
        let diff = self.cluster.finish(restore);
        Plan {
            services: self.services.into_iter().collect(),
            assignments: diff.changes,
            added: diff.added,
            removed: diff.removed,
            moved: diff.moved,
            redeployed: diff.redeployed,
            verdicts: self.verdicts,
        }
    }

    /// The declared spec of `key`, as the change has it so far.
    fn spec(&self, key: &ServiceKey) -> Option<&ServiceSpec> {
        match self.services.get(key) {
            Some(changed) => changed.as_ref(),
            None => self.declared.spec(key),
        }
    }

    /// Replaces a stack's services with `specs`.
    fn apply(&mut self, user: &Label, stack: &Label, specs: &[ServiceSpec]) -> Result<(), PlacementError> {
        let mut desired = BTreeMap::new();
        for spec in specs {
            if spec.key.user != *user || spec.key.stack != *stack {
                let reason = format!(
                    "it belongs to stack {} of user {}, not to the stack applied ({stack} of {user})",
                    spec.key.stack, spec.key.user
                );
                return Err(invalid(spec, reason));
            }
            self.validate(spec)?;
            if desired.insert(spec.key.clone(), spec.clone()).is_some() {
                return Err(invalid(spec, "it is declared twice"));
            }
        }
        // Release: containers of services that are gone, scale-downs, and changed services'
        // containers (kept aside for their names, generations and nodes).
        for key in self.cluster.stack_containers(user, stack) {
            if !self
                .cluster
                .get(&key)
                .is_some_and(|a| desired.contains_key(&a.service))
            {
                self.cluster.remove(&key);
            }
        }
        let mut changed: BTreeMap<ServiceKey, Vec<Assignment>> = BTreeMap::new();
        for spec in desired.values() {
            if self.spec(&spec.key).is_some_and(|old| old.same_deployment(spec)) {
                if spec.strategy != Strategy::EveryNode {
                    self.trim(spec);
                }
            } else {
                let members = self.cluster.members(&spec.key);
                let previous = members
                    .iter()
                    .filter_map(|(_, key)| self.cluster.remove(key))
                    .collect();
                changed.insert(spec.key.clone(), previous);
            }
        }
        // Place. An unchanged every_node service keeps its containers: following nodes that
        // joined since is Reconcile's job, so re-applying a stack changes nothing.
        for spec in placement_order(desired.values()) {
            let every_node = spec.strategy == Strategy::EveryNode;
            match changed.remove(&spec.key) {
                None if every_node => {}
                None => self.fill(spec)?,
                Some(previous) if every_node => self.redeploy_every_node(spec, previous)?,
                Some(previous) => {
                    self.redeploy(spec, previous)?;
                    self.fill(spec)?;
                }
            }
        }
        for spec in self.declared.of_stack(user, stack) {
            self.services.insert(spec.key.clone(), None);
        }
        self.services
            .extend(desired.into_iter().map(|(key, spec)| (key, Some(spec))));
        Ok(())
    }

    /// Sets a declared service's target: removes the highest numbers or adds the lowest free.
    fn scale(&mut self, service: &ServiceKey, target: u32) -> Result<(), PlacementError> {
        let Some(spec) = self.spec(service) else {
            return Err(PlacementError::UnknownService {
                service: service.clone(),
            });
        };
        if spec.strategy == Strategy::EveryNode {
            return Err(PlacementError::NotScalable {
                service: service.clone(),
            });
        }
        let spec = ServiceSpec {
            target,
            ..spec.clone()
        };
        self.validate(&spec)?;
        self.trim(&spec);
        self.fill(&spec)?;
        self.services.insert(service.clone(), Some(spec));
        Ok(())
    }

    /// Moves containers off nodes that are not live and makes `every_node` services follow
    /// the nodes. What cannot be placed stays as it is and is reported, never an error.
    fn reconcile(&mut self) {
        let declared: &'a dyn Declared = self.declared;
        let ordered = placement_order(declared.all().into_iter());
        let (every_node, others): (Vec<&ServiceSpec>, Vec<&ServiceSpec>) = ordered
            .into_iter()
            .partition(|s| s.strategy == Strategy::EveryNode);
        // Prune all before adding any, so what a pruned container frees can be used.
        for spec in &every_node {
            self.prune_every_node(spec);
        }
        for spec in &every_node {
            // Only an invalid container name is an error here; such a node is skipped.
            for (container, node, reason) in self.follow_nodes(spec).unwrap_or_default() {
                let verdict = Verdict::Refused { reason };
                self.verdicts.push(NodeVerdict {
                    container,
                    node,
                    verdict,
                });
            }
        }
        // Only the containers on nodes that are not live are looked at, in placement order.
        let position: BTreeMap<&ServiceKey, usize> =
            others.iter().enumerate().map(|(i, s)| (&s.key, i)).collect();
        let mut lost: Vec<(usize, u32, ContainerKey)> = (self.cluster.off_live_nodes().into_iter())
            .filter_map(|a| Some((*position.get(&a.service)?, number(a), a.container.clone())))
            .collect();
        lost.sort_unstable();
        for (service, _, key) in lost {
            self.move_off_lost(others[service], key);
        }
    }

    /// Removes the highest numbers beyond the target.
    fn trim(&mut self, spec: &ServiceSpec) {
        for (_, key) in self.cluster.members(&spec.key).iter().skip(as_len(spec.target)) {
            self.cluster.remove(key);
        }
    }

    /// Adds containers under the lowest free numbers until the target is reached.
    fn fill(&mut self, spec: &ServiceSpec) -> Result<(), PlacementError> {
        let members = self.cluster.members(&spec.key);
        let missing = as_len(spec.target).saturating_sub(members.len());
        for n in free_numbers(&members, missing) {
            let key = container_key(&spec.key, container_name(spec, n)?);
            let generation = self.new_generation(&key);
            self.place(spec, key, generation, None)?;
        }
        Ok(())
    }

    /// Places a changed service's containers again under their names, the lowest numbers up
    /// to the target, each on its old node if that still takes it.
    fn redeploy(&mut self, spec: &ServiceSpec, previous: Vec<Assignment>) -> Result<(), PlacementError> {
        for old in previous.into_iter().take(as_len(spec.target)) {
            let sticky = self.cluster.node_index(&old.node);
            self.place(spec, old.container, old.generation.saturating_add(1), sticky)?;
        }
        Ok(())
    }

    /// Places a container that is on a node that is not live (or gone) again elsewhere; if it
    /// fits nowhere it stays and is reported as stranded.
    fn move_off_lost(&mut self, spec: &ServiceSpec, key: ContainerKey) {
        let Some(old) = self.cluster.remove(&key) else {
            return;
        };
        let generation = old.generation.saturating_add(1);
        if self.place(spec, key.clone(), generation, None).is_ok() {
            return;
        }
        if self.explain {
            for (node, reason) in strategy::refusals(&self.cluster, spec) {
                let verdict = Verdict::Refused { reason };
                self.verdicts.push(NodeVerdict {
                    container: key.clone(),
                    node,
                    verdict,
                });
            }
        }
        let node = old.node.clone();
        self.verdicts.push(NodeVerdict {
            container: key,
            node,
            verdict: Verdict::Stranded,
        });
        self.cluster.insert(old);
    }

    /// Places one container: on `sticky` if that node still takes it, else where the strategy
    /// says; the error explains why no node could take it.
    fn place(
        &mut self,
        spec: &ServiceSpec,
        key: ContainerKey,
        generation: u64,
        sticky: Option<usize>,
    ) -> Result<(), PlacementError> {
        self.cluster.track_spread(&spec.key);
        let node = sticky
            .filter(|&i| self.cluster.check(i, spec).is_ok())
            .or_else(|| strategy::choose(&self.cluster, spec));
        match node.map(|i| self.cluster.allocate(i, spec).map(|ports| (i, ports))) {
            Some(Ok((i, ports))) => {
                self.commit(spec, key, generation, i, ports);
                Ok(())
            }
            _ => Err(PlacementError::unplaceable(
                key,
                spec,
                strategy::refusals(&self.cluster, spec),
            )),
        }
    }

    /// Places one container on node `i`, or says why that node refuses it.
    fn place_on(
        &mut self,
        spec: &ServiceSpec,
        key: ContainerKey,
        generation: u64,
        i: usize,
    ) -> Result<(), Refusal> {
        self.cluster.track_spread(&spec.key);
        self.cluster.check(i, spec)?;
        let ports = self.cluster.allocate(i, spec)?;
        self.commit(spec, key, generation, i, ports);
        Ok(())
    }

    /// Records the verdicts and the assignment of a container placed on node `i`.
    fn commit(
        &mut self,
        spec: &ServiceSpec,
        container: ContainerKey,
        generation: u64,
        i: usize,
        ports: Vec<Port>,
    ) {
        if self.explain {
            self.verdicts
                .extend(strategy::explain(&self.cluster, spec, &container, i));
        } else {
            let verdict = strategy::chosen_verdict(&self.cluster, spec, i);
            let node = self.cluster.nodes()[i].info.name.clone();
            self.verdicts.push(NodeVerdict {
                container: container.clone(),
                node,
                verdict,
            });
        }
        self.cluster.insert(Assignment {
            container,
            service: spec.key.clone(),
            node: self.cluster.nodes()[i].info.name.clone(),
            ports,
            mem_limit_mb: spec.mem_limit_mb,
            spec_hash: spec.spec_hash,
            generation,
        });
    }

    /// Generation of a container created now: above any previous life of the name, retired
    /// before or assigned when this change began (a name can leave and come back within one
    /// change, on another node).
    fn new_generation(&self, key: &ContainerKey) -> u64 {
        let retired = self.declared.retired(key);
        let assigned = self.cluster.input_generation(key);
        retired.max(assigned).map_or(1, |g| g.saturating_add(1))
    }

    /// Refuses specs the engine cannot place as written. The Stackfile parser should have
    /// caught all of these; they are checked again because the engine must not trust input.
    fn validate(&self, spec: &ServiceSpec) -> Result<(), PlacementError> {
        let every_node = spec.strategy == Strategy::EveryNode;
        if !every_node && spec.target > MAX_CONTAINERS_PER_SERVICE {
            let reason = format!(
                "target_num_containers {} is above the limit of {MAX_CONTAINERS_PER_SERVICE}",
                spec.target
            );
            return Err(invalid(spec, reason));
        }
        let mut fixed = BTreeSet::new();
        for p in &spec.ports {
            let proto = p.protocol.as_str();
            if p.container_port == 0 || p.host_port == Some(0) {
                return Err(invalid(spec, format!("port 0/{proto} cannot be published")));
            }
            if let Some(host) = p.host_port
                && !fixed.insert((host, p.protocol))
            {
                return Err(invalid(
                    spec,
                    format!("host port {host}/{proto} is published twice"),
                ));
            }
        }
        // The longest name it may need must be a valid label.
        let most = if every_node {
            self.cluster.nodes().len()
        } else {
            as_len(spec.target)
        };
        container_name(spec, u32::try_from(most.max(1)).unwrap_or(u32::MAX)).map(|_| ())
    }
}

/// The services in placement order: `every_node`, then fixed host ports, then the rest.
fn placement_order<'s>(specs: impl Iterator<Item = &'s ServiceSpec>) -> Vec<&'s ServiceSpec> {
    let mut ordered: Vec<&ServiceSpec> = specs.collect();
    ordered.sort_by_key(|s| {
        let group = match s.strategy {
            Strategy::EveryNode => 0,
            _ if s.ports.iter().any(|p| p.host_port.is_some()) => 1,
            _ => 2,
        };
        (group, &s.key)
    });
    ordered
}

/// The `count` lowest numbers from 1 up that `members` (sorted by number) do not use.
fn free_numbers(members: &[(u32, ContainerKey)], count: usize) -> Vec<u32> {
    let mut free = Vec::with_capacity(count);
    let mut used = members.iter().map(|(n, _)| *n).peekable();
    let mut candidate: u32 = 1;
    while free.len() < count && candidate < u32::MAX {
        while used.next_if(|&u| u < candidate).is_some() {}
        if used.next_if_eq(&candidate).is_none() {
            free.push(candidate);
        }
        candidate += 1;
    }
    free
}

/// `<service>-<n>` as a label; too long a service name makes it invalid.
fn container_name(spec: &ServiceSpec, n: u32) -> Result<Label, PlacementError> {
    Label::parse("container", &format!("{}-{n}", spec.key.service)).map_err(|e| {
        invalid(
            spec,
            format!(
                "its container name {:?} is not a valid name: {}",
                e.value, e.reason
            ),
        )
    })
}

fn invalid(spec: &ServiceSpec, reason: impl Into<String>) -> PlacementError {
    PlacementError::InvalidService {
        service: spec.key.clone(),
        reason: reason.into(),
    }
}

/// A target as a length (u32 always fits in usize on the platforms this runs on).
fn as_len(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}
