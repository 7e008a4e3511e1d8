//! The process runtime (like Nomad's raw_exec): a container is the service's `entrypoint` +
//! `command`, run as a child process on the node itself.
//!
//! Each container gets a directory, `<data>/containers/<user>/<stack>/<name>/`, which is its
//! working directory and holds `stdout.log`, `stderr.log` (appended to, across restarts) and
//! `state.json` (its spec, pid and the kernel's start time of that pid).
//!
//! A container runs in a process group of its own, so a stop signals everything it started,
//! and it outlives the agent: an agent that is killed or upgraded does not take the node's
//! containers with it. The next agent adopts them from `state.json` ("adoption on restart by
//! pid file"): a pid counts as the same process only if its start time matches, so a reused pid
//! is never mistaken for a container. Adopted processes are not the agent's children, so their
//! exit is noticed by polling `/proc`.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{Exit, Exited, Runtime, RuntimeError, Spec, Stopped, last_words, platform_env};
use crate::model::{ContainerKey, Label};

/// Variables of the agent's own environment a container inherits; everything else it gets
/// from its Stackfile and [`platform_env`].
const INHERITED: &[&str] = &[
    "PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "LOGNAME",
];
/// How often an adopted process (not our child) is checked for being alive.
const ADOPTED_POLL: Duration = Duration::from_millis(250);
/// How often a stop checks whether the process ended.
const STOP_POLL: Duration = Duration::from_millis(20);
/// After SIGKILL, how long to wait for the kernel to finish it.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// What `state.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StateFile {
    spec: Spec,
    pid: i32,
    /// Field 22 of `/proc/<pid>/stat`: clock ticks after boot the process started.
    start_ticks: u64,
}

/// A process the runtime is responsible for.
#[derive(Debug, Clone, Copy)]
struct Proc {
    pid: i32,
    start_ticks: u64,
}

pub struct ProcessRuntime {
    /// `<data>/containers`.
    root: PathBuf,
    node: Label,
    /// Set in every container: where the platform's DNS answers (`STACKDNS_DNS`, `STACKDNS_ZONE`).
    platform: BTreeMap<String, String>,
    procs: Arc<Mutex<HashMap<ContainerKey, Proc>>>,
}

