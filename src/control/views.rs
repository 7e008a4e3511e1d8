//! What control operations answer: typed views of the state, read on the writer so each is
//! consistent with the serial it comes with. The API renders them as JSON (and names them with
//! `crate::scheme`); nothing here knows HTTP.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::state::{NodeState, State};
use crate::model::Applied;
use crate::model::{Assignment, ContainerKey, Label, Node, PortSpec, ServiceKey, ServiceSpec, Strategy};
use crate::placement::{NodeVerdict, Plan, Refusal, Verdict};
use crate::stackfile::{HealthCheck, Restart, Stackfile};

/// A node and its lease.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub node: Node,
    /// False once the lease lapsed (`lost`).
    pub live: bool,
    pub since_heartbeat: Duration,
    pub containers_running: usize,
}

/// A node created or updated; `token` only when it was created (or its token rotated).
#[derive(Debug, Clone)]
pub struct NodeRegistered {
    pub status: NodeStatus,
    pub created: bool,
    pub token: Option<String>,
}

/// Counts for the operator's gauges.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fleet {
    pub nodes_live: usize,
    pub nodes_lost: usize,
    pub containers_running: usize,
    pub containers_stopped: usize,
}

/// A stack as Tutum's Endpoints tab showed it: declared services with what runs of them, and
/// every placed container.
#[derive(Debug, Clone)]
pub struct StackStatus {
    pub user: Label,
    pub stack: Label,
    pub services: Vec<ServiceStatus>,
    pub containers: Vec<PlacedContainer>,
}

#[derive(Debug, Clone)]
pub struct ServiceStatus {
    pub key: ServiceKey,
    pub image: String,
    pub strategy: Strategy,
    /// Desired containers (`every_node`: one per matching node).
    pub target: u32,
    /// Containers placement assigned.
    pub assigned: usize,
    /// Containers agents report running on live nodes.
    pub running: usize,
    pub ports: Vec<PortSpec>,
}

/// One assignment and whether its agent runs it.
#[derive(Debug, Clone)]
pub struct PlacedContainer {
    pub assignment: Assignment,
    pub state: Placed,
    /// What its agent last said about it.
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// Its agent reports it running and ready, at the assigned generation or later.
    Running,
    /// Running, but kept out of DNS (failing its health check, or draining).
    Unready,
    /// It ran at this generation and stopped.
    Stopped,
    /// Not reported yet (or reported elsewhere, or older).
    Assigned,
    /// Reported, but its node's lease lapsed.
    Lost,
}

impl Placed {
    pub fn as_str(self) -> &'static str {
        match self {
            Placed::Running => "running",
            Placed::Unready => "unready",
            Placed::Stopped => "stopped",
            Placed::Assigned => "assigned",
            Placed::Lost => "lost",
        }
    }
}

/// The answer to a stack write: the stack as it is now (or would be, for a dry run).
#[derive(Debug, Clone)]
pub struct StackApplied {
    pub status: StackStatus,
    /// The stack did not exist before.
    pub created: bool,
    /// What the change did to containers; `None` for a dry run.
    pub changes: Option<Applied>,
    /// Dry runs: every node's verdict for every container placed, the first
    /// [`MAX_VERDICTS`] of them.
    pub verdicts: Option<Vec<NodeVerdict>>,
    /// How many verdicts there were in all.
    pub verdicts_total: usize,
}

/// What one node's agent must run.
#[derive(Debug, Clone)]
pub struct NodeAssignments {
    pub node: Label,
    /// Pass it back to wait for the next change.
    pub index: u64,
    pub work: Vec<Work>,
}

/// One assignment with what its Stackfile says to run.
#[derive(Debug, Clone)]
pub struct Work {
    pub assignment: Assignment,
    pub image: String,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub environment: BTreeMap<String, String>,
    pub restart: Restart,
    pub health_check: Option<HealthCheck>,
}

pub fn node_status(state: &State, n: &NodeState, now: Instant) -> NodeStatus {
    NodeStatus {
        node: n.node.clone(),
        live: n.live,
        since_heartbeat: now.saturating_duration_since(n.last_seen),
        containers_running: state.running_on(&n.node.name).count(),
    }
}

/// A published port of a container that answers in DNS: where a scraper reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub container: ContainerKey,
    pub service: Label,
    pub node: Label,
    /// The address DNS gives the container, and the port its SRV record names (the host port,
    /// or the container port when it has no host port).
    pub address: std::net::IpAddr,
    pub port: u16,
    pub container_port: u16,
    pub protocol: crate::model::Protocol,
}

/// Which endpoints a caller asks for; `None` matches anything.
#[derive(Debug, Clone, Default)]
pub struct EndpointFilter {
    pub user: Option<Label>,
    pub stack: Option<Label>,
    pub service: Option<Label>,
    pub container_port: Option<u16>,
}

/// Every endpoint of every container that answers in DNS (running, ready, on a live node,
/// placed there), of the users `visible` allows, that `filter` matches; in container order.
pub fn endpoints(state: &State, filter: &EndpointFilter, visible: impl Fn(&Label) -> bool) -> Vec<Endpoint> {
    let matches = |want: &Option<Label>, have: &Label| want.as_ref().is_none_or(|w| w == have);
    let mut out = Vec::new();
    for c in state.containers() {
        if !(matches(&filter.user, &c.key.user)
            && matches(&filter.stack, &c.key.stack)
            && matches(&filter.service, &c.service)
            && visible(&c.key.user))
        {
            continue;
        }
        let Some(address) = state.live_address(c) else {
            continue;
        };
        for p in &c.ports {
            if filter.container_port.is_some_and(|want| want != p.container_port) {
                continue;
            }
            out.push(Endpoint {
                container: c.key.clone(),
                service: c.service.clone(),
                node: c.node.clone(),
                address,
                port: p.host_port.unwrap_or(p.container_port),
                container_port: p.container_port,
                protocol: p.protocol,
            });
        }
    }
    out
}

