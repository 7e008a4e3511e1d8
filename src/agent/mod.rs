//! `stackdns agent` (design §8): runs on a node and makes it run what placement assigned it.
//!
//! ```text
//!            heartbeat task ---POST heartbeat every lease/3---------------------------> API
//!  API --GET assignments?index&wait (blocking)--> watcher task --list--> main loop
//!                                                                          | diff against the
//!                                                                          | supervisors
//!              runtime (process) <--start/stop-- supervisor per container <-+ start / Stop
//!                        |                         |  health checks, restart policy, drain
//!                        +--exits--> main loop ----+
//!                                        supervisors --state--> reporter --PUT/DELETE--> API
//! ```
//!
//! Start-up: one heartbeat (which says the node's address and lease), adopt what the runtime
//! already runs, read the assignments, send the whole list (anti-entropy), then follow the
//! assignments. The agent never stops containers because the API is away: it keeps them
//! running, retries with backoff and jitter, and resynchronises when the API answers again.
//! Stopping the agent (SIGTERM) leaves the containers running too; the next agent adopts them.

mod health;
mod report;
pub mod runtime;
mod supervisor;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use clap::Args;
use tokio::sync::mpsc;

use crate::api::types::{AssignmentItem, AssignmentList};
use crate::client::{Client, ClientError};
use crate::model::{ContainerKey, Label};
use report::{Backoff, Known, Reporter};
use runtime::docker::DockerRuntime;
use runtime::process::ProcessRuntime;
use runtime::{Exited, Runtime, Spec};
use supervisor::{Command, Settings, Supervisor};

/// How long one blocking assignment query waits for a change.
const WATCH_WAIT: Duration = Duration::from_secs(30);

/// The container runtimes the agent can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// The service's command as a child process on the node (like Nomad's raw_exec).
    Process,
    /// The service's image through the Docker Engine API.
    Docker,
}

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// Log lines as `text` or `json` (one object per line); `STACKDNS_LOG` filters them.
    #[arg(long, env = "STACKDNS_LOG_FORMAT", value_enum, default_value_t = crate::config::LogFormat::Text)]
    pub log_format: crate::config::LogFormat,
    /// API address(es), comma-separated.
    #[arg(long, env = "STACKDNS_API", default_value = "http://127.0.0.1:8053")]
    pub api: String,
    /// This node's name, as registered (`stackdns node add`).
    #[arg(long, env = "STACKDNS_NODE")]
    pub node: String,
    /// File holding the node's token; read again whenever the API refuses it.
    #[arg(long, env = "STACKDNS_AGENT_TOKEN_FILE")]
    pub token_file: PathBuf,
    #[arg(long, env = "STACKDNS_AGENT_RUNTIME", value_enum, default_value_t = RuntimeKind::Process)]
    pub runtime: RuntimeKind,
    /// Address containers bind to (`HOST`) and health checks reach; default: the node's
    /// registered address.
    #[arg(long, env = "STACKDNS_AGENT_ADDRESS")]
    pub address: Option<IpAddr>,
    /// Where container logs and state live (default: ./stackdns-agent-<node>).
    #[arg(long, env = "STACKDNS_AGENT_DATA")]
    pub data: Option<PathBuf>,
    /// Seconds between SIGTERM and SIGKILL when stopping a container.
    #[arg(long, env = "STACKDNS_AGENT_STOP_GRACE", default_value_t = 10)]
    pub stop_grace: u64,
    /// The Docker engine's socket (docker runtime).
    #[arg(long, env = "STACKDNS_DOCKER_SOCKET", default_value = "/var/run/docker.sock")]
    pub docker_socket: String,
    /// How docker containers reach the network: ports published on the node's address
    /// (bridge), or the node's own network, where they bind $HOST:$PORT (host).
    #[arg(long, env = "STACKDNS_DOCKER_NETWORK", value_enum, default_value_t = runtime::docker::Network::Bridge)]
    pub docker_network: runtime::docker::Network,
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{field} {value:?}: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("cannot read the token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the API refuses node {node}: {source}; check --node and the token file (stackdns node add prints the token, stackdns node token NAME issues a new one)"
    )]
    Refused {
        node: String,
        #[source]
        source: ClientError,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
}

