//! Real secondaries: Knot DNS and NSD take the zone by transfer after NOTIFY and answer the
//! same; NSD also over TLS (XoT, RFC 9103).
//!
//! Needs `knotd` (Debian package `knot`). Where it is not installed the test says so and
//! passes, unless STACKDNS_REQUIRE_PEERS=1 (set by `.ci/run`, which installs it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hickory_proto::rr::RecordType;
use serde_json::json;

use crate::support::*;

/// A secondary server process (knotd or nsd), killed when dropped.
struct Secondary {
    _child: Reaped,
    dns: Dns,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn knotd() -> Option<PathBuf> {
    peer("knotd", "knot")
}

/// knotd on `port` as a secondary of `primary`, notified by it; with `tsig`
/// (name, base64 secret) its transfers are signed.
fn start_knot(bin: &Path, primary: std::net::SocketAddr, port: u16, tsig: Option<(&str, &str)>) -> Secondary {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    let (keys, use_key) = match tsig {
        Some((name, secret)) => (
            format!("key:\n  - id: {name}\n    algorithm: hmac-sha256\n    secret: {secret}\n"),
            format!("    key: {name}\n"),
        ),
        None => (String::new(), String::new()),
    };
    let conf = format!(
        "server:\n  listen: 127.0.0.1@{port}\n  rundir: {d}\n\
         control:\n  listen: {d}/knot.sock\n\
         log:\n  - target: {d}/knot.log\n    any: info\n\
         database:\n  storage: {d}/db\n\
         {keys}\
         remote:\n  - id: primary\n    address: {}@{}\n{use_key}\
         acl:\n  - id: from_primary\n    address: 127.0.0.1\n    action: notify\n\
         template:\n  - id: default\n    storage: {d}/zones\n\
         zone:\n  - domain: cluster.test\n    master: primary\n    acl: from_primary\n",
        primary.ip(),
        primary.port()
    );
    // Knot does not create its database directory; without it, it cannot journal an IXFR.
    std::fs::create_dir_all(dir.path().join("db")).expect("db dir");
    std::fs::create_dir_all(dir.path().join("zones")).expect("zones dir");
    let path = dir.path().join("knot.conf");
    std::fs::write(&path, conf).expect("write knot.conf");
    let child = Command::new(bin)
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start knotd");
    Secondary {
        _child: Reaped(child),
        dns: Dns {
            addr: ([127, 0, 0, 1], port).into(),
        },
        log: dir.path().join("knot.log"),
        _dir: dir,
    }
}

/// Every record of `name` and type as text, sorted: comparable across servers.
fn rrset(dns: &Dns, name: &str, rtype: RecordType) -> BTreeSet<String> {
    let how = Ask {
        edns: Some(1232),
        tcp: true,
    };
    dns.ask(name, rtype, how)
        .answers
        .iter()
        .map(|r| format!("{} {}", r.ttl, r.data))
        .collect()
}

/// The zone's serial as `dns` answers it; `None` while it has no zone (or does not answer).
fn serial_of(dns: &Dns) -> Option<u32> {
    let reply = dns.try_ask(ZONE, RecordType::SOA, Ask::default())?;
    match reply.answers.first().map(|r| &r.data) {
        Some(hickory_proto::rr::RData::SOA(soa)) => Some(soa.serial),
        _ => None,
    }
}

const NAMES: [(&str, RecordType); 6] = [
    ("web.quickstart-ruby.honeniq.svc.cluster.test.", RecordType::A),
    ("web-1.quickstart-ruby.honeniq.cont.cluster.test.", RecordType::A),
    ("web-2.quickstart-ruby.honeniq.cont.cluster.test.", RecordType::A),
    (
        "_80._tcp.web.quickstart-ruby.honeniq.svc.cluster.test.",
        RecordType::SRV,
    ),
    ("node-do.node.cluster.test.", RecordType::A),
    ("node-ec2.node.cluster.test.", RecordType::A),
];

fn converged(primary: &Dns, knot: &Dns) -> bool {
    serial_of(knot) == serial_of(primary)
        && NAMES
            .iter()
            .all(|(name, t)| rrset(primary, name, *t) == rrset(knot, name, *t))
}

#[tokio::test(flavor = "multi_thread")]
async fn knot_follows_by_notify_and_transfer() {
    let Some(bin) = knotd() else { return };
    let knot_port = free_port();
    let notify = format!("127.0.0.1:{knot_port}");
    let s = Server::start(&[
        "--allow-transfer",
        "127.0.0.1/32",
        "--notify",
        &notify,
        "--node-ttl",
        "2",
        "--lease-check-ms",
        "100",
    ]);
    let t_do = s.add_node("node-do", "95.85.30.162").await;
    let t_ec2 = s.add_node("node-ec2", "52.193.37.165").await;
    s.report("node-do", &t_do, "web-1", web(1)).await;
    s.report("node-ec2", &t_ec2, "web-2", web(1)).await;
    let body = json!({"service": "web", "address": "172.17.0.4", "generation": 1});
    s.report("node-ec2", &t_ec2, "web-4", body).await;

    let knot = start_knot(&bin, s.dns, knot_port, None);
    let primary = s.dns();
    let dump = |knot: &Secondary| std::fs::read_to_string(&knot.log).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(15), || converged(&primary, &knot.dns)),
        "initial transfer:\n{}",
        dump(&knot)
    );

    // Membership changes: a stop, a start, a lapsed lease. Each converges within 2 s of NOTIFY.
    let hb = |token: &str, node: &str| {
        let path = format!("/v1/nodes/{node}/heartbeat");
        let call = s.call("POST", &path, Some(token), None);
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(call)).0
    };
    let path = "/v1/nodes/node-ec2/containers/honeniq/quickstart-ruby/web-4?generation=1";
    assert_eq!(s.call("DELETE", path, Some(&t_ec2), None).await.0, 200);
    assert!(
        eventually(Duration::from_secs(2), || converged(&primary, &knot.dns)),
        "after a stop:\n{}",
        dump(&knot)
    );
    let body = json!({"service": "web", "address": "172.17.0.9", "ports": [{"container_port": 80, "host_port": 32768}], "generation": 1});
    assert_eq!(s.report("node-do", &t_do, "web-3", body).await.0, 201);
    assert!(
        eventually(Duration::from_secs(2), || converged(&primary, &knot.dns)),
        "after a start:\n{}",
        dump(&knot)
    );
    let knot_has = rrset(&knot.dns, NAMES[0].0, RecordType::A);
    assert!(knot_has.iter().any(|r| r.ends_with("172.17.0.9")), "{knot_has:?}");
    // node-ec2 goes silent; node-do keeps heartbeating.
    assert!(eventually(Duration::from_secs(6), || {
        assert_eq!(hb(&t_do, "node-do"), 200);
        // web-2 leaves with its node; web-1 and web-3 remain, both on node-do.
        primary.a(NAMES[2].0).is_empty()
    }));
    assert!(
        eventually(Duration::from_secs(2), || converged(&primary, &knot.dns)),
        "after a lease loss:\n{}",
        dump(&knot)
    );
    let log = dump(&knot);
    assert_eq!(primary.a(NAMES[0].0), vec!["172.17.0.9", "95.85.30.162"]);
    assert!(log.contains("notify, incoming"), "Knot was notified:\n{log}");
    assert!(
        log.contains("AXFR, incoming") && log.contains("finished"),
        "Knot transferred:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn knot_transfers_with_tsig_only() {
    let Some(bin) = knotd() else { return };
    const SECRET: &str = "c3RhY2tkbnMgdHNpZyB0ZXN0IHNlY3JldCAzMiBieXRlcyE=";
    let knot_port = free_port();
    let notify = format!("127.0.0.1:{knot_port}");
    let key = format!("xfr-key:hmac-sha256:{SECRET}");
    // No --allow-transfer: only signed transfers get the zone.
    let s = Server::start(&["--tsig-key", &key, "--notify", &notify]);
    let t = s.add_node("node-do", "95.85.30.162").await;
    s.report("node-do", &t, "web-1", web(1)).await;
    let unsigned = s.dns().ask(
        ZONE,
        RecordType::AXFR,
        Ask {
            edns: None,
            tcp: true,
        },
    );
    assert_eq!(
        unsigned.metadata.response_code,
        hickory_proto::op::ResponseCode::Refused
    );

    let knot = start_knot(&bin, s.dns, knot_port, Some(("xfr-key", SECRET)));
    let primary = s.dns();
    let dump = || std::fs::read_to_string(&knot.log).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(15), || converged(&primary, &knot.dns)),
        "signed transfer:\n{}",
        dump()
    );
    s.report("node-do", &t, "web-2", web(1)).await;
    assert!(
        eventually(Duration::from_secs(2), || converged(&primary, &knot.dns)),
        "after a start:\n{}",
        dump()
    );
    // Unsigned transfers are refused, so these were signed; the server's log says so too.
    let logged = eventually(Duration::from_secs(2), || s.log().contains("signed=true"));
    assert!(logged, "{}", s.log());
}

