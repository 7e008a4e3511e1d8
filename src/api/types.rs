//! Request and response bodies of the HTTP API, shared by the server and clients.
//!
//! Requests reject unknown fields, so a typo is an error that names the field instead of a
//! silently ignored setting.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{Capacity, Port};

/// `PUT /v1/nodes/{node}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRequest {
    /// IPv4 or IPv6 address of the node; `<node>.node.<zone>` answers it.
    pub address: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub capacity: Option<Capacity>,
    /// A platform node's users: whose containers it may run and report (admin only; default
    /// every user's). A node a user registers serves that user alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<Vec<String>>,
}

/// A node as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub address: String,
    pub labels: BTreeMap<String, String>,
    pub tags: Vec<String>,
    pub capacity: Option<Capacity>,
    /// `live` while the lease is renewed, `lost` after `--node-ttl` without a heartbeat.
    pub state: String,
    pub last_heartbeat_seconds_ago: f64,
    pub containers_running: usize,
    /// `<node>.node.<zone>`.
    pub fqdn: String,
    /// The user it belongs to; absent for a platform node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// A platform node's users, if an admin limited them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<Vec<String>>,
}

/// Answer to node writes and reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeResponse {
    pub node: NodeInfo,
    /// The node's bearer token; present only in the response that created the node (or
    /// rotated its token). It is not stored and cannot be shown again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Zone serial that contains this state.
    pub serial: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeList {
    pub nodes: Vec<NodeInfo>,
    pub serial: u32,
}

/// `PUT /v1/nodes/{node}/containers/{user}/{stack}/{container}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerRequest {
    pub service: String,
    /// The container's own address; without it, DNS answers the node's.
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub ports: Vec<Port>,
    /// Fencing token: must not be older than the last report for this container.
    pub generation: u64,
    /// `false`: running, but keep it out of DNS (failing its health check, draining).
    #[serde(default = "yes")]
    pub ready: bool,
    /// A short word on its state for `stack ps` (at most 200 characters).
    #[serde(default)]
    pub detail: Option<String>,
}

fn yes() -> bool {
    true
}

/// One entry of `PUT /v1/nodes/{node}/containers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerListItem {
    pub user: String,
    pub stack: String,
    pub name: String,
    pub service: String,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub ports: Vec<Port>,
    pub generation: u64,
    #[serde(default = "yes")]
    pub ready: bool,
    #[serde(default)]
    pub detail: Option<String>,
}

/// `PUT /v1/nodes/{node}/containers`: everything running on the node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerListRequest {
    pub containers: Vec<ContainerListItem>,
}

/// A container as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub user: String,
    pub stack: String,
    pub name: String,
    pub service: String,
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub ports: Vec<Port>,
    pub generation: u64,
    /// `running` or `stopped`.
    pub state: String,
    /// In DNS while running: false when its agent reports it unhealthy or draining.
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// `<name>.<stack>.<user>.cont.<zone>`.
    pub fqdn: String,
    /// `<service>.<stack>.<user>.svc.<zone>`.
    pub service_fqdn: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerResponse {
    pub container: ContainerInfo,
    pub serial: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerListResponse {
    pub containers: Vec<ContainerInfo>,
    pub started: usize,
    pub updated: usize,
    pub stopped: usize,
    pub unchanged: usize,
    pub serial: u32,
}

/// `GET /v1/nodes/{node}/containers`: what the node runs, as stackdns knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerList {
    pub containers: Vec<ContainerInfo>,
    pub serial: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub node: String,
    pub state: String,
    /// Seconds the lease lasts without another heartbeat.
    pub lease_seconds: u64,
    /// The node's address as registered (what `<node>.node.<zone>` answers).
    pub address: String,
    pub serial: u32,
}

/// Answer to deletions and other writes with nothing else to say.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SerialResponse {
    pub serial: u32,
}

/// `POST /v1/users/{user}/tokens`: the token is shown once and never stored in clear.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserTokenResponse {
    pub user: String,
    pub token: String,
    pub serial: u32,
}

/// `DELETE /v1/users/{user}/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserTokensRevoked {
    pub user: String,
    pub revoked: usize,
    pub serial: u32,
}

/// `PATCH /v1/stacks/{user}/{stack}/services/{service}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    pub target_num_containers: u32,
}