fn read_token(path: &PathBuf) -> Result<String, AgentError> {
    let token = std::fs::read_to_string(path).map_err(|source| AgentError::TokenFile {
        path: path.clone(),
        source,
    })?;
    Ok(token.trim().to_owned())
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(args: AgentArgs) -> Result<(), AgentError> {
    let node = Label::parse("node", &args.node).map_err(|e| AgentError::Invalid {
        field: "--node",
        value: args.node.clone(),
        reason: e.to_string(),
    })?;
    let client = Arc::new(Client::new(&args.api, read_token(&args.token_file)?)?);
    let data = args
        .data
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("stackdns-agent-{node}")));
    std::fs::create_dir_all(&data).map_err(|source| AgentError::Invalid {
        field: "--data",
        value: data.display().to_string(),
        reason: source.to_string(),
    })?;

    // The first heartbeat says where the node is and how long its lease lasts.
    let mut backoff = Backoff::default();
    let (lease, registered) = loop {
        match client.heartbeat(node.as_str()).await {
            Ok(answer) => {
                let registered = answer.address.parse::<IpAddr>().ok();
                break (Duration::from_secs(answer.lease_seconds.max(1)), registered);
            }
            // Wrong name or wrong token: retrying cannot help, and nothing runs yet.
            Err(
                e @ ClientError::Api {
                    status: 401 | 403 | 404,
                    ..
                },
            ) => {
                return Err(AgentError::Refused {
                    node: node.to_string(),
                    source: e,
                });
            }
            Err(e) => {
                let wait = backoff.next();
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot reach the API yet; retrying");
                tokio::time::sleep(wait).await;
            }
        }
    };
    let host = args.address.or(registered).ok_or_else(|| AgentError::Invalid {
        field: "--address",
        value: String::new(),
        reason: "the API did not say the node's address; pass --address".to_owned(),
    })?;
    let settings = Arc::new(Settings {
        host,
        report_address: (Some(host) != registered).then_some(host),
        dns_ttl: AtomicU32::new(5),
        stop_grace: Duration::from_secs(args.stop_grace),
        lease,
    });
    tracing::info!(%node, %host, lease_s = lease.as_secs(), data = %data.display(), runtime = ?args.runtime, "agent starting");

    // Containers learn where the platform's DNS answers, to resolve their peers.
    let mut platform = std::collections::BTreeMap::new();
    match client.info().await {
        Ok(info) => {
            platform.insert("STACKDNS_DNS".to_owned(), info.dns);
            platform.insert("STACKDNS_ZONE".to_owned(), info.zone);
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the server's DNS address; containers get no STACKDNS_DNS")
        }
    }
    let start = Start {
        client,
        node,
        settings,
        token_file: args.token_file.clone(),
    };
    match args.runtime {
        RuntimeKind::Process => {
            let runtime = ProcessRuntime::new(&data, start.node.clone(), platform);
            drive(Arc::new(runtime), start).await
        }
        RuntimeKind::Docker => {
            let runtime = DockerRuntime::connect(
                &args.docker_socket,
                start.node.clone(),
                args.docker_network,
                platform,
            )
            .await?;
            drive(Arc::new(runtime), start).await
        }
    }
}

/// What every runtime's agent starts from.
struct Start {
    client: Arc<Client>,
    node: Label,
    settings: Arc<Settings>,
    token_file: PathBuf,
}

/// Adopts what `runtime` runs, then follows the assignments until SIGINT or SIGTERM.
async fn drive<R: Runtime>(runtime: Arc<R>, start: Start) -> Result<(), AgentError> {
    let Start {
        client,
        node,
        settings,
        token_file,
    } = start;
    let lease = settings.lease;
    let reporter = Reporter::new(client.clone(), node.clone());
    tokio::spawn(reporter.clone().run());
    tokio::spawn(heartbeats(
        client.clone(),
        node.clone(),
        lease,
        token_file.clone(),
    ));

    let (exits_tx, exits_rx) = mpsc::channel(256);
    let adopted = runtime.adopt(exits_tx.clone()).await?;
    let (lists_tx, lists_rx) = mpsc::channel(4);
    tokio::spawn(watch_assignments(
        client.clone(),
        node.clone(),
        reporter.clone(),
        token_file,
        lists_tx,
    ));
    let mut agent = Agent {
        runtime,
        reporter,
        settings,
        supervisors: HashMap::new(),
        exits: exits_tx,
    };
    for spec in adopted {
        // Counted as not listed until the assignments say it is ours.
        agent.supervise(spec, true, false);
    }
    agent.run(lists_rx, exits_rx).await;
    Ok(())
}