/// nsd on `port` as a secondary of `primary`, notified by it; with `tls` (a CA bundle and the
/// name the primary's certificate must have), it transfers over TLS (RFC 9103).
fn start_nsd(bin: &Path, primary: std::net::SocketAddr, port: u16, tls: Option<(&Path, &str)>) -> Secondary {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    let (bundle, auth, auth_name) = match tls {
        None => (String::new(), String::new(), ""),
        Some((ca, name)) => (
            format!("  tls-cert-bundle: \"{}\"\n", ca.display()),
            format!("tls-auth:\n  name: primary\n  auth-domain-name: \"{name}\"\n"),
            " primary",
        ),
    };
    let conf = format!(
        "server:\n  ip-address: 127.0.0.1@{port}\n  zonesdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n\
         \x20 database: \"\"\n  xfrdfile: \"{d}/xfrd.state\"\n  xfrdir: \"{d}\"\n\
         \x20 zonelistfile: \"{d}/zone.list\"\n  logfile: \"{d}/nsd.log\"\n  username: \"\"\n\
         \x20 chroot: \"\"\n  verbosity: 2\n  server-count: 1\n{bundle}\
         remote-control:\n  control-enable: no\n{auth}\
         zone:\n  name: cluster.test\n  zonefile: \"cluster.test.zone\"\n\
         \x20 request-xfr: {}@{} NOKEY{auth_name}\n  allow-notify: 127.0.0.1 NOKEY\n",
        primary.ip(),
        primary.port()
    );
    let path = dir.path().join("nsd.conf");
    std::fs::write(&path, conf).expect("write nsd.conf");
    let child = Command::new(bin)
        .arg("-d")
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nsd");
    Secondary {
        _child: Reaped(child),
        dns: Dns {
            addr: ([127, 0, 0, 1], port).into(),
        },
        log: dir.path().join("nsd.log"),
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nsd_follows_by_notify_and_transfer() {
    let Some(bin) = peer("nsd", "nsd") else { return };
    let nsd_port = free_port();
    let notify = format!("127.0.0.1:{nsd_port}");
    let s = Server::start(&["--allow-transfer", "127.0.0.1/32", "--notify", &notify]);
    let t_do = s.add_node("node-do", "95.85.30.162").await;
    let t_ec2 = s.add_node("node-ec2", "52.193.37.165").await;
    s.report("node-do", &t_do, "web-1", web(1)).await;
    s.report("node-ec2", &t_ec2, "web-2", web(1)).await;

    let nsd = start_nsd(&bin, s.dns, nsd_port, None);
    let primary = s.dns();
    let dump = || std::fs::read_to_string(&nsd.log).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(15), || converged(&primary, &nsd.dns)),
        "initial transfer:\n{}",
        dump()
    );
    let path = "/v1/nodes/node-ec2/containers/honeniq/quickstart-ruby/web-2?generation=1";
    assert_eq!(s.call("DELETE", path, Some(&t_ec2), None).await.0, 200);
    assert!(
        eventually(Duration::from_secs(2), || converged(&primary, &nsd.dns)),
        "after a stop:\n{}",
        dump()
    );
    let body = json!({"service": "web", "address": "172.17.0.9", "ports": [{"container_port": 80, "host_port": 32768}], "generation": 1});
    assert_eq!(s.report("node-do", &t_do, "web-3", body).await.0, 201);
    assert!(
        eventually(Duration::from_secs(2), || converged(&primary, &nsd.dns)),
        "after a start:\n{}",
        dump()
    );
    let logged = eventually(Duration::from_secs(2), || {
        s.log().matches("kind=\"IXFR\"").count() >= 2
    });
    assert!(
        logged,
        "NSD took the changes by incremental transfer:\n{}\n{}",
        s.log(),
        dump()
    );
}

