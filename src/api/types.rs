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