/// A container's supervisor, as the main loop knows it.
struct Handle {
    generation: u64,
    /// Host ports the container holds, which a new container must not take before it stops.
    ports: Vec<(u16, crate::model::Protocol)>,
    commands: mpsc::Sender<Command>,
    exits: mpsc::Sender<Exited>,
    task: tokio::task::JoinHandle<()>,
    stopping: bool,
}

struct Agent<R> {
    runtime: Arc<R>,
    reporter: Arc<Reporter>,
    settings: Arc<Settings>,
    /// Every container this agent is responsible for, by name; at most one supervisor per
    /// name (a new generation waits for the old one to stop).
    supervisors: HashMap<ContainerKey, Handle>,
    exits: mpsc::Sender<Exited>,
}

impl<R: Runtime> Agent<R> {
    async fn run(&mut self, mut lists: mpsc::Receiver<AssignmentList>, mut exits: mpsc::Receiver<Exited>) {
        let mut latest: Option<AssignmentList> = None;
        let mut tidy = tokio::time::interval(Duration::from_millis(200));
        let shutdown = crate::signal::terminated();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                Some(list) = lists.recv() => {
                    self.settings.dns_ttl.store(list.dns_ttl, Ordering::Relaxed);
                    self.reconcile(&list);
                    latest = Some(list);
                }
                Some(exited) = exits.recv() => {
                    if let Some(handle) = self.supervisors.get(&exited.key) {
                        let _ = handle.exits.send(exited).await;
                    }
                }
                () = self.reporter.refresh.notified() => {
                    if let Some(list) = &latest {
                        self.reconcile(list);
                    }
                }
                _ = tidy.tick() => {
                    // Supervisors that finished stopping make room for a new generation.
                    let before = self.supervisors.len();
                    self.supervisors.retain(|_, h| !h.task.is_finished());
                    if self.supervisors.len() != before
                        && let Some(list) = &latest {
                            self.reconcile(list);
                        }
                }
                () = &mut shutdown => {
                    tracing::info!(containers = self.supervisors.len(), "agent stopping; containers keep running and the next agent adopts them");
                    return;
                }
            }
        }
    }

    /// Makes the supervisors match `list`: stop what is not assigned (or superseded), start
    /// what is assigned and not running.
    fn reconcile(&mut self, list: &AssignmentList) {
        let mut wanted: HashMap<ContainerKey, &AssignmentItem> = HashMap::new();
        for item in &list.assignments {
            match key_of(item) {
                Ok(key) => {
                    wanted.insert(key, item);
                }
                Err(e) => tracing::error!(error = %e, "an assignment names an invalid container; skipped"),
            }
        }
        for (key, handle) in &mut self.supervisors {
            let current = wanted.get(key).is_some_and(|a| a.generation == handle.generation);
            self.reporter.set_listed(key, current && !handle.stopping);
            if !current && !handle.stopping {
                handle.stopping = true;
                tracing::info!(container = %key, generation = handle.generation, "no longer assigned here at this generation; draining");
                let _ = handle.commands.try_send(Command::Stop);
            }
        }
        for (key, item) in wanted {
            if self.supervisors.contains_key(&key) {
                continue; // Running, or stopping and then started once it is gone.
            }
            // A container being drained may still hold a host port placement has given to
            // this one (a redeploy from "80:80" to "80", say): start it once that one stopped.
            let held = self.supervisors.iter().find(|(_, h)| {
                item.ports
                    .iter()
                    .any(|p| p.host_port.is_some_and(|hp| h.ports.contains(&(hp, p.protocol))))
            });
            if let Some((holder, _)) = held {
                tracing::info!(container = %key, waits_for = %holder, "waiting for a stopping container to free its host port");
                continue;
            }
            match spec_of(&key, item) {
                Ok(spec) => self.supervise(spec, false, true),
                Err(e) => tracing::error!(container = %key, error = %e, "cannot run this assignment"),
            }
        }
        // From the first list on, the supervisors know what is ours: the whole list may go.
        self.reporter.allow_resync();
    }

    /// Starts a supervisor for `spec`.
    fn supervise(&mut self, spec: Spec, adopted: bool, listed: bool) {
        let key = spec.key.clone();
        let (commands_tx, commands) = mpsc::channel(4);
        let (exits_tx, exits) = mpsc::channel(16);
        if adopted {
            // Known to the API as running until the assignments or the resync say otherwise.
            self.reporter.set(
                &key,
                Known::Running {
                    service: spec.service.clone(),
                    generation: spec.generation,
                    address: self.settings.report_address,
                    ports: spec.ports.clone(),
                    ready: true,
                    detail: None,
                    listed,
                },
            );
        }
        let generation = spec.generation;
        let ports = spec
            .ports
            .iter()
            .filter_map(|p| p.host_port.map(|hp| (hp, p.protocol)))
            .collect();
        let supervisor = Supervisor {
            spec,
            adopted,
            runtime: self.runtime.clone(),
            reporter: self.reporter.clone(),
            settings: self.settings.clone(),
            commands,
            exits,
            exit_sink: self.exits.clone(),
        };
        let task = tokio::spawn(supervisor.run());
        self.supervisors.insert(
            key,
            Handle {
                generation,
                ports,
                commands: commands_tx,
                exits: exits_tx,
                task,
                stopping: false,
            },
        );
    }
}