/// Zone transfers over TLS (RFC 9103) to a real secondary: NSD, given only the DoT port and the
/// CA, takes the zone and then each change by IXFR over TLS 1.3.
#[tokio::test(flavor = "multi_thread")]
async fn nsd_follows_over_tls() {
    let Some(bin) = peer("nsd", "nsd") else { return };
    let pki = crate::tls_peers::Pki::new();
    let nsd_port = free_port();
    let notify = format!("127.0.0.1:{nsd_port}");
    let mut args = pki.flags();
    args.extend(
        [
            "--dot",
            "127.0.0.1:0",
            "--allow-transfer",
            "127.0.0.1/32",
            "--notify",
            &notify,
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let s = Server::start(&args);
    let dot = crate::tls_peers::listening(&s, "dot");
    let token = s.add_node("node-do", "95.85.30.162").await;
    s.report("node-do", &token, "web-1", web(1)).await;
    s.report("node-do", &token, "web-2", web(1)).await;

    let nsd = start_nsd(&bin, dot, nsd_port, Some((&pki.ca, crate::tls_peers::TLS_NAME)));
    let primary = s.dns();
    let dump = || std::fs::read_to_string(&nsd.log).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(15), || converged(&primary, &nsd.dns)),
        "initial transfer over TLS:\n{}\n{}",
        dump(),
        s.log()
    );
    let body = json!({"service": "web", "address": "172.17.0.9", "generation": 1});
    assert_eq!(s.report("node-do", &token, "web-3", body).await.0, 201);
    assert!(
        eventually(Duration::from_secs(3), || converged(&primary, &nsd.dns)),
        "after a start:\n{}",
        dump()
    );
    let logged = eventually(Duration::from_secs(2), || {
        s.log()
            .lines()
            .any(|l| l.contains("kind=\"IXFR\"") && l.contains("transport=\"tls\""))
    });
    assert!(
        logged,
        "the change went by IXFR over TLS:\n{}\n{}",
        s.log(),
        dump()
    );
}