pub fn fleet(state: &State) -> Fleet {
    let nodes_live = state.nodes().filter(|n| n.live).count();
    let containers_running = state.containers().filter(|c| c.running).count();
    Fleet {
        nodes_live,
        nodes_lost: state.node_count() - nodes_live,
        containers_running,
        containers_stopped: state.containers().count() - containers_running,
    }
}

/// The current view of a stored stack.
pub fn stack_status(state: &State, user: &Label, stack: &Label) -> Option<StackStatus> {
    let s = state.stacks().get(user, stack)?;
    let assignments: Vec<Assignment> = state
        .stacks()
        .assignments_of_stack(user, stack)
        .cloned()
        .collect();
    Some(preview(state, user, stack, &s.file, &s.services, &assignments))
}

/// The view of a stack as `plan` (not applied: a dry run's) would leave it, with `file`.
pub fn planned(state: &State, user: &Label, stack: &Label, file: &Stackfile, plan: &Plan) -> StackStatus {
    let mut specs: BTreeMap<&ServiceKey, &ServiceSpec> = BTreeMap::new();
    if let Some(record) = state.stacks().get(user, stack) {
        specs.extend(record.services.iter().map(|s| (&s.key, s)));
    }
    for (key, spec) in &plan.services {
        match spec {
            Some(spec) => specs.insert(key, spec),
            None => specs.remove(key),
        };
    }
    let specs: Vec<ServiceSpec> = specs.into_values().cloned().collect();
    let mut assignments: BTreeMap<&ContainerKey, &Assignment> = (state.stacks())
        .assignments_of_stack(user, stack)
        .map(|a| (&a.container, a))
        .collect();
    for change in &plan.assignments {
        match &change.after {
            Some(a) => assignments.insert(&change.container, a),
            None => assignments.remove(&change.container),
        };
    }
    let assignments: Vec<Assignment> = assignments.into_values().cloned().collect();
    preview(state, user, stack, file, &specs, &assignments)
}

/// The view of a stack with the given file, specs and assignments (assignments of other
/// stacks are left out).
fn preview(
    state: &State,
    user: &Label,
    stack: &Label,
    file: &Stackfile,
    specs: &[ServiceSpec],
    assignments: &[Assignment],
) -> StackStatus {
    let mut services = Vec::new();
    for (name, def) in &file.services {
        let key = ServiceKey {
            user: user.clone(),
            stack: stack.clone(),
            service: name.clone(),
        };
        let target = specs
            .iter()
            .find(|spec| spec.key == key)
            .map_or(def.target_num_containers, |spec| spec.target);
        let running = state
            .containers_of_service(&key)
            .filter(|c| state.live_address(c).is_some())
            .count();
        services.push(ServiceStatus {
            image: def.image.clone(),
            strategy: def.deployment_strategy,
            target,
            assigned: assignments.iter().filter(|a| a.service == key).count(),
            running,
            ports: def.ports.clone(),
            key,
        });
    }
    let containers = assignments
        .iter()
        .filter(|a| &a.service.user == user && &a.service.stack == stack)
        .map(|a| {
            let observed = state.container(&a.container);
            let current = observed.filter(|c| c.node == a.node && c.generation >= a.generation);
            let placed = match current {
                Some(c) if c.running && !state.node_is_live(&c.node) => Placed::Lost,
                Some(c) if c.running && c.ready => Placed::Running,
                Some(c) if c.running => Placed::Unready,
                Some(_) => Placed::Stopped,
                None => Placed::Assigned,
            };
            PlacedContainer {
                assignment: a.clone(),
                state: placed,
                detail: current.and_then(|c| c.detail.clone()),
            }
        })
        .collect();
    StackStatus {
        user: user.clone(),
        stack: stack.clone(),
        services,
        containers,
    }
}

/// What `node` must run, with the index its assignments last changed at.
pub fn node_assignments(state: &State, node: &Label) -> NodeAssignments {
    let (index, list) = state.stacks().assignments_of_node(node);
    let work = list
        .into_iter()
        .map(|a| {
            let def = state.stacks().definition(&a.service);
            Work {
                assignment: a.clone(),
                image: def.map(|d| d.image.clone()).unwrap_or_default(),
                command: def.and_then(|d| d.command.clone()),
                entrypoint: def.and_then(|d| d.entrypoint.clone()),
                environment: def.map(|d| d.environment.clone()).unwrap_or_default(),
                restart: def.map(|d| d.restart).unwrap_or_default(),
                health_check: def.and_then(|d| d.health_check.clone()),
            }
        })
        .collect();
    NodeAssignments {
        node: node.clone(),
        index,
        work,
    }
}

/// Most verdicts a dry run answers: a plan over many nodes has one per container and node, and
/// a response must stay a size a client can read (the total is given beside them).
pub const MAX_VERDICTS: usize = 5_000;

/// The verdicts a dry run answers with: none about nodes that serve other users (their names
/// are theirs), at most [`MAX_VERDICTS`]; and how many there were before the cap.
pub fn visible_verdicts(verdicts: Vec<NodeVerdict>) -> (Vec<NodeVerdict>, usize) {
    let mut visible: Vec<NodeVerdict> = verdicts
        .into_iter()
        .filter(|v| !matches!(&v.verdict, Verdict::Refused { reason } if *reason == Refusal::OtherTenants))
        .collect();
    let total = visible.len();
    visible.truncate(MAX_VERDICTS);
    (visible, total)
}
