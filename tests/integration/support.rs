//! Test harness: the real `stackdns` binary on ephemeral loopback ports with a temp data dir,
//! a real HTTP client, and a DNS client built on hickory-proto (an independent codec).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use serde_json::{Value, json};

pub const ADMIN: &str = "admin-secret-for-tests";
pub const ZONE: &str = "cluster.test.";

/// A running server process; killed when dropped.
pub struct Server {
    child: Child,
    pub dns: SocketAddr,
    pub api: String,
    log: Arc<Mutex<String>>,
    _dir: Option<tempfile::TempDir>,
    http: reqwest::Client,
}

impl Server {
    /// Starts a server with a fresh data dir and the given extra flags.
    pub fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let mut server = Server::start_in(&data, extra, true);
        server._dir = Some(dir);
        server
    }

    /// Starts a server on `data` (kept by the caller); `admin_env` sets STACKDNS_ADMIN_TOKEN.
    pub fn start_in(data: &Path, extra: &[&str], admin_env: bool) -> Server {
        Server::launch(data, extra, admin_env, None, &[])
    }

    /// Starts a server on `data` with extra environment variables.
    pub fn start_with_env(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Server::launch(data, extra, true, None, env)
    }

    /// Starts a server with a fresh data dir under an open-file limit of `nofile`.
    pub fn start_with_nofile(nofile: u64, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut server = Server::launch(&dir.path().join("data"), extra, true, Some(nofile), &[]);
        server._dir = Some(dir);
        server
    }

    fn launch(
        data: &Path,
        extra: &[&str],
        admin_env: bool,
        nofile: Option<u64>,
        env: &[(&str, &str)],
    ) -> Server {
        let zone = Path::new(env!("CARGO_MANIFEST_DIR")).join("zones/cluster.test.zone");
        let binary = env!("CARGO_BIN_EXE_stackdns");
        let mut cmd = match nofile {
            None => Command::new(binary),
            Some(n) => {
                let mut cmd = Command::new("prlimit");
                cmd.arg(format!("--nofile={n}:{n}")).arg("--").arg(binary);
                cmd
            }
        };
        cmd.args(["serve", "--udp-workers", "2"]);
        // Port 0 unless the test names the addresses itself (a restart on the same ports).
        for flag in ["--dns", "--api", "--metrics-addr"] {
            if !extra.contains(&flag) {
                cmd.args([flag, "127.0.0.1:0"]);
            }
        }
        cmd.arg("--data")
            .arg(data)
            .arg("--zone-file")
            .arg(zone)
            .args(extra)
            .env("STACKDNS_LOG", "info")
            .env_remove("STACKDNS_ADMIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if admin_env {
            cmd.env("STACKDNS_ADMIN_TOKEN", ADMIN);
        }
        cmd.envs(env.iter().copied());
        let mut child = cmd.spawn().expect("spawn stackdns");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening dns=").nth(1) {
                    let _ = tx.send(rest.to_owned());
                }
                sink.lock().expect("log lock").push_str(&(line + "\n"));
            }
        });
        let Ok(listening) = rx.recv_timeout(Duration::from_secs(20)) else {
            let _ = child.kill();
            panic!("server did not start:\n{}", log.lock().expect("log lock"));
        };
        let (dns, api) = listening.split_once(" api=").expect("listening line");
        Server {
            child,
            dns: dns.trim().parse().expect("dns addr"),
            api: format!("http://{}", api.trim()),
            log,
            _dir: None,
            // A connection per request: a pooled connection that the server closed after a
            // refused (413) body fails the next request on the client side.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("http client"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(mut self) -> Option<tempfile::TempDir> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self._dir.take()
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not stop on SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a request; returns status and JSON body (Null if the body is not JSON).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{path}", self.api));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.send(req).await
    }

    /// Sends raw bytes as the body.
    pub async fn call_raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.api))
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        self.send(req).await
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = req.send().await.expect("http request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Registers a node as admin; returns its token.
    pub async fn add_node(&self, name: &str, address: &str) -> String {
        let (status, body) = self
            .call(
                "PUT",
                &format!("/v1/nodes/{name}"),
                Some(ADMIN),
                Some(json!({"address": address})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["token"].as_str().expect("token").to_owned()
    }

    /// Issues a token for `user` as admin; returns it.
    pub async fn user_token(&self, user: &str) -> String {
        let (status, body) = self
            .call("POST", &format!("/v1/users/{user}/tokens"), Some(ADMIN), None)
            .await;
        assert_eq!(status, 201, "{body}");
        body["token"].as_str().expect("token").to_owned()
    }

    /// Replaces `node`'s whole container list, as its agent does after a restart.
    pub async fn replace_containers(&self, node: &str, token: &str, containers: Vec<Value>) {
        let (status, body) = self
            .call(
                "PUT",
                &format!("/v1/nodes/{node}/containers"),
                Some(token),
                Some(json!({"containers": containers})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    /// Reports a running container (user honeniq, stack quickstart-ruby) as its node.
    pub async fn report(&self, node: &str, token: &str, container: &str, body: Value) -> (u16, Value) {
        let path = format!("/v1/nodes/{node}/containers/honeniq/quickstart-ruby/{container}");
        self.call("PUT", &path, Some(token), Some(body)).await
    }

    /// Where `--metrics-addr` listens (port 0 unless the test named one).
    pub fn metrics_addr(&self) -> String {
        self.log()
            .split("metrics listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("a metrics listener")
            .to_owned()
    }

    /// `/metrics` from `--metrics-addr`, as Prometheus scrapes it.
    pub async fn scrape(&self) -> String {
        let url = format!("http://{}/metrics", self.metrics_addr());
        let resp = self.http.get(url).send().await.expect("scrape");
        assert_eq!(resp.status(), 200);
        resp.text().await.expect("metrics text")
    }

    pub fn dns(&self) -> Dns {
        Dns { addr: self.dns }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A body for `report`: service web, port 80 published on host port 80.
pub fn web(generation: u64) -> Value {
    json!({"service": "web", "ports": [{"container_port": 80, "host_port": 80, "protocol": "tcp"}], "generation": generation})
}

/// A DNS client talking to one server.
pub struct Dns {
    pub addr: SocketAddr,
}

/// How to ask.
#[derive(Clone, Copy)]
pub struct Ask {
    pub edns: Option<u16>,
    pub tcp: bool,
}

impl Default for Ask {
    fn default() -> Self {
        Ask {
            edns: Some(1232),
            tcp: false,
        }
    }
}

pub fn fqdn(name: &str) -> Name {
    Name::from_ascii(name).expect("name")
}

impl Dns {
    pub fn query(&self, name: &str, rtype: RecordType) -> Message {
        self.ask(name, rtype, Ask::default())
    }

    pub fn ask(&self, name: &str, rtype: RecordType, how: Ask) -> Message {
        self.try_ask(name, rtype, how).expect("an answer")
    }

    /// Like [`Dns::ask`], `None` when nothing (parseable) comes back.
    pub fn try_ask(&self, name: &str, rtype: RecordType, how: Ask) -> Option<Message> {
        let mut msg = Message::query();
        msg.metadata.id = 0x5eed;
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(fqdn(name), rtype));
        if let Some(size) = how.edns {
            let mut edns = Edns::new();
            edns.set_max_payload(size);
            msg.set_edns(edns);
        }
        let bytes = msg.to_vec().expect("encode");
        let reply = if how.tcp {
            self.tcp_raw(&bytes)
        } else {
            self.udp_raw(&bytes)
        }?;
        let parsed = Message::from_vec(&reply).ok()?;
        assert_eq!(parsed.metadata.id, 0x5eed);
        Some(parsed)
    }

    /// Sends raw bytes over UDP; `None` if nothing came back within a second.
    pub fn udp_raw(&self, packet: &[u8]) -> Option<Vec<u8>> {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        socket.send_to(packet, self.addr).expect("send");
        let mut buf = vec![0u8; 65535];
        let (len, _) = socket.recv_from(&mut buf).ok()?;
        buf.truncate(len);
        Some(buf)
    }

    /// Sends one length-prefixed message over a new TCP connection.
    pub fn tcp_raw(&self, packet: &[u8]) -> Option<Vec<u8>> {
        let mut stream = TcpStream::connect(self.addr).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(packet);
        stream.write_all(&framed).expect("write");
        read_frame(&mut stream)
    }

    /// The sorted IPv4 addresses answered for `name`.
    pub fn a(&self, name: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .query(name, RecordType::A)
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    /// The zone's SOA serial as answered now.
    pub fn serial(&self) -> u32 {
        let reply = self.query(ZONE, RecordType::SOA);
        match reply.answers.first().map(|r| &r.data) {
            Some(hickory_proto::rr::RData::SOA(soa)) => soa.serial,
            other => panic!("no SOA: {other:?}"),
        }
    }
}

pub fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).ok()?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut buf).ok()?;
    Some(buf)
}

/// Polls `check` every 50 ms until it holds or `within` passes.
pub fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TCP connection to `to` from the loopback address `from`.
pub fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let local: SocketAddr = format!("{from}:0").parse().expect("address");
    socket.bind(&local.into()).expect("bind source address");
    socket.connect(&to.into()).expect("connect");
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
}

pub fn api_addr(server: &Server) -> SocketAddr {
    server
        .api
        .trim_start_matches("http://")
        .parse()
        .expect("api address")
}

/// Everything the server sends until it closes (or the read times out).
pub fn read_all(stream: &mut TcpStream) -> String {
    let mut text = Vec::new();
    let _ = stream.read_to_end(&mut text);
    String::from_utf8_lossy(&text).into_owned()
}

/// Where a peer's binary is installed, if it is.
fn find(binary: &str) -> Option<PathBuf> {
    [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ]
    .iter()
    .map(|dir| Path::new(dir).join(binary))
    .find(|p| p.exists())
}

/// A peer's binary, or `None` (with a note) where it is absent and not required.
pub fn peer(binary: &str, package: &str) -> Option<PathBuf> {
    let found = find(binary);
    if found.is_none() {
        assert!(
            std::env::var("STACKDNS_REQUIRE_PEERS").as_deref() != Ok("1"),
            "{binary} is required (STACKDNS_REQUIRE_PEERS=1): apt-get install {package}"
        );
        eprintln!("{binary} not installed: skipping this test (apt-get install {package})");
    }
    found
}

/// `cmd` set to run `serve` on free ports without a metrics listener, on `data` and `zone`: for
/// runs expected to end by themselves (a refused start).
pub fn serve_once<'c>(cmd: &'c mut Command, data: &Path, zone: &Path) -> &'c mut Command {
    cmd.args([
        "serve",
        "--dns",
        "127.0.0.1:0",
        "--api",
        "127.0.0.1:0",
        "--metrics-addr",
        "off",
    ])
    .arg("--data")
    .arg(data)
    .arg("--zone-file")
    .arg(zone)
}

/// `stackdns serve` on `data` with the test zone, `extra` flags and `env`, as [`serve_once`]
/// sets it up, the admin token given, stderr piped: for runs that end by themselves or are read
/// line by line.
pub fn spawn_once<S: AsRef<std::ffi::OsStr>>(data: &Path, extra: &[S], env: &[(&str, &str)]) -> Child {
    let zone = Path::new(env!("CARGO_MANIFEST_DIR")).join("zones/cluster.test.zone");
    serve_once(&mut Command::new(env!("CARGO_BIN_EXE_stackdns")), data, &zone)
        .args(extra)
        .env("STACKDNS_ADMIN_TOKEN", ADMIN)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stackdns")
}

/// Runs [`spawn_once`], which must stop by itself within 10 s, unsuccessfully: its exit code
/// and what it printed.
pub fn start_fails<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(
    data: &Path,
    extra: &[S],
) -> (Option<i32>, String) {
    let mut child = spawn_once(data, extra, &[]);
    let stopped = eventually(Duration::from_secs(10), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !stopped {
        let _ = child.kill();
    }
    let status = child.wait().expect("wait");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read");
    assert!(stopped && !status.success(), "it started: {extra:?}\n{stderr}");
    (status.code(), stderr)
}

/// A peer process (a secondary, a resolver, a browser, Prometheus), killed when dropped.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The IPv4 addresses of an answer, in the order given.
pub fn addresses_in_order(reply: &Message) -> Vec<String> {
    reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

/// A loopback port free for both UDP and TCP, for a peer to listen on.
pub fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = udp.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
