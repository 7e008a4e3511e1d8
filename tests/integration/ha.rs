//! Several instances on one etcd cluster (`--store etcd://…`): a real three-member etcd on
//! loopback ports (Debian's `etcd-server`), two stackdns instances on it, and the failures
//! docs/ha.md describes: an instance killed mid-burst, an etcd member down, a lost quorum.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use serde_json::json;

use crate::support::{ADMIN, Reaped, Server, eventually, free_port, peer, web};

/// A three-member etcd cluster on loopback, each member restartable.
struct Etcd {
    bin: PathBuf,
    dir: tempfile::TempDir,
    clients: Vec<u16>,
    peers: Vec<u16>,
    members: Vec<Option<Reaped>>,
}

impl Etcd {
    fn start() -> Option<Etcd> {
        let bin = peer("etcd", "etcd-server")?;
        let dir = tempfile::tempdir().expect("tempdir");
        let clients: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let peers: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut etcd = Etcd {
            bin,
            dir,
            clients,
            peers,
            members: vec![None, None, None],
        };
        for i in 0..3 {
            etcd.run(i);
        }
        assert!(
            eventually(Duration::from_secs(30), || etcd.healthy(3)),
            "etcd did not become healthy"
        );
        Some(etcd)
    }

    /// Starts member `i` (again, on its data).
    fn run(&mut self, i: usize) {
        let cluster: Vec<String> = (0..3)
            .map(|j| format!("m{j}=http://127.0.0.1:{}", self.peers[j]))
            .collect();
        let client = format!("http://127.0.0.1:{}", self.clients[i]);
        let peer = format!("http://127.0.0.1:{}", self.peers[i]);
        let log = std::fs::File::create(self.dir.path().join(format!("m{i}.log"))).expect("log");
        let child = Command::new(&self.bin)
            .args(["--name", &format!("m{i}")])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("m{i}")))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args([
                "--initial-cluster",
                &cluster.join(","),
                "--initial-cluster-state",
                "new",
            ])
            .args(["--initial-cluster-token", "stackdns-test"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.members[i] = Some(Reaped(child));
    }

    /// kill -9 of member `i`.
    fn kill(&mut self, i: usize) {
        self.members[i] = None;
    }

    /// Whether at least `n` members answer healthy.
    fn healthy(&self, n: usize) -> bool {
        let ok = (0..3)
            .filter(|&i| {
                Command::new("etcdctl")
                    .env("ETCDCTL_API", "3")
                    .args(["--endpoints", &format!("127.0.0.1:{}", self.clients[i])])
                    .args(["--command-timeout", "1s", "endpoint", "health"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .count();
        ok >= n
    }

    fn url(&self) -> String {
        let members: Vec<String> = self.clients.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("etcd://{}", members.join(","))
    }
}

/// An instance on `etcd`; the leader's lease 5 s unless `extra` says otherwise.
fn instance(etcd: &Etcd, extra: &[&str]) -> Server {
    let url = etcd.url();
    let mut args = vec!["--store", url.as_str(), "--etcd-prefix", "/test/"];
    if !extra.contains(&"--etcd-lease-ttl") {
        args.extend(["--etcd-lease-ttl", "5"]);
    }
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Sends a request again while it is answered 503 (a leader being elected, etcd electing its
/// own), for up to 20 s, as agents and the CLI do; answers the first other status.
async fn retry_503<F, Fut>(mut send: F) -> (u16, serde_json::Value)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (u16, serde_json::Value)>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = send().await;
        if status != 503 || Instant::now() > deadline {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Retries `PUT /v1/nodes/{name}` until an instance accepts it (while a leader is elected).
async fn add_node_eventually(server: &Server, name: &str, address: &str) -> (String, u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = server
            .call(
                "PUT",
                &format!("/v1/nodes/{name}"),
                Some(ADMIN),
                Some(json!({"address": address})),
            )
            .await;
        if status == 201 {
            let serial = body["serial"].as_u64().expect("serial") as u32;
            return (body["token"].as_str().expect("token").to_owned(), serial);
        }
        if status == 200 {
            // A retry of a registration that was applied after all: a fresh token for it.
            let (status, body) = server
                .call("POST", &format!("/v1/nodes/{name}/token"), Some(ADMIN), None)
                .await;
            assert!(status < 300, "{status} {body}");
            let serial = body["serial"].as_u64().expect("serial") as u32;
            return (body["token"].as_str().expect("token").to_owned(), serial);
        }
        assert!(status == 503 && Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn cont(name: &str) -> String {
    format!("{name}.quickstart-ruby.honeniq.cont.cluster.test.")
}

#[tokio::test]
async fn instances_share_one_state_and_survive_a_killed_leader() {
    let Some(etcd) = Etcd::start() else { return };
    let a = instance(&etcd, &[]);
    let (token, serial) = add_node_eventually(&a, "node-1", "127.0.0.2").await;
    let b = instance(&etcd, &[]);

    // A write through A is answered by B's DNS, at the same serial.
    let (status, body) = retry_503(|| a.report("node-1", &token, "web-1", web(1))).await;
    assert!(status == 200 || status == 201, "{status} {body}");
    let written = body["serial"].as_u64().expect("serial") as u32;
    assert!(written > serial);
    assert!(
        eventually(Duration::from_secs(5), || b.dns().a(&cont("web-1"))
            == ["127.0.0.2"]),
        "B does not answer A's write:\n{}",
        b.log()
    );
    assert_eq!(a.dns().serial(), b.dns().serial());

    // A write through B (not the leader) goes to A, and B's answer comes once B serves it.
    let (status, body) = retry_503(|| b.report("node-1", &token, "web-2", web(1))).await;
    assert!(status == 200 || status == 201, "{status} {body}");
    assert_eq!(b.dns().a(&cont("web-2")), ["127.0.0.2"]);
    let at = body["serial"].as_u64().expect("serial") as u32;
    assert!(eventually(Duration::from_secs(5), || a.dns().serial() == at));
    assert_eq!(b.dns().serial(), at);

    // A burst through A, killed part-way: every write A acknowledged is on B.
    let burst = {
        let (api, token) = (a.api.clone(), token.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut acknowledged = Vec::new();
            for i in 3..400 {
                let url = format!("{api}/v1/nodes/node-1/containers/honeniq/quickstart-ruby/web-{i}");
                let sent = http.put(url).bearer_auth(&token).json(&web(1)).send().await;
                match sent {
                    Ok(r) if r.status().is_success() => acknowledged.push(i),
                    _ => break,
                }
            }
            acknowledged
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = a.pid();
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    let acknowledged = burst.await.expect("burst");
    assert!(
        !acknowledged.is_empty(),
        "nothing was acknowledged before the kill"
    );

    // B takes over within the lease (2 s) and accepts writes.
    let (_, after) = add_node_eventually(&b, "node-2", "127.0.0.3").await;
    assert!(after > at);
    for i in &acknowledged {
        let name = cont(&format!("web-{i}"));
        assert_eq!(
            b.dns().a(&name),
            ["127.0.0.2"],
            "acknowledged web-{i} is missing on B"
        );
    }
    // And the node's heartbeats, now reaching only B, keep it live.
    let (status, _) = b
        .call("POST", "/v1/nodes/node-1/heartbeat", Some(&token), None)
        .await;
    assert!(status == 200 || status == 204, "{status}");
    assert_eq!(b.dns().a(&cont("web-1")), ["127.0.0.2"]);
    drop(a);
}

#[tokio::test]
async fn writes_go_on_without_one_member_and_stop_cleanly_without_quorum() {
    let Some(mut etcd) = Etcd::start() else { return };
    let a = instance(&etcd, &["--etcd-timeout-ms", "1500", "--node-ttl", "600"]);
    let (token, _) = add_node_eventually(&a, "node-1", "127.0.0.2").await;
    let (status, body) = retry_503(|| a.report("node-1", &token, "web-1", web(1))).await;
    assert!(status == 200 || status == 201, "{status} {body}");

    // One member down: writes are still acknowledged (a client retries a 503 while etcd
    // elects a new leader of its own, if the member was it).
    etcd.kill(2);
    let started = Instant::now();
    loop {
        let (status, body) = retry_503(|| a.report("node-1", &token, "web-2", web(1))).await;
        if status == 200 || status == 201 {
            break;
        }
        assert!(
            status == 503 && started.elapsed() < Duration::from_secs(5),
            "{status} {body}\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert_eq!(
        a.dns().a(&cont("web-2")),
        ["127.0.0.2"],
        "acknowledged, so visible:\n{}",
        a.log()
    );
    // Two down: no quorum. Writes get a clear 503, DNS keeps answering the last state.
    etcd.kill(1);
    let serial = a.dns().serial();
    let (status, body) = a.report("node-1", &token, "web-3", web(1)).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        ["store_unavailable", "no_leader", "not_leader"]
            .contains(&body["error"]["code"].as_str().unwrap_or("")),
        "{body}"
    );
    assert_eq!(a.dns().a(&cont("web-2")), ["127.0.0.2"], "{}", a.log());
    assert_eq!(a.dns().serial(), serial);

    // Quorum back: writes are acknowledged again, nothing acknowledged was lost.
    etcd.run(1);
    etcd.run(2);
    assert!(eventually(Duration::from_secs(30), || etcd.healthy(3)));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = retry_503(|| a.report("node-1", &token, "web-3", web(1))).await;
        if status == 200 || status == 201 {
            break;
        }
        assert!(
            status == 503 && Instant::now() < deadline,
            "{status} {body}\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for name in ["web-1", "web-2", "web-3"] {
        assert_eq!(a.dns().a(&cont(name)), ["127.0.0.2"], "{name}\n{}", a.log());
    }
    // A second instance started now reads the same.
    let b = instance(&etcd, &[]);
    assert!(eventually(Duration::from_secs(5), || b.dns().serial() == a.dns().serial()));
    assert_eq!(b.dns().a(&cont("web-3")), ["127.0.0.2"]);
    // Three containers behind the service: three SRV targets.
    let reply = b.dns().query(
        "_80._tcp.web.quickstart-ruby.honeniq.svc.cluster.test.",
        RecordType::SRV,
    );
    assert_eq!(reply.answers.len(), 3, "{reply:?}");
}

#[tokio::test]
async fn store_copy_moves_the_state_to_etcd_and_back() {
    let Some(etcd) = Etcd::start() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let serial = {
        let server = Server::start_in(&data, &[], true);
        let token = server.add_node("node-1", "127.0.0.2").await;
        let (status, body) = retry_503(|| server.report("node-1", &token, "web-1", web(1))).await;
        assert!(status == 200 || status == 201, "{status} {body}");
        let serial = server.dns().serial();
        assert!(server.terminate().success());
        serial
    };
    let copy = |from: &str, to: &str| {
        Command::new(env!("CARGO_BIN_EXE_stackdns"))
            .args([
                "store",
                "copy",
                "--from",
                from,
                "--to",
                to,
                "--etcd-prefix",
                "/copied/",
            ])
            .output()
            .expect("store copy")
    };
    let out = copy(data.to_str().expect("path"), &etcd.url());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("serial {serial}")));
    // Into a store that is not empty: refused, named.
    let again = copy(data.to_str().expect("path"), &etcd.url());
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds state"));

    let url = etcd.url();
    let on_etcd = Server::start(&[
        "--store",
        &url,
        "--etcd-prefix",
        "/copied/",
        "--etcd-lease-ttl",
        "2",
    ]);
    assert!(
        eventually(Duration::from_secs(10), || on_etcd.dns().serial() > serial),
        "the serial did not continue:\n{}",
        on_etcd.log()
    );
    assert_eq!(on_etcd.dns().a(&cont("web-1")), ["127.0.0.2"]);
    drop(on_etcd);

    let back = dir.path().join("back");
    let out = copy(&url, back.to_str().expect("path"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let server = Server::start_in(&back, &[], true);
    assert!(server.dns().serial() > serial);
    assert_eq!(server.dns().a(&cont("web-1")), ["127.0.0.2"]);
}

/// Knot as a secondary of both instances (its remote lists A, then B): the zone by AXFR from
/// A, then changes by IXFR from A, and once A is killed, from B, with no second AXFR: B's
/// journal holds the same serials and differences as A's.
#[tokio::test]
async fn knot_follows_by_ixfr_from_either_instance() {
    let Some(knot_bin) = peer("knotd", "knot") else {
        return;
    };
    let Some(etcd) = Etcd::start() else { return };
    let knot_port = free_port();
    let notify = format!("127.0.0.1:{knot_port}");
    let flags = ["--allow-transfer", "127.0.0.1/32", "--notify", notify.as_str()];
    let a = instance(&etcd, &flags);
    let (token, _) = add_node_eventually(&a, "node-1", "127.0.0.2").await;
    let b = instance(&etcd, &flags);

    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    let conf = format!(
        "server:\n  listen: 127.0.0.1@{knot_port}\n  rundir: {d}\n\
         control:\n  listen: {d}/knot.sock\n\
         log:\n  - target: {d}/knot.log\n    any: info\n\
         database:\n  storage: {d}/db\n\
         remote:\n  - id: primaries\n    address: [127.0.0.1@{}, 127.0.0.1@{}]\n\
         acl:\n  - id: notify\n    address: 127.0.0.1\n    action: notify\n\
         template:\n  - id: default\n    storage: {d}/zones\n\
         zone:\n  - domain: cluster.test\n    master: primaries\n    acl: notify\n",
        a.dns.port(),
        b.dns.port()
    );
    std::fs::create_dir_all(dir.path().join("db")).expect("db dir");
    std::fs::create_dir_all(dir.path().join("zones")).expect("zones dir");
    std::fs::write(dir.path().join("knot.conf"), conf).expect("knot.conf");
    let _knot = Reaped(
        Command::new(knot_bin)
            .arg("-c")
            .arg(dir.path().join("knot.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start knotd"),
    );
    let knot = crate::support::Dns {
        addr: ([127, 0, 0, 1], knot_port).into(),
    };
    let knot_serial = || {
        knot.try_ask(crate::support::ZONE, RecordType::SOA, Default::default())
            .and_then(|r| match r.answers.first().map(|r| r.data.clone()) {
                Some(hickory_proto::rr::RData::SOA(soa)) => Some(soa.serial),
                _ => None,
            })
    };
    let log = || std::fs::read_to_string(dir.path().join("knot.log")).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(20), || knot_serial()
            == Some(a.dns().serial())),
        "knot did not take the zone:\n{}",
        log()
    );

    let (status, body) = retry_503(|| a.report("node-1", &token, "web-1", web(1))).await;
    assert!(status == 200 || status == 201, "{status} {body}");
    let from_a = body["serial"].as_u64().expect("serial") as u32;
    assert!(
        eventually(Duration::from_secs(20), || knot_serial() == Some(from_a)),
        "{}",
        log()
    );

    let _ = Command::new("kill").args(["-9", &a.pid().to_string()]).status();
    let (token_2, from_b) = add_node_eventually(&b, "node-2", "127.0.0.3").await;
    let (status, body) = retry_503(|| b.report("node-2", &token_2, "web-2", web(1))).await;
    assert!(status == 200 || status == 201, "{status} {body}");
    let last = body["serial"].as_u64().expect("serial") as u32;
    assert!(last > from_b);
    assert!(
        eventually(Duration::from_secs(30), || knot_serial() == Some(last)),
        "knot did not follow B to {last}:\n{}",
        log()
    );
    assert_eq!(knot.a(&cont("web-2")), ["127.0.0.3"], "knot serves B's change");
    let log = log();
    let axfrs = log
        .lines()
        .filter(|l| l.contains("AXFR, incoming") && l.contains("started"));
    assert_eq!(axfrs.count(), 1, "one AXFR only:\n{log}");
    let from_b_port = format!("127.0.0.1@{}", b.dns.port());
    assert!(
        log.lines()
            .any(|l| l.contains("IXFR, incoming") && l.contains(&from_b_port)),
        "an IXFR from B:\n{log}"
    );
    drop(a);
}

/// The keys under `prefix` in etcd, as `etcdctl` lists them.
fn etcd_keys(etcd: &Etcd, prefix: &str) -> Vec<String> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &format!("127.0.0.1:{}", etcd.clients[0])])
        .args(["get", "--prefix", "--keys-only", prefix])
        .output()
        .expect("etcdctl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// How many assignments `node` has, as `server` answers (from its own copy of the state).
async fn assigned(server: &Server, node: &str) -> usize {
    let (status, body) = server
        .call("GET", &format!("/v1/nodes/{node}/assignments"), Some(ADMIN), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["assignments"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_lost_everywhere_is_lost_once_and_its_containers_move_once() {
    let Some(etcd) = Etcd::start() else { return };
    let flags = ["--node-ttl", "3", "--lease-check-ms", "200"];
    let a = instance(&etcd, &flags);
    let (token_1, _) = add_node_eventually(&a, "node-1", "127.0.0.2").await;
    // node-1's agent heartbeats (to A) until the stack is placed on both nodes, then stops.
    let node_1_beats = heartbeat(a.api.clone(), "node-1", token_1);
    let b = instance(&etcd, &flags);
    let (token_2, _) = add_node_eventually(&b, "node-2", "127.0.0.3").await;
    let yaml =
        "web:\n  image: busybox\n  target_num_containers: 2\n  deployment_strategy: high_availability\n";
    let (status, body) = retry_503(|| {
        b.call_raw(
            "PUT",
            "/v1/stacks/honeniq/demo",
            Some(ADMIN),
            yaml.as_bytes().to_vec(),
        )
    })
    .await;
    assert!(status == 200 || status == 201, "{status} {body}");
    let placed = eventually(Duration::from_secs(10), || {
        futures_block(async { (assigned(&b, "node-1").await, assigned(&b, "node-2").await) }) == (1, 1)
    });
    assert!(placed, "not one container on each node:\n{}", b.log());
    // A blocking assignment query on the follower, for node-2: answered once the leader's
    // move of node-1's container reaches B.
    let (status, body) = b
        .call("GET", "/v1/nodes/node-2/assignments", Some(ADMIN), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let index = body["index"].as_u64().expect("index");
    let blocking = {
        let (api, token) = (b.api.clone(), token_2.clone());
        tokio::spawn(async move {
            let url = format!("{api}/v1/nodes/node-2/assignments?index={index}&wait=30s");
            let started = Instant::now();
            let body: serde_json::Value = reqwest::Client::new()
                .get(url)
                .bearer_auth(&token)
                .send()
                .await
                .expect("blocking query")
                .json()
                .await
                .expect("json");
            (started.elapsed(), body)
        })
    };
    // node-2's agent talks only to B; node-1's stops now.
    let heartbeats = heartbeat(b.api.clone(), "node-2", token_2.clone());
    node_1_beats.abort();
    let lost = |s: &Server| {
        (s.log().lines())
            .filter(|l| l.contains("node lease lapsed") && l.contains("node=node-1"))
            .count()
    };
    assert!(
        eventually(Duration::from_secs(10), || lost(&a) + lost(&b) >= 1),
        "node-1 was never lost:\n{}\n{}",
        a.log(),
        b.log()
    );
    // Both containers on node-2 now, seen the same from either instance; the moved one moved
    // once (generation 2), and node-2, heartbeating through B only, stayed live.
    let moved = eventually(Duration::from_secs(5), || {
        let (a_count, b_count) =
            futures_block(async { (assigned(&a, "node-2").await, assigned(&b, "node-2").await) });
        a_count == 2 && b_count == 2
    });
    assert!(moved, "the lost node's container did not move to node-2");
    let (waited, body) = tokio::time::timeout(Duration::from_secs(10), blocking)
        .await
        .expect("the blocking query on the follower did not wake")
        .expect("blocking task");
    assert!(waited < Duration::from_secs(20), "{waited:?}");
    assert!(body["index"].as_u64().expect("index") > index, "{body}");
    assert_eq!(body["assignments"].as_array().map(Vec::len), Some(2), "{body}");
    let (status, body) = a.call("GET", "/v1/stacks/honeniq/demo", Some(ADMIN), None).await;
    assert_eq!(status, 200, "{body}");
    let mut generations: Vec<u64> = body["stack"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .map(|c| c["generation"].as_u64().unwrap_or(0))
        .collect();
    generations.sort_unstable();
    assert_eq!(generations, [1, 2], "{body}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        lost(&a) + lost(&b),
        1,
        "decided more than once:\n{}\n{}",
        a.log(),
        b.log()
    );
    let (status, body) = b.call("GET", "/v1/nodes/node-2", Some(ADMIN), None).await;
    assert_eq!(
        (status, body["node"]["state"].as_str()),
        (200, Some("live")),
        "{body}"
    );
    heartbeats.abort();

    // The CLI moves on to the next --api when the first does not answer.
    let out = Command::new(env!("CARGO_BIN_EXE_stackdns"))
        .args(["node", "ls", "--json", "--token", ADMIN])
        .args(["--api", &format!("http://127.0.0.1:{},{}", free_port(), b.api)])
        .output()
        .expect("stackdns node ls");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("node-2"));
}

/// An agent's heartbeats for `node`, every 300 ms, to `api`, until aborted.
fn heartbeat(api: String, node: &'static str, token: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        loop {
            let url = format!("{api}/v1/nodes/{node}/heartbeat");
            let _ = http.post(url).bearer_auth(&token).send().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

/// Runs `f` to completion from a synchronous closure inside the test's runtime.
fn futures_block<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_an_etcd_request_and_a_compacted_log_load_back() {
    let Some(etcd) = Etcd::start() else { return };
    let plain = [
        "--default-max-containers",
        "20000",
        "--node-ttl",
        "600",
        "--etcd-timeout-ms",
        "10000",
    ];
    let first = instance(&etcd, &plain);
    add_node_eventually(&first, "node-1", "127.0.0.2").await;
    add_node_eventually(&first, "node-2", "127.0.0.3").await;
    // 6,000 assignments in one batch: about 2 MiB, over etcd's 1.5 MiB request limit.
    let yaml = "web:\n  image: busybox\n  target_num_containers: 6000\n";
    let (status, _) = retry_503(|| {
        first.call_raw(
            "PUT",
            "/v1/stacks/honeniq/big",
            Some(ADMIN),
            yaml.as_bytes().to_vec(),
        )
    })
    .await;
    assert!(status == 200 || status == 201, "{status}");
    assert!(
        etcd_keys(&etcd, "/test/chunk/").len() >= 2,
        "the batch was not split: {:?}",
        etcd_keys(&etcd, "/test/")
    );
    assert!(first.terminate().success());
    // The next leader compacts at once: the log it loaded is over the threshold.
    let flags = [&plain[..], &["--etcd-compact-bytes", "65536"]].concat();
    let a = instance(&etcd, &flags);
    add_node_eventually(&a, "node-3", "127.0.0.4").await;
    // The log outgrew the compaction threshold: an image replaces it.
    assert!(
        eventually(Duration::from_secs(20), || {
            etcd_keys(&etcd, "/test/image").iter().any(|k| k == "/test/image")
        }),
        "no image was written:\n{}",
        a.log()
    );
    assert!(
        eventually(Duration::from_secs(10), || etcd_keys(&etcd, "/test/log/").len()
            <= 1),
        "the compacted batches are still there: {:?}",
        etcd_keys(&etcd, "/test/log/")
    );
    let (status, body) = retry_503(|| a.call("POST", "/v1/users/honeniq/tokens", Some(ADMIN), None)).await;
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().expect("token").to_owned();
    // A new instance loads the image and the batches after it.
    let b = instance(&etcd, &flags);
    assert!(eventually(Duration::from_secs(10), || b.dns().serial() == a.dns().serial()));
    assert_eq!(assigned(&b, "node-1").await + assigned(&b, "node-2").await, 6000);
    assert_eq!(
        assigned(&b, "node-1").await,
        assigned(&a, "node-1").await,
        "both instances place the same"
    );
    let (status, body) = b.call("GET", "/v1/info", Some(&token), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["store"].as_str(), body["leads"].as_bool()),
        (Some("etcd"), Some(false)),
        "{body}"
    );
    assert_eq!(body["leader"].as_str(), Some(a.api.as_str()), "{body}");
}

/// The whole zone as `dns` transfers it, one sorted line per record.
fn axfr(dns: &crate::support::Dns) -> Vec<String> {
    let mut q = hickory_proto::op::Message::query();
    q.add_query(hickory_proto::op::Query::query(
        crate::support::fqdn(crate::support::ZONE),
        RecordType::AXFR,
    ));
    let mut lines: Vec<String> = crate::durability::transfer(dns, &q)
        .iter()
        .map(|r| format!("{} {} {} {}", r.name, r.ttl, r.record_type(), r.data))
        .collect();
    lines.sort();
    lines.dedup();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_builds_exactly_the_leaders_zone() {
    let Some(etcd) = Etcd::start() else { return };
    let flags = ["--allow-transfer", "127.0.0.1/32", "--node-ttl", "600"];
    let a = instance(&etcd, &flags);
    let (token, _) = add_node_eventually(&a, "node-1", "127.0.0.2").await;
    let b = instance(&etcd, &flags);
    let same = |step: &str| {
        assert!(
            eventually(Duration::from_secs(5), || a.dns().serial() == b.dns().serial()),
            "{step}: serials differ"
        );
        // Compared until equal (a commit may land between two transfers), then once more.
        eventually(Duration::from_secs(5), || axfr(&a.dns()) == axfr(&b.dns()));
        assert_eq!(axfr(&a.dns()), axfr(&b.dns()), "{step}: the zones differ");
        assert!(
            !b.log().contains("zone difference than the leader"),
            "{step}:\n{}",
            b.log()
        );
    };
    add_node_eventually(&b, "node-2", "127.0.0.3").await;
    same("nodes");
    // Containers reported before their stack is declared (discovery)…
    for name in ["web-1", "web-2", "web-3"] {
        let (status, body) = retry_503(|| b.report("node-1", &token, name, web(1))).await;
        assert!(status == 200 || status == 201, "{status} {body}");
    }
    let (status, body) = b
        .call(
            "DELETE",
            "/v1/nodes/node-1/containers/honeniq/quickstart-ruby/web-3?generation=1",
            Some(&token),
            None,
        )
        .await;
    assert!(status < 300, "{status} {body}");
    same("discovery containers");
    // …then the stack declared over them (its containers answer only where placed), scaled,
    // and removed.
    let yaml = "web:\n  image: busybox\n  target_num_containers: 1\n  ports:\n    - \"80:80\"\n";
    let (status, body) = retry_503(|| {
        b.call_raw(
            "PUT",
            "/v1/stacks/honeniq/quickstart-ruby",
            Some(ADMIN),
            yaml.as_bytes().to_vec(),
        )
    })
    .await;
    assert!(status == 200 || status == 201, "{status} {body}");
    same("stack declared");
    let (status, body) =
        retry_503(|| a.call("DELETE", "/v1/stacks/honeniq/quickstart-ruby", Some(ADMIN), None)).await;
    assert!(status < 300, "{status} {body}");
    same("stack removed");
    let (status, body) = retry_503(|| b.call("DELETE", "/v1/nodes/node-2", Some(ADMIN), None)).await;
    assert!(status < 300, "{status} {body}");
    same("node removed");
}

#[tokio::test]
async fn a_stopping_leader_hands_over_at_once() {
    let Some(etcd) = Etcd::start() else { return };
    // A lease of 30 s: without a hand-over, B could not lead for 30 s after A stops.
    let url = etcd.url();
    let flags = [
        "--store",
        url.as_str(),
        "--etcd-prefix",
        "/handover/",
        "--etcd-lease-ttl",
        "30",
    ];
    let a = Server::start(&flags);
    add_node_eventually(&a, "node-1", "127.0.0.2").await;
    let b = Server::start(&flags);
    let (status, body) = b.call("GET", "/v1/info", Some(ADMIN), None).await;
    assert_eq!((status, body["leads"].as_bool()), (200, Some(false)), "{body}");
    let stopped = Instant::now();
    assert!(a.terminate().success());
    let (_, serial) = add_node_eventually(&b, "node-2", "127.0.0.3").await;
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "B took {:?} to lead",
        stopped.elapsed()
    );
    assert_eq!(b.dns().serial(), serial);
    let (_, body) = b.call("GET", "/v1/info", Some(ADMIN), None).await;
    assert_eq!(body["leads"].as_bool(), Some(true), "{body}");
}

#[tokio::test]
async fn etcd_over_tls_with_a_client_certificate_and_a_password() {
    let Some(bin) = peer("etcd", "etcd-server") else {
        return;
    };
    let mut pki = crate::tls_peers::Pki::new();
    let dir = pki.dir.path().to_owned();
    let (server_cert, server_key) = (dir.join("etcd.pem"), dir.join("etcd.key"));
    std::fs::copy(&pki.cert, &server_cert).expect("copy");
    std::fs::copy(&pki.key, &server_key).expect("copy");
    pki.issue(&["stackdns-client"], -1, 30);
    let (port, peer_port) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{port}");
    let _etcd = Reaped(
        Command::new(bin)
            .args([
                "--name",
                "tls",
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer_port}")])
            .arg("--data-dir")
            .arg(dir.join("etcd-data"))
            .arg("--cert-file")
            .arg(&server_cert)
            .arg("--key-file")
            .arg(&server_key)
            .arg("--trusted-ca-file")
            .arg(&pki.ca)
            .arg("--client-cert-auth")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd"),
    );
    let etcdctl = |args: &[&str]| {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &url])
            .arg("--cacert")
            .arg(&pki.ca)
            .arg("--cert")
            .arg(&pki.cert)
            .arg("--key")
            .arg(&pki.key)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    assert!(eventually(Duration::from_secs(20), || etcdctl(&[
        "endpoint", "health"
    ])));
    // A user that may use /tls/ only, and etcd's authentication on.
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "add", "stackdns:s3cret"],
        &["role", "add", "sd"],
        &[
            "role",
            "grant-permission",
            "sd",
            "--prefix=true",
            "readwrite",
            "/tls/",
        ],
        &["user", "grant-role", "stackdns", "sd"],
    ] {
        assert!(etcdctl(args), "etcdctl {args:?}");
    }
    etcdctl(&["auth", "enable"]);

    let store = format!("etcd://{url}");
    let (ca, cert, key) = (
        pki.ca.display().to_string(),
        pki.cert.display().to_string(),
        pki.key.display().to_string(),
    );
    let tls = [
        "--store",
        store.as_str(),
        "--etcd-prefix",
        "/tls/",
        "--etcd-ca-file",
        ca.as_str(),
        "--etcd-cert-file",
        cert.as_str(),
        "--etcd-key-file",
        key.as_str(),
        "--etcd-user",
        "stackdns",
    ];
    let server = Server::start_with_env(&dir.join("data"), &tls, &[("STACKDNS_ETCD_PASSWORD", "s3cret")]);
    let (_token, serial) = add_node_eventually(&server, "node-1", "127.0.0.2").await;
    assert_eq!(server.dns().serial(), serial);
    assert_eq!(server.dns().a("node-1.node.cluster.test."), ["127.0.0.2"]);
    drop(server);

    // A wrong password, or a prefix the user may not use: the start fails, saying why.
    let wrong = [&tls[..], &["--etcd-password", "wrong"]].concat();
    let (_, stderr) = crate::support::start_fails(&dir.join("data-2"), &wrong);
    assert!(stderr.contains("authentication failed"), "{stderr}");
    let mut elsewhere = tls.to_vec();
    elsewhere[3] = "/other/";
    let elsewhere = [&elsewhere[..], &["--etcd-password", "s3cret"]].concat();
    let (_, stderr) = crate::support::start_fails(&dir.join("data-3"), &elsewhere);
    assert!(stderr.contains("permission denied"), "{stderr}");
}
