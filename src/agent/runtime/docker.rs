//! The docker runtime: containers through the Docker Engine API (bollard, over the unix socket).
//!
//! A container is named `stackdns-<node>-<user>-<stack>-<name>` and labelled with who it is
//! (`stackdns.node`, `.user`, `.stack`, `.service`, `.container`, `.generation`) and with its
//! whole [`Spec`] (`stackdns.spec`, JSON), so an agent that restarts adopts exactly the
//! containers it left running, whatever else the engine runs. Docker's own restart policy is
//! off: the agent applies the Stackfile's, as for processes.
//!
//! Networking: `bridge` (the default) publishes each port on the node's address
//! (`HOST:host_port -> container_port`); `host` runs the container in the node's network, where
//! it binds `$HOST:$PORT` itself. Images are pulled unless the engine already has them.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, StopContainerOptions, WaitContainerOptions,
};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{Exit, Exited, Runtime, RuntimeError, Spec, Stopped, last_words, platform_env};
use crate::model::{ContainerKey, Label};

/// How containers reach the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Network {
    /// Docker's bridge, each published port bound on the node's address.
    Bridge,
    /// The node's own network: the container binds `$HOST:$PORT`.
    Host,
}

/// Seconds the engine may take to answer one call.
const API_TIMEOUT_S: u64 = 120;
/// Exit status of a process killed by SIGKILL (128 + 9).
const KILLED: i64 = 137;

pub struct DockerRuntime {
    docker: Docker,
    node: Label,
    network: Network,
    /// `STACKDNS_DNS` and `STACKDNS_ZONE`, set in every container.
    platform: BTreeMap<String, String>,
}

fn docker_error(what: &str) -> impl FnOnce(DockerError) -> RuntimeError + '_ {
    move |e| RuntimeError::Docker(format!("{what}: {e}"))
}

/// Whether the engine said "no such …".
fn not_found(e: &DockerError) -> bool {
    matches!(e, DockerError::DockerResponseServerError { status_code: 404, .. })
}

impl DockerRuntime {
    /// Connects to the engine at `socket` and checks that it answers.
    pub async fn connect(
        socket: &str,
        node: Label,
        network: Network,
        platform: BTreeMap<String, String>,
    ) -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_unix(socket, API_TIMEOUT_S, bollard::API_DEFAULT_VERSION)
            .map_err(docker_error(socket))?;
        let version = docker.version().await.map_err(docker_error(socket))?;
        tracing::info!(
            socket,
            engine = version.version.as_deref().unwrap_or("?"),
            ?network,
            "docker engine answers"
        );
        Ok(Self {
            docker,
            node,
            network,
            platform,
        })
    }

    fn name(&self, key: &ContainerKey) -> String {
        format!("stackdns-{}-{}-{}-{}", self.node, key.user, key.stack, key.name)
    }

    fn labels(&self, spec: &Spec) -> HashMap<String, String> {
        let mut labels = HashMap::new();
        labels.insert("stackdns.node".to_owned(), self.node.to_string());
        labels.insert("stackdns.user".to_owned(), spec.key.user.to_string());
        labels.insert("stackdns.stack".to_owned(), spec.key.stack.to_string());
        labels.insert("stackdns.service".to_owned(), spec.service.to_string());
        labels.insert("stackdns.container".to_owned(), spec.key.name.to_string());
        labels.insert("stackdns.generation".to_owned(), spec.generation.to_string());
        labels.insert(
            "stackdns.spec".to_owned(),
            serde_json::to_string(spec).unwrap_or_default(),
        );
        labels
    }

    /// The image, pulled unless the engine has it already.
    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        if self.docker.inspect_image(image).await.is_ok() {
            return Ok(());
        }
        tracing::info!(image, "pulling");
        let options = CreateImageOptions {
            from_image: Some(image.to_owned()),
            ..Default::default()
        };
        let mut pull = self.docker.create_image(Some(options), None, None);
        while let Some(progress) = pull.next().await {
            progress.map_err(|e| RuntimeError::Docker(format!("cannot pull image {image}: {e}")))?;
        }
        Ok(())
    }

    /// Follows one container until it exits, then tells the agent.
    fn watch(&self, name: String, key: ContainerKey, generation: u64, exits: mpsc::Sender<Exited>) {
        let docker = self.docker.clone();
        tokio::spawn(async move {
            let options = WaitContainerOptions {
                condition: "not-running".to_owned(),
            };
            let exit = loop {
                let mut wait = docker.wait_container(&name, Some(options.clone()));
                match wait.next().await {
                    Some(Ok(answer)) => break exit_of(answer.status_code),
                    // A non-zero status comes back as an error carrying the code.
                    Some(Err(DockerError::DockerContainerWaitError { code, .. })) => break exit_of(code),
                    _ => {}
                }
                // The stream broke (the engine restarted, a socket hiccup): still running?
                let state = docker
                    .inspect_container(&name, None::<InspectContainerOptions>)
                    .await
                    .ok()
                    .and_then(|i| i.state);
                match state {
                    Some(s) if s.running == Some(true) => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Some(s) => break s.exit_code.map_or(Exit::Vanished, exit_of),
                    None => break Exit::Vanished,
                }
            };
            let last_words = last_stderr_line(&docker, &name).await;
            let _ = exits
                .send(Exited {
                    key,
                    generation,
                    exit,
                    last_words,
                })
                .await;
        });
    }
}

fn exit_of(code: i64) -> Exit {
    match code {
        c if c > 128 && c < 160 => Exit::Signal((c - 128) as i32),
        c => Exit::Code(c as i32),
    }
}