fn key_of(item: &AssignmentItem) -> Result<ContainerKey, crate::model::InvalidLabel> {
    Ok(ContainerKey {
        user: Label::parse("user", &item.user)?,
        stack: Label::parse("stack", &item.stack)?,
        name: Label::parse("container", &item.name)?,
    })
}

fn spec_of(key: &ContainerKey, item: &AssignmentItem) -> Result<Spec, crate::model::InvalidLabel> {
    Ok(Spec {
        key: key.clone(),
        service: Label::parse("service", &item.service)?,
        generation: item.generation,
        image: item.image.clone(),
        command: item.command.clone(),
        entrypoint: item.entrypoint.clone(),
        environment: item.environment.clone(),
        ports: item.ports.clone(),
        mem_limit_mb: item.mem_limit_mb,
        restart: item.restart,
        health_check: item.health_check.clone(),
    })
}

/// Follows the node's assignments by blocking query, forever.
async fn watch_assignments(
    client: Arc<Client>,
    node: Label,
    reporter: Arc<Reporter>,
    token_file: PathBuf,
    lists: mpsc::Sender<AssignmentList>,
) {
    let mut index = 0;
    let mut first = true;
    let mut backoff = Backoff::default();
    loop {
        // The first query (and the first after an error) answers at once.
        let wait = if first || backoff.failing() {
            Duration::ZERO
        } else {
            WATCH_WAIT
        };
        let refresh = reporter.refresh.notified();
        match client.assignments(node.as_str(), index, wait).await {
            Ok(list) => {
                if backoff.failing() {
                    // The API was away: whatever it believes now may be stale (a restart, a
                    // failover), so it gets the whole list again.
                    tracing::info!("assignments reachable again; resynchronising");
                    reporter.resync();
                }
                backoff.reset();
                first = false;
                index = list.index;
                if lists.send(list).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                refresh_token(&client, &token_file, &e);
                let wait = backoff.next();
                if backoff.attempts() == 1 || backoff.attempts() % 20 == 0 {
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot read the assignments; containers keep running, retrying");
                }
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = refresh => {}
                }
            }
        }
    }
}

/// Renews the lease every third of it, forever.
async fn heartbeats(client: Arc<Client>, node: Label, lease: Duration, token_file: PathBuf) {
    let every = (lease / 3).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        match client.heartbeat_within(node.as_str(), every).await {
            Ok(_) if failing => {
                tracing::info!("heartbeats accepted again");
                failing = false;
            }
            Ok(_) => {}
            Err(e) => {
                if !failing {
                    tracing::error!(error = %e, "heartbeat failed; the node's containers keep running, retrying");
                }
                failing = true;
                refresh_token(&client, &token_file, &e);
            }
        }
    }
}

/// After a 401, the token may have been rotated: read the file again.
fn refresh_token(client: &Client, path: &PathBuf, error: &ClientError) {
    if error.status() != Some(401) {
        return;
    }
    match read_token(path) {
        Ok(token) if client.set_token(&token) => {
            tracing::info!(path = %path.display(), "read a new node token")
        }
        Ok(_) => {
            tracing::error!(path = %path.display(), "the API refuses the node token (401); replace the token file with the node's current token (stackdns node token NAME)")
        }
        Err(e) => tracing::error!(error = %e, "cannot read the token file"),
    }
}
