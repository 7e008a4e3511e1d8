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

/// An instance on `etcd`, the leader's lease 2 s.
fn instance(etcd: &Etcd, extra: &[&str]) -> Server {
    let url = etcd.url();
    let mut args = vec![
        "--store",
        url.as_str(),
        "--etcd-prefix",
        "/test/",
        "--etcd-lease-ttl",
        "2",
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
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
    let (status, body) = a.report("node-1", &token, "web-1", web(1)).await;
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
    let (status, body) = b.report("node-1", &token, "web-2", web(1)).await;
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
    let a = instance(&etcd, &["--etcd-timeout-ms", "1500"]);
    let (token, _) = add_node_eventually(&a, "node-1", "127.0.0.2").await;
    let (status, body) = a.report("node-1", &token, "web-1", web(1)).await;
    assert!(status == 200 || status == 201, "{status} {body}");

    // One member down: writes are still acknowledged (a client retries a 503 while etcd
    // elects a new leader of its own, if the member was it).
    etcd.kill(2);
    let started = Instant::now();
    loop {
        let (status, body) = a.report("node-1", &token, "web-2", web(1)).await;
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
    assert_eq!(a.dns().a(&cont("web-2")), ["127.0.0.2"]);
    assert_eq!(a.dns().serial(), serial);

    // Quorum back: writes are acknowledged again, nothing acknowledged was lost.
    etcd.run(1);
    etcd.run(2);
    assert!(eventually(Duration::from_secs(30), || etcd.healthy(3)));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = a.report("node-1", &token, "web-3", web(1)).await;
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
        assert_eq!(a.dns().a(&cont(name)), ["127.0.0.2"], "{name}");
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
        let (status, body) = server.report("node-1", &token, "web-1", web(1)).await;
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

    let (status, body) = a.report("node-1", &token, "web-1", web(1)).await;
    assert!(status == 200 || status == 201, "{status} {body}");
    let from_a = body["serial"].as_u64().expect("serial") as u32;
    assert!(
        eventually(Duration::from_secs(20), || knot_serial() == Some(from_a)),
        "{}",
        log()
    );

    let _ = Command::new("kill").args(["-9", &a.pid().to_string()]).status();
    let (token_2, from_b) = add_node_eventually(&b, "node-2", "127.0.0.3").await;
    let (status, body) = b.report("node-2", &token_2, "web-2", web(1)).await;
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
