//! Stackfiles: the Tutum-style `stackfile.yml` a user declares a stack with, read into
//! validated [`ServiceDef`]s. Pure: bytes in, a value or an error out; no I/O.
//!
//! ```text
//! body bytes + Content-Type
//!   |  read::Format::detect            JSON if declared or if the body starts with '{', else YAML
//!   v
//! read::Document::load                yaml.rs (serde-saphyr) / json.rs (serde_json) into one
//!   |                                 positioned tree, inside the budgets below; repeated keys
//!   |                                 refused
//!   v
//! service::stackfile                  each service key looked up in keys.rs: honoured, checked
//!   |                                 and ignored, kept as a runtime option, or refused;
//!   |                                 values.rs parses ports, sizes, commands; links resolved
//!   v
//! Stackfile {services}   or   StackfileError {code, line, message}
//! ```
//!
//! The same structure is accepted as YAML or JSON. Every error names the key or value at fault
//! and its line; `docs/stackfile.md` is the user-facing reference (every key, the port and
//! memory forms, the error catalogue), kept in step with the table in `service.rs`.
//!
//! # Budgets
//!
//! A hostile body cannot make parsing expensive: at most [`MAX_BODY_BYTES`], [`MAX_DEPTH`]
//! levels of nesting, [`MAX_NODES`] values, 50,000 values replayed through YAML aliases (an
//! alias bomb stops there), [`MAX_SERVICES`] services, [`MAX_TARGET_NUM_CONTAINERS`] per
//! service.

mod document;
mod error;
mod json;
mod keys;
mod read;
mod service;
#[cfg(test)]
mod tests;
mod values;
mod yaml;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{Label, PortSpec, Strategy};

pub use error::{ErrorKind, StackfileError};

/// Largest accepted body: 1 MiB holds thousands of services.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Deepest nesting of lists and mappings; a Stackfile needs 4.
pub const MAX_DEPTH: usize = 16;
/// Most values (scalars, lists, mappings, keys included for JSON) in one body.
pub const MAX_NODES: usize = 100_000;
/// Most services in one Stackfile.
pub const MAX_SERVICES: usize = 1_000;
/// Largest `target_num_containers` (the placement engine has the same limit).
pub const MAX_TARGET_NUM_CONTAINERS: u32 = 10_000;

/// Reads a Stackfile. `content_type` is the request's `Content-Type`: JSON
/// (`application/json`, `…+json`) or YAML (`application/yaml`, `application/x-yaml`,
/// `text/yaml`…); for any other type, or none, a body starting with `{` is JSON and anything
/// else YAML.
pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Stackfile, StackfileError> {
    parse_with(body, content_type, &Policy::default())
}

/// Reads a Stackfile under `policy` (what the submitting user may ask for).
pub fn parse_with(
    body: &[u8],
    content_type: Option<&str>,
    policy: &Policy,
) -> Result<Stackfile, StackfileError> {
    let document = read::Document::load(body, content_type)?;
    service::stackfile(&document.root, policy).map_err(|problem| document.error(problem))
}

/// What a Stackfile may ask for, decided per user by the server's admin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `privileged`, `devices`, `cap_add`, `security_opt`, `pid: host` and host mounts in
    /// `volumes`: refused unless allowed.
    pub privileged: bool,
    /// The largest `mem_limit`, MiB: what the biggest machine here has.
    pub max_memory_mb: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            privileged: false,
            max_memory_mb: DEFAULT_MAX_MEMORY_MB,
        }
    }
}

/// 1 TiB: no machine here has more.
pub const DEFAULT_MAX_MEMORY_MB: u64 = 1 << 20;

/// A stack as declared: its services by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stackfile {
    /// Keyed by service name, a DNS label stored lower-case; never empty.
    pub services: BTreeMap<Label, ServiceDef>,
}

/// One service as declared. The serde form is this struct's own (for storage), not the
/// Stackfile syntax: read Stackfiles with [`parse`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceDef {
    /// Required, non-empty, as written (`redis`, `tutum/redis:latest`, `registry:5000/a/b@sha256:…`).
    pub image: String,
    /// Published ports in declared order; no `(container_port, protocol)` and no fixed
    /// `(host_port, protocol)` appears twice.
    pub ports: Vec<PortSpec>,
    /// Services of the same Stackfile this one links to (aliases dropped), first mention order,
    /// no duplicates, never itself.
    pub links: Vec<Label>,
    pub environment: BTreeMap<String, String>,
    /// Default 1; 0 keeps the service declared with nothing running. Placement ignores it for
    /// `every_node`.
    pub target_num_containers: u32,
    pub deployment_strategy: Strategy,
    /// A node must carry all of them; declared order, no duplicates.
    pub tags: Vec<Label>,
    /// `mem_limit` in MiB, rounded up; `None` when absent or 0 (Docker's "no limit").
    pub mem_limit_mb: Option<u64>,
    pub cpu_shares: Option<u32>,
    /// `None`: the image's own. A string in the Stackfile is split into words as a POSIX shell
    /// would (Docker Compose's rule); `Some(vec![])` (from `""` or `[]`) overrides with nothing.
    pub command: Option<Vec<String>>,
    /// As `command`.
    pub entrypoint: Option<Vec<String>>,
    /// From `restart`, or Tutum's `autorestart`.
    pub restart: Restart,
    /// Run by the agent; while it fails, the container is not in DNS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Accepted container options stackdns does not interpret (`hostname`, `volumes`, `user`,
    /// `labels`…; see docs/stackfile.md), by key, as written. Kept so that [`Self::spec_hash`]
    /// notices when they change, and so an agent could be given them.
    pub runtime_options: BTreeMap<String, serde_json::Value>,
}