/// A stack as Tutum's Endpoints tab showed it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackView {
    pub user: String,
    pub stack: String,
    pub services: Vec<ServiceView>,
    pub containers: Vec<StackContainer>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: String,
    pub image: String,
    pub strategy: crate::model::Strategy,
    /// Desired containers (`every_node`: ignored, one per matching node).
    pub target_num_containers: u32,
    /// Containers placement assigned.
    pub assigned: usize,
    /// Containers agents report running on live nodes.
    pub running: usize,
    /// `<service>.<stack>.<user>.svc.<zone>`: every running container, round robin.
    pub endpoint: String,
    /// `_<port>._<proto>.<endpoint>` SRV names of the published ports.
    pub srv: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackContainer {
    pub name: String,
    pub service: String,
    pub node: String,
    /// Host ports as placed (fixed or allocated).
    pub ports: Vec<Port>,
    pub generation: u64,
    /// `running` (its agent reports it, in DNS), `unready` (running, kept out of DNS: failing
    /// its health check or draining), `stopped` (it ran and stopped), `assigned` (not reported
    /// yet), or `lost` (its node's lease lapsed).
    pub state: String,
    /// The agent's word on it, when it said one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// `<name>.<stack>.<user>.cont.<zone>`.
    pub endpoint: String,
}

/// Answer to stack writes and reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackResponse {
    pub stack: StackView,
    /// True when nothing was applied (`?dry_run=true`): `stack` shows the plan.
    pub dry_run: bool,
    /// What the change did to containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<crate::model::Applied>,
    /// Dry runs: every node's verdict for every container placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdicts: Option<Vec<crate::placement::NodeVerdict>>,
    /// Dry runs: how many verdicts there are in all; `verdicts` holds the first 5,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdicts_total: Option<usize>,
    pub serial: u32,
}

/// `GET /v1/stacks`: every stack the caller may see.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AllStacks {
    pub stacks: Vec<StackName>,
    pub serial: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackName {
    pub user: String,
    pub stack: String,
}

/// `GET /v1/info`: what a client needs to know about this server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerInfo {
    /// The zone apex, absolute (`cluster.test.`).
    pub zone: String,
    /// Where DNS answers, UDP and TCP (`127.0.0.1:1053`).
    pub dns: String,
    /// TTL of the `svc`, `cont` and `node` records, seconds.
    pub dns_ttl: u32,
    /// A node is lost this many seconds after its last heartbeat.
    pub node_ttl_seconds: u64,
    pub version: String,
    /// The caller's role: `admin`, `node` or `user`.
    pub role: String,
    pub serial: u32,
    /// `redb` or `etcd`.
    #[serde(default)]
    pub store: String,
    /// With etcd: the API URL of the instance that leads (absent during an election).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// With etcd: whether this instance leads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leads: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackList {
    pub user: String,
    pub stacks: Vec<String>,
    pub serial: u32,
}

/// `GET /v1/nodes/{node}/assignments`: what the node's agent must run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AssignmentList {
    pub node: String,
    /// Pass it back as `?index=` to wait for the next change.
    pub index: u64,
    pub assignments: Vec<AssignmentItem>,
    /// TTL of the zone's records: how long a container must stay up after it left DNS, so
    /// that clients holding its address still reach it (drain before stop).
    pub dns_ttl: u32,
    pub serial: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AssignmentItem {
    pub user: String,
    pub stack: String,
    pub service: String,
    pub name: String,
    pub image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    pub environment: BTreeMap<String, String>,
    /// In the shape agents report: `{container_port, host_port, protocol}`.
    pub ports: Vec<Port>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_limit_mb: Option<u64>,
    /// Report the container with this generation.
    pub generation: u64,
    pub endpoint: String,
    /// When to restart it after it stops.
    #[serde(default)]
    pub restart: crate::stackfile::Restart,
    /// Run by the agent: the container is reported ready only while it passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<crate::stackfile::HealthCheck>,
}

/// `PUT /v1/users/{user}/limits` (admin): fields left out keep their value.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    #[serde(default)]
    pub max_containers: Option<u32>,
    #[serde(default)]
    pub max_stacks: Option<u32>,
    #[serde(default)]
    pub max_nodes: Option<u32>,
}

/// A user's limits and what it uses now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LimitsResponse {
    pub user: String,
    pub limits: crate::model::Limits,
    /// Containers placement assigned to the user's stacks.
    pub containers: u32,
    pub stacks: u32,
    pub serial: u32,
}

/// One target group of Prometheus HTTP service discovery (`GET /v1/sd/prometheus`): a
/// container's published port.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetGroup {
    /// `address:port`, the one target.
    pub targets: Vec<String>,
    /// `user`, `stack`, `service`, `container`, `node`, and `__meta_stackdns_*` labels for
    /// relabelling (the container port, the protocol, the container's name in DNS).
    pub labels: BTreeMap<String, String>,
}
