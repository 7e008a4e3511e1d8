//! Container runtimes behind one trait: what the agent asks of whatever runs containers.
//!
//! A runtime starts a container from a [`Spec`], stops it (SIGTERM, a grace period, SIGKILL),
//! tells the agent when one exits on its own, and on start-up hands back the containers it
//! already runs ([`Runtime::adopt`]), so an agent restart neither loses nor doubles them.

pub mod docker;
pub mod process;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::model::{ContainerKey, Label, Port};
use crate::stackfile::{HealthCheck, Restart};

/// What to run: one container of an assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    pub key: ContainerKey,
    pub service: Label,
    /// The assignment's generation, reported with every state of this container.
    pub generation: u64,
    pub image: String,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub environment: BTreeMap<String, String>,
    /// Host ports as placement chose them.
    pub ports: Vec<Port>,
    pub mem_limit_mb: Option<u64>,
    /// Kept with the container, so an adopted one keeps its policy and check.
    #[serde(default)]
    pub restart: Restart,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// It ended, and how is not known (a process adopted after an agent restart is not the
    /// agent's child, so its status cannot be read).
    Vanished,
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exited with status {code}"),
            Exit::Signal(signal) => write!(f, "killed by signal {signal}"),
            Exit::Vanished => write!(f, "ended (its exit status is unknown)"),
        }
    }
}

/// The runtime says a container ended (on its own, or because it was stopped).
#[derive(Debug, Clone)]
pub struct Exited {
    pub key: ContainerKey,
    pub generation: u64,
    pub exit: Exit,
    /// The last line it wrote to stderr, if any: often the reason.
    pub last_words: Option<String>,
}

/// How a stop went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It ended within the grace period after SIGTERM.
    Terminated,
    /// It ignored SIGTERM for the whole grace period and was killed.
    Killed,
    /// It had already ended.
    AlreadyGone,
}

/// Why a runtime could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "{key}: the process runtime runs the service's command, and it has neither command nor entrypoint"
    )]
    NoCommand { key: ContainerKey },
    #[error("{key}: cannot start {program:?}: {source}")]
    Spawn {
        key: ContainerKey,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path}: {source}")]
    Files {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{key}: cannot signal it: {source}")]
    Signal {
        key: ContainerKey,
        #[source]
        source: nix::Error,
    },
    /// What the Docker engine said, with what was being done.
    #[error("docker: {0}")]
    Docker(String),
}

/// Whatever runs containers on this node.
pub trait Runtime: Send + Sync + 'static {
    /// The containers it already runs (from before an agent restart); from now on their
    /// exits are sent to `exits` like those of containers it starts.
    fn adopt(
        &self,
        exits: mpsc::Sender<Exited>,
    ) -> impl Future<Output = Result<Vec<Spec>, RuntimeError>> + Send;

    /// Starts `spec` with `host` (the node's address) as its `HOST`; its exit is sent to
    /// `exits`. Answers the container's own address, when it has one apart from the node's.
    fn start(
        &self,
        spec: &Spec,
        host: IpAddr,
        exits: mpsc::Sender<Exited>,
    ) -> impl Future<Output = Result<Option<IpAddr>, RuntimeError>> + Send;

    /// Stops it: SIGTERM, then SIGKILL after `grace`. Its exit is still sent to `exits`.
    fn stop(
        &self,
        key: &ContainerKey,
        grace: Duration,
    ) -> impl Future<Output = Result<Stopped, RuntimeError>> + Send;
}

/// The last non-empty line of what a container wrote (its stderr tail), without control
/// characters and at most 160 characters: often the reason it ended.
pub fn last_words(text: &str) -> Option<String> {
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
    Some(line.chars().filter(|c| !c.is_control()).take(160).collect())
}

/// The environment a container gets besides its Stackfile's: `HOST`, `PORT` (the first
/// published port's host port), `PORT_<container port>` for each, and its identity.
pub fn platform_env(spec: &Spec, host: IpAddr, node: &Label) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("HOST".to_owned(), host.to_string());
    if let Some(first) = spec.ports.iter().find_map(|p| p.host_port) {
        env.insert("PORT".to_owned(), first.to_string());
    }
    for p in &spec.ports {
        if let Some(host_port) = p.host_port {
            env.insert(format!("PORT_{}", p.container_port), host_port.to_string());
        }
    }
    env.insert("STACKDNS_USER".to_owned(), spec.key.user.to_string());
    env.insert("STACKDNS_STACK".to_owned(), spec.key.stack.to_string());
    env.insert("STACKDNS_SERVICE".to_owned(), spec.service.to_string());
    env.insert("STACKDNS_CONTAINER".to_owned(), spec.key.name.to_string());
    env.insert("STACKDNS_NODE".to_owned(), node.to_string());
    env.insert("STACKDNS_GENERATION".to_owned(), spec.generation.to_string());
    env
}