impl ProcessRuntime {
    pub fn new(data: &Path, node: Label, platform: BTreeMap<String, String>) -> Self {
        Self {
            root: data.join("containers"),
            node,
            platform,
            procs: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn dir(&self, key: &ContainerKey) -> PathBuf {
        self.root
            .join(key.user.as_str())
            .join(key.stack.as_str())
            .join(key.name.as_str())
    }

    fn procs(&self) -> std::sync::MutexGuard<'_, HashMap<ContainerKey, Proc>> {
        // A poisoned map is still the truth about which processes exist.
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn files<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RuntimeError + 'a {
    move |source| RuntimeError::Files {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The state letter and start time of `pid`, from `/proc/<pid>/stat`.
fn stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Whether any process is left in the group `pgid` (zombies included). A process group id is
/// not reused while the group has members, so this never mistakes another group for ours.
fn group_alive(pgid: i32) -> bool {
    killpg(Pid::from_raw(pgid), None).is_ok()
}

/// Kills whatever is left of a container's process group.
fn kill_group(pgid: i32) {
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
}

/// Whether the process that started at `start_ticks` still runs as `pid`.
fn alive(proc: Proc) -> bool {
    stat(proc.pid).is_some_and(|(state, start)| state != 'Z' && state != 'X' && start == proc.start_ticks)
}

/// The last non-empty line of a log file (its last 4 KiB), trimmed to 160 characters.
pub fn last_line(path: &Path) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    last_words(&String::from_utf8_lossy(&tail))
}

impl Runtime for ProcessRuntime {
    async fn adopt(&self, exits: mpsc::Sender<Exited>) -> Result<Vec<Spec>, RuntimeError> {
        let mut adopted = Vec::new();
        for path in state_files(&self.root) {
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let Ok(state) = serde_json::from_str::<StateFile>(&text) else {
                tracing::warn!(path = %path.display(), "unreadable container state file; ignored");
                continue;
            };
            let proc = Proc {
                pid: state.pid,
                start_ticks: state.start_ticks,
            };
            if !alive(proc) {
                tracing::info!(container = %state.spec.key, pid = state.pid, "container ended while the agent was away");
                let _ = std::fs::remove_file(&path);
                continue;
            }
            tracing::info!(container = %state.spec.key, pid = state.pid, generation = state.spec.generation, "adopted a running container");
            self.procs().insert(state.spec.key.clone(), proc);
            let (key, generation) = (state.spec.key.clone(), state.spec.generation);
            let (procs, exits, dir) = (self.procs.clone(), exits.clone(), self.dir(&key));
            tokio::spawn(async move {
                while alive(proc) {
                    tokio::time::sleep(ADOPTED_POLL).await;
                }
                kill_group(proc.pid);
                ended(&procs, &dir, &key, proc.pid);
                let last_words = last_line(&dir.join("stderr.log"));
                let _ = exits
                    .send(Exited {
                        key,
                        generation,
                        exit: Exit::Vanished,
                        last_words,
                    })
                    .await;
            });
            adopted.push(state.spec);
        }
        Ok(adopted)
    }

    async fn start(
        &self,
        spec: &Spec,
        host: IpAddr,
        exits: mpsc::Sender<Exited>,
    ) -> Result<Option<IpAddr>, RuntimeError> {
        let key = spec.key.clone();
        let words: Vec<String> = spec
            .entrypoint
            .iter()
            .flatten()
            .chain(spec.command.iter().flatten())
            .cloned()
            .collect();
        let Some((program, args)) = words.split_first() else {
            return Err(RuntimeError::NoCommand { key });
        };
        let dir = self.dir(&key);
        std::fs::create_dir_all(&dir).map_err(files("cannot create the container directory", &dir))?;
        let log = |name: &str| {
            let path = dir.join(name);
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|source| RuntimeError::Files {
                    what: "cannot open the log",
                    path,
                    source,
                })
        };
        let (stdout, stderr) = (log("stdout.log")?, log("stderr.log")?);

        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .env_clear()
            .envs(
                INHERITED
                    .iter()
                    .filter_map(|k| std::env::var(k).ok().map(|v| (*k, v))),
            )
            .envs(&self.platform)
            .envs(&spec.environment)
            .envs(platform_env(spec, host, &self.node))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(false);
        let mut child = command.spawn().map_err(|source| RuntimeError::Spawn {
            key: key.clone(),
            program: program.clone(),
            source,
        })?;
        let pid = child.id().map_or(0, |p| p as i32);
        let start_ticks = stat(pid).map_or(0, |(_, start)| start);
        let proc = Proc { pid, start_ticks };
        let state = StateFile {
            spec: spec.clone(),
            pid,
            start_ticks,
        };
        let state_path = dir.join("state.json");
        if let Err(e) = write_state(&state_path, &state) {
            // Untracked, it could never be stopped or adopted: it does not run at all.
            kill_group(pid);
            let _ = child.start_kill();
            return Err(e);
        }
        self.procs().insert(key.clone(), proc);

        let (procs, generation) = (self.procs.clone(), spec.generation);
        tokio::spawn(async move {
            let exit = match child.wait().await {
                Ok(status) => match (
                    status.code(),
                    std::os::unix::process::ExitStatusExt::signal(&status),
                ) {
                    (Some(code), _) => Exit::Code(code),
                    (None, Some(signal)) => Exit::Signal(signal),
                    (None, None) => Exit::Vanished,
                },
                Err(_) => Exit::Vanished,
            };
            // The container ends with its main process: nothing it started may linger (holding
            // its port, say).
            kill_group(pid);
            ended(&procs, &dir, &key, pid);
            let last_words = last_line(&dir.join("stderr.log"));
            let _ = exits
                .send(Exited {
                    key,
                    generation,
                    exit,
                    last_words,
                })
                .await;
        });
        Ok(None)
    }

    async fn stop(&self, key: &ContainerKey, grace: Duration) -> Result<Stopped, RuntimeError> {
        let Some(proc) = self.procs().get(key).copied() else {
            return Ok(Stopped::AlreadyGone);
        };
        if !alive(proc) {
            return Ok(Stopped::AlreadyGone);
        }
        let group = Pid::from_raw(proc.pid);
        let signal = |signal| match killpg(group, signal) {
            Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
            Err(source) => Err(RuntimeError::Signal {
                key: key.clone(),
                source,
            }),
        };
        signal(Signal::SIGTERM)?;
        if wait_gone(proc, grace).await {
            return Ok(Stopped::Terminated);
        }
        signal(Signal::SIGKILL)?;
        wait_gone(proc, KILL_WAIT).await;
        Ok(Stopped::Killed)
    }
}

/// Waits up to `limit` for the process and everything in its group to end; whether they did.
async fn wait_gone(proc: Proc, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while alive(proc) || group_alive(proc.pid) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(STOP_POLL).await;
    }
    true
}

/// Writes `state.json` whole or not at all (a temp file renamed over it), readable by the
/// agent's user only: it holds the Stackfile's environment.
fn write_state(path: &Path, state: &StateFile) -> Result<(), RuntimeError> {
    use std::io::Write;
    let text = serde_json::to_vec(state).map_err(|e| RuntimeError::Files {
        what: "cannot encode",
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })?;
    let temp = path.with_extension("json.new");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temp).map_err(files("cannot write", &temp))?;
    file.write_all(&text)
        .and_then(|()| file.sync_all())
        .map_err(files("cannot write", &temp))?;
    std::fs::rename(&temp, path).map_err(files("cannot write", path))
}

/// Forgets a process that ended: out of the map (unless a new one took the name) and its
/// state file gone, so a later agent does not adopt it.
fn ended(procs: &Mutex<HashMap<ContainerKey, Proc>>, dir: &Path, key: &ContainerKey, pid: i32) {
    let mut procs = procs.lock().unwrap_or_else(|e| e.into_inner());
    if procs.get(key).is_some_and(|p| p.pid == pid) {
        procs.remove(key);
        let path = dir.join("state.json");
        let ours = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<StateFile>(&t).ok())
            .is_some_and(|s| s.pid == pid);
        if ours {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Every `<root>/<user>/<stack>/<name>/state.json`.
fn state_files(root: &Path) -> Vec<PathBuf> {
    let children = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut found = Vec::new();
    for user in children(root) {
        for stack in children(&user) {
            for name in children(&stack) {
                let path = name.join("state.json");
                if path.is_file() {
                    found.push(path);
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_stat() {
        let me = std::process::id() as i32;
        let (state, start) = stat(me).expect("own stat");
        assert!(matches!(state, 'R' | 'S'), "{state}");
        assert!(alive(Proc {
            pid: me,
            start_ticks: start
        }));
        assert!(!alive(Proc {
            pid: me,
            start_ticks: start + 1
        }));
    }

    #[test]
    fn last_line_skips_blank_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stderr.log");
        std::fs::write(&path, "first\nbind: address already in use\n\n").expect("write");
        assert_eq!(last_line(&path).as_deref(), Some("bind: address already in use"));
        assert_eq!(last_line(&dir.path().join("missing")), None);
    }
}
