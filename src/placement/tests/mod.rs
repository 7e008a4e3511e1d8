//! Tests of the placement engine: table-driven cases per rule (`unit`), scaling, redeploys and
//! Reconcile (`lifecycle`), the seed scenario and the error catalogue (`errors`), and
//! properties over random clusters and sequences of changes (`props`).
//!
//! [`World`] plays the caller: it keeps nodes, declared services and assignments, runs a change
//! and adopts the plan when it is `Ok`, as the control plane does. It runs every change twice:
//! on an index built afresh from its lists ([`plan`]), and on an index it keeps between changes
//! as the control plane does, and checks that both give the same plan and the same state.

mod errors;
mod index;
mod lifecycle;
mod props;
mod unit;

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::model::PortSpec;
use crate::model::{Protocol, Strategy};

pub fn label(s: &str) -> Label {
    Label::parse("test", s).expect("valid label")
}

/// A live node without tags, labels or capacity.
pub fn node(name: &str) -> NodeInfo {
    NodeInfo {
        name: label(name),
        live: true,
        tags: BTreeSet::new(),
        labels: BTreeMap::new(),
        memory_mb: None,
        tenants: None,
    }
}

/// Builder-style tweaks of a [`NodeInfo`].
pub trait NodeExt {
    fn tags(self, tags: &[&str]) -> Self;
    fn memory(self, mb: u64) -> Self;
    fn lost(self) -> Self;
    fn label(self, key: &str, value: &str) -> Self;
    /// Serves only these users.
    fn tenants(self, users: &[&str]) -> Self;
}

impl NodeExt for NodeInfo {
    fn tenants(mut self, users: &[&str]) -> Self {
        self.tenants = Some(users.iter().map(|u| label(u)).collect());
        self
    }

    fn tags(mut self, tags: &[&str]) -> Self {
        self.tags = tags.iter().map(|t| label(t)).collect();
        self
    }
    fn memory(mut self, mb: u64) -> Self {
        self.memory_mb = Some(mb);
        self
    }
    fn lost(mut self) -> Self {
        self.live = false;
        self
    }
    fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }
}

/// `"80"`, `"80:80"`, `"8053:53/udp"`, as in a Stackfile.
pub fn port(s: &str) -> PortSpec {
    let (ports, protocol) = match s.strip_suffix("/udp") {
        Some(p) => (p, Protocol::Udp),
        None => (s.strip_suffix("/tcp").unwrap_or(s), Protocol::Tcp),
    };
    let (host_port, container_port) = match ports.split_once(':') {
        Some((h, c)) => (
            Some(h.parse().expect("host port")),
            c.parse().expect("container port"),
        ),
        None => (None, ports.parse().expect("container port")),
    };
    PortSpec {
        container_port,
        host_port,
        protocol,
    }
}

pub fn service_key(stack: &str, service: &str) -> ServiceKey {
    ServiceKey {
        user: label("honeniq"),
        stack: label(stack),
        service: label(service),
    }
}

/// Service `name` of stack `s` with `target` containers, `emptiest_node`, nothing else.
pub fn svc(name: &str, target: u32) -> ServiceSpec {
    ServiceSpec {
        key: service_key("s", name),
        target,
        strategy: Strategy::EmptiestNode,
        tags: BTreeSet::new(),
        ports: Vec::new(),
        mem_limit_mb: None,
        spec_hash: 0,
    }
}

/// Builder-style tweaks of a [`ServiceSpec`].
pub trait SpecExt {
    fn stack(self, stack: &str) -> Self;
    fn strategy(self, strategy: Strategy) -> Self;
    fn tags(self, tags: &[&str]) -> Self;
    fn ports(self, ports: &[&str]) -> Self;
    fn memory(self, mb: u64) -> Self;
    fn hash(self, hash: u64) -> Self;
}

