//! The platform's vocabulary: validated names, nodes, containers and ports.
//!
//! Pure data and validation, no I/O. Everything that crosses the API boundary is turned into
//! these types first, so the rest of the program never sees an unchecked identifier.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A longest label is 63 octets (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// Why a value was not accepted as a DNS label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{field} {value:?} is not a valid name: {reason}; names are DNS labels of 1-63 characters \
     a-z, 0-9 and '-', starting and ending with a letter or digit"
)]
pub struct InvalidLabel {
    /// Which field held the value (`node`, `user`, `service`...), so the message can name it.
    pub field: &'static str,
    pub value: String,
    pub reason: &'static str,
}

/// An identifier that is a valid DNS label: `[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?`.
///
/// Input is case-insensitive and stored lower-case, so `Web` and `web` are the same service.
///
/// Held as a [`SmolStr`](smol_str::SmolStr): a label of up to 23 bytes (nearly all of them)
/// lives inline with no allocation, a longer one is shared, and a clone never allocates. The
/// control plane copies keys into several indexes per container; as owned `String`s those
/// copies were the largest part of what a container cost in memory.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Label(smol_str::SmolStr);

impl Label {
    /// Validates `value` as the field named `field`, folding it to lower case.
    pub fn parse(field: &'static str, value: &str) -> Result<Self, InvalidLabel> {
        let invalid = |reason| InvalidLabel {
            field,
            value: value.to_owned(),
            reason,
        };
        let bytes = value.as_bytes();
        if bytes.is_empty() {
            return Err(invalid("it is empty"));
        }
        if bytes.len() > MAX_LABEL_LEN {
            return Err(invalid("it is longer than 63 characters"));
        }
        if !bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-') {
            return Err(invalid("it contains a character other than a-z, 0-9 and '-'"));
        }
        if bytes[0] == b'-' || bytes[bytes.len() - 1] == b'-' {
            return Err(invalid("it starts or ends with '-'"));
        }
        Ok(Self(if bytes.iter().any(u8::is_ascii_uppercase) {
            smol_str::SmolStr::new(value.to_ascii_lowercase())
        } else {
            smol_str::SmolStr::new(value)
        }))
    }

    /// Sorts before every label (it is not one: empty): the lower bound of a range of keys
    /// that start with given labels.
    pub const LOWEST: Label = Label(smol_str::SmolStr::new_inline(""));

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Label {
    /// Stored records are re-validated on load: a label that was valid when written stays valid,
    /// and a corrupted one is reported instead of being served.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Label::parse("label", &s).map_err(serde::de::Error::custom)
    }
}

/// Transport protocol of a published port, as in `_80._tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One port a container exposes. `host_port` is where it is reachable on the node; without
/// one the port is only reachable at the container's own address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    pub container_port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
}

fn default_protocol() -> Protocol {
    Protocol::Tcp
}

/// Resources a node offers to placement.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    pub memory_mb: u64,
    pub cpus: f64,
}

/// A node as an admin registered it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub name: Label,
    pub address: IpAddr,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub tags: Vec<Label>,
    #[serde(default)]
    pub capacity: Option<Capacity>,
    /// SHA-256 of the node's bearer token; the token itself is never stored.
    pub token_sha256: String,
    /// The user the node belongs to (registered with that user's token): it runs and reports
    /// that user's containers only. `None`: a platform node, registered by an admin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Label>,
    /// A platform node's users: whose containers it may run and report. `None`: every user's
    /// (the default, and the trust a platform node carries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<Vec<Label>>,
}

impl Node {
    /// Whether the node may run and report containers of `user`.
    pub fn serves(&self, user: &Label) -> bool {
        match (&self.owner, &self.tenants) {
            (Some(owner), _) => owner == user,
            (None, Some(tenants)) => tenants.contains(user),
            (None, None) => true,
        }
    }

    /// The users it serves, `None` for all (what placement needs to know).
    pub fn tenant_set(&self) -> Option<BTreeSet<Label>> {
        match (&self.owner, &self.tenants) {
            (Some(owner), _) => Some(BTreeSet::from([owner.clone()])),
            (None, Some(tenants)) => Some(tenants.iter().cloned().collect()),
            (None, None) => None,
        }
    }
}

/// Identity of a container across nodes: `web-1` of stack `quickstart-ruby` of user `honeniq`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContainerKey {
    pub user: Label,
    pub stack: Label,
    pub name: Label,
}

impl fmt::Display for ContainerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.name, self.stack, self.user)
    }
}

/// Identity of a service: `web` of stack `quickstart-ruby` of user `honeniq`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceKey {
    pub user: Label,
    pub stack: Label,
    pub service: Label,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.service, self.stack, self.user)
    }
}

