//! Harness for tests with real agents: the `stackdns` CLI as a user runs it, agents as nodes
//! run them (process runtime, on loopback addresses 127.0.0.x), and the container processes
//! they start, found through `/proc` and always killed at the end.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{ADMIN, Server};

/// What a CLI run printed, and how it ended.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `stackdns ARGS` against `server` with `token`.
pub fn cli(server: &Server, token: &str, args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_stackdns"))
        .args(args)
        .env("STACKDNS_API", &server.api)
        .env("STACKDNS_TOKEN", token)
        .env_remove("STACKDNS_TOKEN_FILE")
        .env("STACKDNS_LOG", "warn")
        .output()
        .expect("run the CLI");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs the CLI as admin and insists it succeeds; returns stdout.
pub fn admin(server: &Server, args: &[&str]) -> String {
    let run = cli(server, ADMIN, args);
    assert_eq!(run.code, 0, "stackdns {args:?} failed: {run:?}");
    run.stdout
}

/// `stack ps --json` of the quick-start stack.
pub fn ps(server: &Server, stack: &str) -> Value {
    serde_json::from_str(&admin(server, &["stack", "ps", stack, "--json"])).expect("stack ps JSON")
}

/// The containers of a `stack ps --json` answer: (name, node, state).
pub fn containers(ps: &Value) -> Vec<(String, String, String)> {
    let mut list: Vec<_> = ps["stack"]["containers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
                    (s("name"), s("node"), s("state"))
                })
                .collect()
        })
        .unwrap_or_default();
    list.sort();
    list
}

/// One `stackdns agent` process.
pub struct Agent {
    child: Option<Child>,
    pub node: String,
    pub data: PathBuf,
    token_file: PathBuf,
    api: String,
    extra: Vec<String>,
    log: Arc<Mutex<String>>,
}

impl Agent {
    /// Registers `node` at `address` through the CLI and starts its agent with data in `dir`.
    pub fn register_and_start(
        server: &Server,
        dir: &Path,
        node: &str,
        address: &str,
        extra: &[&str],
    ) -> Agent {
        let token = admin(server, &["node", "add", node, "--address", address]);
        let token_file = dir.join(format!("{node}.token"));
        std::fs::write(&token_file, token.trim()).expect("token file");
        let mut agent = Agent {
            child: None,
            node: node.to_owned(),
            data: dir.join(format!("agent-{node}")),
            token_file,
            api: server.api.clone(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            log: Arc::new(Mutex::new(String::new())),
        };
        agent.start();
        agent
    }

    pub fn start(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_stackdns"))
            .arg("agent")
            .args(["--api", &self.api, "--node", &self.node, "--stop-grace", "2"])
            .arg("--token-file")
            .arg(&self.token_file)
            .arg("--data")
            .arg(&self.data)
            .args(&self.extra)
            .env("STACKDNS_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the agent");
        let stderr = child.stderr.take().expect("stderr");
        let sink = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log").push_str(&(line + "\n"));
            }
        });
        self.child = Some(child);
    }

    /// SIGKILL, as a crash would: its containers keep running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        kill_containers(&self.data);
    }
}

/// Kills every container process an agent with data in `data` started (their process groups).
pub fn kill_containers(data: &Path) {
    for pid in container_pids(data) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Live processes whose working directory is under `data` (containers run in their own
/// directory there), with their `STACKDNS_CONTAINER`.
pub fn processes_under(data: &Path) -> Vec<(i32, String)> {
    let Ok(data) = data.canonicalize() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) else {
            continue;
        };
        if !cwd.starts_with(&data) {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'));
        if zombie {
            continue;
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let name = environ
            .split(|b| *b == 0)
            .filter_map(|kv| std::str::from_utf8(kv).ok())
            .find_map(|kv| kv.strip_prefix("STACKDNS_CONTAINER="))
            .unwrap_or_default()
            .to_owned();
        found.push((pid, name));
    }
    found
}

/// The process-group leaders among [`processes_under`] (one per container).
fn container_pids(data: &Path) -> Vec<i32> {
    processes_under(data)
        .into_iter()
        .filter(|(pid, _)| {
            nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(*pid))).is_ok_and(|g| g.as_raw() == *pid)
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// How many container process groups run `name` under `data`.
pub fn running_count(data: &Path, name: &str) -> usize {
    let leaders = container_pids(data);
    processes_under(data)
        .into_iter()
        .filter(|(pid, n)| n == name && leaders.contains(pid))
        .count()
}

/// Polls `check` every 50 ms for up to `within`; the time it took, or `None`.
pub fn wait_for(within: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if check() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// `dig @server NAME TYPE +short`, with the real dig.
pub fn dig(server: &Server, name: &str, rtype: &str) -> Vec<String> {
    let output = Command::new("dig")
        .arg(format!("@{}", server.dns.ip()))
        .args([
            "-p",
            &server.dns.port().to_string(),
            name,
            rtype,
            "+short",
            "+time=1",
            "+tries=1",
        ])
        .output()
        .expect("dig (dnsutils) is installed");
    let mut lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .collect();
    lines.sort();
    lines
}

/// One blocking HTTP/1.0 GET with short timeouts (tests drive it from plain threads): the
/// body of a 200 answer, or why not.
pub fn get(url: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").ok_or("not an http URL")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:80")
    };
    let addr: std::net::SocketAddr = host.parse().map_err(|e| format!("{host}: {e}"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {host}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("read {host}: {e}"))?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer: {answer:?}"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        return Err(status.to_owned());
    }
    Ok(body.trim().to_owned())
}