impl SpecExt for ServiceSpec {
    fn stack(mut self, stack: &str) -> Self {
        self.key.stack = label(stack);
        self
    }
    fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }
    fn tags(mut self, tags: &[&str]) -> Self {
        self.tags = tags.iter().map(|t| label(t)).collect();
        self
    }
    fn ports(mut self, ports: &[&str]) -> Self {
        self.ports = ports.iter().map(|p| port(p)).collect();
        self
    }
    fn memory(mut self, mb: u64) -> Self {
        self.mem_limit_mb = Some(mb);
        self
    }
    fn hash(mut self, hash: u64) -> Self {
        self.spec_hash = hash;
        self
    }
}

/// A plan with the state it leads to: every declared service and every assignment after it,
/// sorted by key, as a caller holding plain lists would have them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Full {
    pub services: Vec<ServiceSpec>,
    pub assignments: Vec<Assignment>,
    pub added: Vec<ContainerKey>,
    pub removed: Vec<ContainerKey>,
    pub moved: Vec<ContainerKey>,
    pub redeployed: Vec<ContainerKey>,
    pub verdicts: Vec<NodeVerdict>,
    pub plan: Plan,
}

impl Full {
    pub fn changes_containers(&self) -> bool {
        self.plan.changes_containers()
    }

    /// `plan` applied to the input's lists (first occurrence of a key counts, as in the engine).
    fn new(input: &Input, plan: Plan) -> Self {
        let mut services: BTreeMap<ServiceKey, ServiceSpec> = BTreeMap::new();
        for spec in input.services {
            services.entry(spec.key.clone()).or_insert_with(|| spec.clone());
        }
        for (key, spec) in &plan.services {
            match spec {
                Some(spec) => services.insert(key.clone(), spec.clone()),
                None => services.remove(key),
            };
        }
        let mut assignments: BTreeMap<ContainerKey, Assignment> = BTreeMap::new();
        for a in input.assignments {
            assignments
                .entry(a.container.clone())
                .or_insert_with(|| a.clone());
        }
        for change in &plan.assignments {
            match &change.after {
                Some(a) => assignments.insert(change.container.clone(), a.clone()),
                None => assignments.remove(&change.container),
            };
        }
        Full {
            services: services.into_values().collect(),
            assignments: assignments.into_values().collect(),
            added: plan.added.clone(),
            removed: plan.removed.clone(),
            moved: plan.moved.clone(),
            redeployed: plan.redeployed.clone(),
            verdicts: plan.verdicts.clone(),
            plan,
        }
    }
}

/// The engine's [`super::plan`] on a fresh index, with the state the plan leads to.
pub fn plan(input: &Input, change: &Change) -> Result<Full, PlacementError> {
    super::plan(input, change).map(|p| Full::new(input, p))
}

/// The caller's state: what the control plane keeps between plans.
#[derive(Debug, Default)]
pub struct World {
    pub nodes: Vec<NodeInfo>,
    pub services: Vec<ServiceSpec>,
    pub assignments: Vec<Assignment>,
    pub retired: Vec<(ContainerKey, u64)>,
    pub dynamic_ports: Option<std::ops::RangeInclusive<u16>>,
    /// The index kept between changes, and the assignments it was last in step with (a test
    /// that edits the lists itself gets a new one).
    kept: Option<(Index, Vec<Assignment>)>,
}

impl Clone for World {
    fn clone(&self) -> Self {
        World {
            nodes: self.nodes.clone(),
            services: self.services.clone(),
            assignments: self.assignments.clone(),
            retired: self.retired.clone(),
            dynamic_ports: self.dynamic_ports.clone(),
            kept: None,
        }
    }
}

impl World {
    pub fn with_nodes(nodes: Vec<NodeInfo>) -> Self {
        World {
            nodes,
            ..World::default()
        }
    }