/// What an agent reported about one container, and what we remember after it stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub key: ContainerKey,
    /// The node that last reported it.
    pub node: Label,
    pub service: Label,
    /// Address the agent reported; `None` means "reach it at the node's address".
    pub address: Option<IpAddr>,
    pub ports: Vec<Port>,
    /// Fencing token: reports older than this are refused (design §4).
    pub generation: u64,
    /// `false` once stopped: the record stays as a tombstone so a late report from before the
    /// stop cannot bring the container back.
    pub running: bool,
    /// Whether it may receive traffic: a running container that fails its health check, or is
    /// draining before a stop, is reported not ready and leaves DNS while staying known.
    #[serde(default = "yes")]
    pub ready: bool,
    /// The agent's word on its state ("health check failed: …", "draining", "exited with
    /// status 1"), shown by `stack ps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Reported by the node placement assigned it to, at the assigned generation. In a
    /// declared stack only such a container answers in DNS once its assignment is gone (while
    /// its agent drains it); a name reported by a node nobody placed it on never does.
    #[serde(default)]
    pub placed: bool,
    /// When it stopped (seconds since the Unix epoch), for a tombstone: kept for
    /// `--tombstone-retention`, then removed, its generation kept in its node's floor.
    /// `None` while it runs, and for tombstones stored before this was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<u64>,
}

fn yes() -> bool {
    true
}

impl Container {
    /// The service this container belongs to.
    pub fn service_key(&self) -> ServiceKey {
        ServiceKey {
            user: self.key.user.clone(),
            stack: self.key.stack.clone(),
            service: self.service.clone(),
        }
    }
}

/// How placement picks nodes for a service's containers (Tutum's deployment strategies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The node with the fewest containers in total.
    #[default]
    EmptiestNode,
    /// The node with the fewest containers of this service (spread across nodes, then across
    /// `region`/`provider` labels).
    HighAvailability,
    /// One container on every node that matches, following nodes as they come and go.
    EveryNode,
}

/// A port a service publishes, as declared: `"80"` (host port chosen by placement),
/// `"80:80"` (fixed host port), `"8053:53/udp"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortSpec {
    pub container_port: u16,
    /// `None`: a dynamic host port from the node's range.
    pub host_port: Option<u16>,
    pub protocol: Protocol,
}

/// A service as declared by its stack: everything placement decides on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub key: ServiceKey,
    /// `target_num_containers`; ignored for `every_node`, which runs one per matching node.
    pub target: u32,
    pub strategy: Strategy,
    pub tags: BTreeSet<Label>,
    pub ports: Vec<PortSpec>,
    pub mem_limit_mb: Option<u64>,
    /// An opaque fingerprint of everything else (image, env, command...): when it changes, the
    /// containers are redeployed even though placement itself sees no difference.
    pub spec_hash: u64,
}

impl ServiceSpec {
    /// Whether `other` can keep this service's containers as they are: everything but the
    /// target matches. A difference means a redeploy (same names, generation + 1).
    pub fn same_deployment(&self, other: &ServiceSpec) -> bool {
        self.key == other.key
            && self.strategy == other.strategy
            && self.tags == other.tags
            && self.ports == other.ports
            && self.mem_limit_mb == other.mem_limit_mb
            && self.spec_hash == other.spec_hash
    }
}

/// One container placed on one node: what that node's agent is told to run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Named `<service>-<n>`.
    pub container: ContainerKey,
    pub service: ServiceKey,
    pub node: Label,
    /// As declared, with `host_port` always set: the fixed one or the dynamic one allocated.
    pub ports: Vec<Port>,
    pub mem_limit_mb: Option<u64>,
    /// The [`ServiceSpec::spec_hash`] it was placed with, so the agent can tell a redeploy.
    pub spec_hash: u64,
    /// Fencing token (design §4): + 1 on every move or redeploy. A new container starts at 1,
    /// or above the last generation its name had (placement's `Input::retired`, or the input's
    /// assignment when the name leaves and comes back within one change).
    pub generation: u64,
}

/// What a placement change did to containers (their names, `<name>.<stack>.<user>`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Applied {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub moved: Vec<String>,
    pub redeployed: Vec<String>,
}

impl Applied {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.moved.is_empty()
            && self.redeployed.is_empty()
    }
}

/// How much one user may run: containers (every assignment of every stack) and stacks. An
/// admin sets them per user; the server's defaults apply otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_containers: u32,
    pub max_stacks: u32,
    /// Nodes the user may register with its own token.
    #[serde(default = "default_max_nodes")]
    pub max_nodes: u32,
}

fn default_max_nodes() -> u32 {
    Limits::default().max_nodes
}

impl Default for Limits {
    /// A user runs at most 1,000 containers in at most 100 stacks, on at most 20 nodes of its
    /// own, unless an admin says more.
    fn default() -> Self {
        Limits {
            max_containers: 1_000,
            max_stacks: 100,
            max_nodes: 20,
        }
    }
}