/// A service's health check (`health_check`), with every default filled in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HealthCheck {
    pub probe: Probe,
    /// The published TCP container port probed (through its host port on the node).
    pub port: Option<u16>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive passes before the container enters DNS (also after it starts).
    pub healthy_threshold: u32,
    /// Consecutive failures before it leaves DNS.
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            probe: Probe::Tcp,
            port: None,
            interval_ms: 10_000,
            timeout_ms: 2_000,
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

/// What a health check does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    /// `GET path`; 2xx and 3xx pass.
    Http { path: String },
    /// A TCP connection opens.
    Tcp,
}

/// When a container is restarted after it stops (Docker's restart policies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    /// Never (Docker's and Tutum's default).
    #[default]
    No,
    /// When it exits with a non-zero status, at most `max_retries` times if given.
    OnFailure { max_retries: Option<u32> },
    /// Whenever it stops.
    Always,
}

impl ServiceDef {
    /// A service running `image` with every other key at its default.
    pub fn new(image: impl Into<String>) -> Self {
        ServiceDef {
            image: image.into(),
            ports: Vec::new(),
            links: Vec::new(),
            environment: BTreeMap::new(),
            target_num_containers: 1,
            deployment_strategy: Strategy::default(),
            tags: Vec::new(),
            mem_limit_mb: None,
            cpu_shares: None,
            command: None,
            entrypoint: None,
            restart: Restart::default(),
            health_check: None,
            runtime_options: BTreeMap::new(),
        }
    }

    /// A fingerprint of what each container runs: when it changes, the service's containers
    /// must be redeployed. Covers image, ports, links, environment, memory and CPU limits,
    /// command, entrypoint, restart policy and the runtime options; not
    /// `target_num_containers`, `deployment_strategy` or `tags`, which decide how many
    /// containers run and where, not what each one is.
    ///
    /// Stable across runs, builds and platforms: SHA-256 over a canonical JSON form (object
    /// keys sorted, ports and links sorted), first 8 bytes big-endian. Changing the form
    /// changes every hash and so redeploys every service once; the `v1` tag is there to make
    /// that a deliberate act.
    pub fn spec_hash(&self) -> u64 {
        let mut text = String::from("stackdns spec v1\n");
        write_canonical(&self.canonical_spec(), &mut text);
        let digest = Sha256::digest(text.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first)
    }

    fn canonical_spec(&self) -> serde_json::Value {
        /// Only what `spec_hash` covers, in a form where order does not matter.
        #[derive(Serialize)]
        struct Spec<'a> {
            image: &'a str,
            ports: Vec<PortSpec>,
            links: Vec<&'a str>,
            environment: &'a BTreeMap<String, String>,
            mem_limit_mb: Option<u64>,
            cpu_shares: Option<u32>,
            command: &'a Option<Vec<String>>,
            entrypoint: &'a Option<Vec<String>>,
            restart: Restart,
            // Absent from the form when not set, so services without one keep their hash.
            #[serde(skip_serializing_if = "Option::is_none")]
            health_check: Option<&'a HealthCheck>,
            runtime_options: &'a BTreeMap<String, serde_json::Value>,
        }
        let mut ports = self.ports.clone();
        ports.sort();
        let mut links: Vec<&str> = self.links.iter().map(Label::as_str).collect();
        links.sort_unstable();
        links.dedup();
        let spec = Spec {
            image: &self.image,
            ports,
            links,
            environment: &self.environment,
            mem_limit_mb: self.mem_limit_mb,
            cpu_shares: self.cpu_shares,
            command: &self.command,
            entrypoint: &self.entrypoint,
            restart: self.restart,
            health_check: self.health_check.as_ref(),
            runtime_options: &self.runtime_options,
        };
        // Cannot fail: every map above has string keys and every type serializes infallibly.
        serde_json::to_value(spec).unwrap_or_default()
    }
}

/// JSON with object keys in sorted order at every level, whatever serde_json's map type is.
fn write_canonical(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value as J;
    match value {
        J::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        J::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&J::String(key.clone()).to_string());
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}