    pub fn input(&self) -> Input<'_> {
        let mut input = Input::new(&self.nodes, &self.services, &self.assignments);
        input.retired = &self.retired;
        if let Some(range) = &self.dynamic_ports {
            input.dynamic_ports = range.clone();
        }
        input
    }

    /// Plans `change` on the kept index too, and checks that it agrees with a fresh one and
    /// is left as it was.
    fn run_kept(&mut self, change: &Change, fresh: &Result<Full, PlacementError>) {
        let mut kept = self.kept.take();
        let input = self.input();
        if !kept.as_ref().is_some_and(|(_, seen)| *seen == self.assignments) {
            let index = Index::build(
                input.nodes,
                input.assignments.iter().cloned(),
                &input.dynamic_ports,
            );
            kept = Some((index, self.assignments.clone()));
        }
        let Some((mut index, mut seen)) = kept else {
            return;
        };
        index.set_nodes(input.nodes.to_vec());
        let before: Vec<Assignment> = index.assignments().cloned().collect();
        let planned = index.plan(&Lists::new(&input), change, input.explain);
        let after: Vec<Assignment> = index.assignments().cloned().collect();
        assert_eq!(before, after, "a plan leaves the index as it was");
        let fresh_plan = fresh.as_ref().map(|f| &f.plan);
        assert_eq!(
            planned.as_ref(),
            fresh_plan,
            "the kept index plans as a fresh one"
        );
        if let Ok(plan) = &planned {
            index.apply(plan);
            let full = Full::new(&input, plan.clone());
            let applied: Vec<Assignment> = index.assignments().cloned().collect();
            assert_eq!(applied, full.assignments, "applying a plan gives its state");
            for a in &applied {
                let user = &a.container.user;
                let count = applied.iter().filter(|b| &b.container.user == user).count();
                assert_eq!(index.count_of_user(user), count, "containers of {user}");
            }
            seen = full.assignments;
        }
        self.kept = Some((index, seen));
    }

    /// Plans `change` and, when it succeeds, adopts the plan (retiring removed containers).
    pub fn run(&mut self, change: Change) -> Result<Full, PlacementError> {
        let fresh = plan(&self.input(), &change);
        self.run_kept(&change, &fresh);
        let plan = fresh?;
        for key in &plan.removed {
            if let Some(old) = self.assignments.iter().find(|a| &a.container == key) {
                self.retired.retain(|(k, _)| k != key);
                self.retired.push((key.clone(), old.generation));
            }
        }
        self.services = plan.services.clone();
        self.assignments = plan.assignments.clone();
        Ok(plan)
    }

    /// Applies stack `stack` of user honeniq.
    pub fn apply(&mut self, stack: &str, services: Vec<ServiceSpec>) -> Result<Full, PlacementError> {
        let (user, stack) = (label("honeniq"), label(stack));
        self.run(Change::Apply {
            user,
            stack,
            services,
        })
    }

    pub fn scale(&mut self, stack: &str, service: &str, target: u32) -> Result<Full, PlacementError> {
        let service = service_key(stack, service);
        self.run(Change::Scale { service, target })
    }

    pub fn reconcile(&mut self) -> Full {
        self.run(Change::Reconcile).expect("reconcile never fails")
    }

    pub fn set_live(&mut self, name: &str, live: bool) {
        for n in &mut self.nodes {
            if n.name.as_str() == name {
                n.live = live;
            }
        }
    }

    /// Where each container is: `"web-1" -> "node-do"` (container names of all stacks).
    pub fn placement(&self) -> BTreeMap<String, String> {
        self.assignments
            .iter()
            .map(|a| (a.container.name.to_string(), a.node.to_string()))
            .collect()
    }

    pub fn get(&self, name: &str) -> &Assignment {
        self.assignments
            .iter()
            .find(|a| a.container.name.as_str() == name)
            .expect("assigned")
    }

    /// The host ports of one container.
    pub fn host_ports(&self, name: &str) -> Vec<u16> {
        self.get(name).ports.iter().filter_map(|p| p.host_port).collect()
    }
}

/// Container names of a plan's list.
pub fn names(keys: &[ContainerKey]) -> Vec<String> {
    keys.iter().map(|k| k.name.to_string()).collect()
}