async fn last_stderr_line(docker: &Docker, name: &str) -> Option<String> {
    let options = LogsOptions {
        stderr: true,
        stdout: false,
        tail: "5".to_owned(),
        ..Default::default()
    };
    let mut lines = Vec::new();
    let mut logs = docker.logs(name, Some(options));
    while let Some(Ok(chunk)) = logs.next().await {
        lines.push(chunk.to_string());
    }
    last_words(&lines.concat())
}

impl Runtime for DockerRuntime {
    async fn adopt(&self, exits: mpsc::Sender<Exited>) -> Result<Vec<Spec>, RuntimeError> {
        let mut filters = HashMap::new();
        filters.insert("label".to_owned(), vec![format!("stackdns.node={}", self.node)]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let found = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(docker_error("cannot list containers"))?;
        let mut adopted = Vec::new();
        for summary in found {
            let Some(id) = summary.id.clone() else { continue };
            let labels = summary.labels.unwrap_or_default();
            let spec = labels
                .get("stackdns.spec")
                .and_then(|s| serde_json::from_str::<Spec>(s).ok());
            let running = summary
                .state
                .is_some_and(|s| s == bollard::models::ContainerSummaryStateEnum::RUNNING);
            match spec {
                Some(spec) if running => {
                    tracing::info!(container = %spec.key, id = %id, generation = spec.generation, "adopted a running docker container");
                    self.watch(
                        self.name(&spec.key),
                        spec.key.clone(),
                        spec.generation,
                        exits.clone(),
                    );
                    adopted.push(spec);
                }
                _ => {
                    // Ended while the agent was away, or not ours to read: clear the name.
                    let options = RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    };
                    let _ = self.docker.remove_container(&id, Some(options)).await;
                }
            }
        }
        Ok(adopted)
    }

    async fn start(
        &self,
        spec: &Spec,
        host: IpAddr,
        exits: mpsc::Sender<Exited>,
    ) -> Result<Option<IpAddr>, RuntimeError> {
        self.ensure_image(&spec.image).await?;
        let name = self.name(&spec.key);
        // A container of an earlier generation may still hold the name.
        let remove = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match self.docker.remove_container(&name, Some(remove)).await {
            Err(e) if !not_found(&e) => {
                return Err(RuntimeError::Docker(format!("cannot remove the old {name}: {e}")));
            }
            _ => {}
        }
        let mut env: BTreeMap<String, String> = self.platform.clone();
        env.extend(spec.environment.clone());
        env.extend(platform_env(spec, host, &self.node));
        let mut exposed = Vec::new();
        let mut bindings = HashMap::new();
        for p in &spec.ports {
            let inside = format!("{}/{}", p.container_port, p.protocol.as_str());
            exposed.push(inside.clone());
            if let Some(host_port) = p.host_port {
                let binding = PortBinding {
                    host_ip: Some(host.to_string()),
                    host_port: Some(host_port.to_string()),
                };
                bindings.insert(inside, Some(vec![binding]));
            }
        }
        let host_config = HostConfig {
            network_mode: Some(match self.network {
                Network::Bridge => "bridge".to_owned(),
                Network::Host => "host".to_owned(),
            }),
            port_bindings: (self.network == Network::Bridge).then_some(bindings),
            memory: spec.mem_limit_mb.map(|mb| (mb * 1024 * 1024) as i64),
            init: Some(true),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: spec.command.clone(),
            entrypoint: spec.entrypoint.clone(),
            env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(self.labels(spec)),
            exposed_ports: (self.network == Network::Bridge).then_some(exposed),
            host_config: Some(host_config),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        self.docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| RuntimeError::Docker(format!("cannot create {name}: {e}")))?;
        self.docker
            .start_container(&name, None)
            .await
            .map_err(|e| RuntimeError::Docker(format!("cannot start {name}: {e}")))?;
        self.watch(name, spec.key.clone(), spec.generation, exits);
        Ok(None)
    }

    async fn stop(&self, key: &ContainerKey, grace: Duration) -> Result<Stopped, RuntimeError> {
        let name = self.name(key);
        let (running, id) = match self
            .docker
            .inspect_container(&name, None::<InspectContainerOptions>)
            .await
        {
            Ok(inspect) => (inspect.state.and_then(|s| s.running).unwrap_or(false), inspect.id),
            Err(e) if not_found(&e) => return Ok(Stopped::AlreadyGone),
            Err(e) => return Err(RuntimeError::Docker(format!("cannot inspect {name}: {e}"))),
        };
        if !running {
            let _ = self.remove(&name).await;
            return Ok(Stopped::AlreadyGone);
        }
        // The engine sends SIGTERM, waits `t` seconds, then SIGKILL.
        let options = StopContainerOptions {
            t: Some(grace.as_secs().min(i32::MAX as u64) as i32),
            signal: None,
        };
        self.docker
            .stop_container(&name, Some(options))
            .await
            .map_err(|e| RuntimeError::Docker(format!("cannot stop {name}: {e}")))?;
        let code = self
            .docker
            .inspect_container(&name, None::<InspectContainerOptions>)
            .await
            .ok()
            .and_then(|i| i.state)
            .and_then(|s| s.exit_code);
        // Removed a moment later, so the exit watcher still reads its status and last words;
        // by its id, since a next generation may already run under the same name.
        let docker = self.docker.clone();
        let target = id.unwrap_or(name);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let options = RemoveContainerOptions {
                force: true,
                ..Default::default()
            };
            let _ = docker.remove_container(&target, Some(options)).await;
        });
        Ok(if code == Some(KILLED) {
            Stopped::Killed
        } else {
            Stopped::Terminated
        })
    }
}

impl DockerRuntime {
    async fn remove(&self, name: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        self.docker.remove_container(name, Some(options)).await
    }
}
