//! Clients behind their resolver: a real Unbound with a stub zone for cluster.test, asked
//! nothing but through Unbound, as docs/delegation.md §5 sets it up. Service names answer with
//! the running containers; Unbound rotates them; negative answers (NXDOMAIN, NODATA) leave its
//! cache within the SOA minimum, and a stopped container within the record TTL (`--ttl 2`).
//!
//! Needs `unbound` (Debian package `unbound`). Where it is not installed the test says so and
//! passes, unless STACKDNS_REQUIRE_PEERS=1.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use serde_json::json;

use crate::support::*;

const SVC: &str = "web.quickstart-ruby.honeniq.svc.cluster.test.";
/// The record TTL the tests give stackdns.
const TTL: u32 = 2;
/// On top of a TTL: Unbound counts time in whole seconds (an entry stored with TTL t is
/// served for up to t + 1 s), plus the polling and a loaded machine.
const MARGIN: Duration = Duration::from_secs(3);

/// An Unbound process in the foreground, killed when dropped.
struct Unbound {
    _child: Reaped,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Unbound {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Unbound on a free loopback port, no trust anchor (it does not validate), `test.` no longer
/// served locally, and a stub zone for cluster.test pointing at `stackdns`; returns once it
/// answers the zone's SOA through the stub.
fn start_unbound(bin: &Path, stackdns: SocketAddr) -> Unbound {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    let port = free_port();
    let conf = format!(
        "server:\n  chroot: \"\"\n  username: \"\"\n  directory: \"{d}\"\n\
         \x20 pidfile: \"{d}/unbound.pid\"\n  use-syslog: no\n  logfile: \"\"\n  verbosity: 1\n\
         \x20 interface: 127.0.0.1\n  port: {port}\n  do-ip6: no\n\
         \x20 do-not-query-localhost: no\n  local-zone: \"test.\" nodefault\n\
         stub-zone:\n  name: \"cluster.test\"\n  stub-addr: {}@{}\n",
        stackdns.ip(),
        stackdns.port()
    );
    let path = dir.path().join("unbound.conf");
    std::fs::write(&path, conf).expect("write unbound.conf");
    let log = dir.path().join("unbound.log");
    let child = Command::new(bin)
        .arg("-d")
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start unbound");
    let unbound = Unbound {
        _child: Reaped(child),
        addr: ([127, 0, 0, 1], port).into(),
        log,
        _dir: dir,
    };
    let up = eventually(Duration::from_secs(10), || {
        ask(unbound.addr, ZONE, RecordType::SOA, 1)
            .is_some_and(|m| m.metadata.response_code == ResponseCode::NoError && !m.answers.is_empty())
    });
    assert!(up, "unbound does not answer cluster.test SOA:\n{}", unbound.log());
    unbound
}

/// One query over UDP to `addr` with message ID `id`: Unbound's rotation is keyed by the ID,
/// so [`Dns::query`], whose ID is fixed, would see one order only.
fn ask(addr: SocketAddr, name: &str, rtype: RecordType, id: u16) -> Option<Message> {
    let mut msg = Message::query();
    msg.metadata.id = id;
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(fqdn(name), rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    msg.set_edns(edns);
    let reply = Dns { addr }.udp_raw(&msg.to_vec().expect("encode"))?;
    let parsed = Message::from_vec(&reply).ok()?;
    assert_eq!(parsed.metadata.id, id);
    Some(parsed)
}

use crate::support::addresses_in_order as order;

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The TTL of the SOA in a negative answer's authority section.
fn negative_ttl(reply: &Message) -> Option<u32> {
    reply
        .authorities
        .iter()
        .find(|r| r.record_type() == RecordType::SOA)
        .map(|r| r.ttl)
}

fn unbound_bin() -> Option<PathBuf> {
    peer("unbound", "unbound")
}

/// Three web containers on node-do, each with its own address.
async fn three_web(s: &Server) -> String {
    let t = s.add_node("node-do", "95.85.30.162").await;
    for (c, a) in [
        ("web-1", "172.17.0.2"),
        ("web-2", "172.17.0.3"),
        ("web-3", "172.17.0.4"),
    ] {
        let body = json!({"service": "web", "address": a, "generation": 1});
        assert_eq!(s.report("node-do", &t, c, body).await.0, 201);
    }
    t
}

#[tokio::test(flavor = "multi_thread")]
async fn unbound_answers_service_names_and_rotates_them() {
    let Some(bin) = unbound_bin() else { return };
    let s = Server::start(&["--ttl", "2"]);
    three_web(&s).await;
    let unbound = start_unbound(&bin, s.dns);
    let want = ["172.17.0.2", "172.17.0.3", "172.17.0.4"];

    let reply = ask(unbound.addr, SVC, RecordType::A, 7).expect("an answer from unbound");
    assert_eq!(
        reply.metadata.response_code,
        ResponseCode::NoError,
        "{}",
        unbound.log()
    );
    assert!(reply.metadata.recursion_available, "a resolver's answer: RA set");
    assert!(!reply.metadata.authoritative, "a resolver's answer: AA clear");
    assert_eq!(sorted(order(&reply)), want);
    assert!(
        reply.answers.iter().all(|r| r.ttl <= TTL),
        "TTL at most --ttl: {:?}",
        reply.answers
    );

    // Unbound keeps one copy of the RRset per TTL and rotates it by the query ID
    // (rrset-roundrobin, on by default since 1.17): different IDs, different orders.
    let orders: Vec<Vec<String>> = (1..=6u16)
        .map(|id| order(&ask(unbound.addr, SVC, RecordType::A, id).expect("an answer")))
        .collect();
    for o in &orders {
        assert_eq!(
            sorted(o.clone()),
            want,
            "every answer has every container: {orders:?}"
        );
    }
    let distinct: BTreeSet<&Vec<String>> = orders.iter().collect();
    assert!(distinct.len() > 1, "rotation through unbound: {orders:?}");

    // A container name too.
    let one = ask(
        unbound.addr,
        "web-2.quickstart-ruby.honeniq.cont.cluster.test.",
        RecordType::A,
        8,
    )
    .expect("an answer");
    assert_eq!(order(&one), vec!["172.17.0.3"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn unbound_caches_nxdomain_and_nodata_no_longer_than_the_soa_minimum() {
    let Some(bin) = unbound_bin() else { return };
    let s = Server::start(&["--ttl", "2"]);
    let t = three_web(&s).await;
    // db has a container that is not ready: its name exists, without addresses (NODATA).
    let drained = json!({
        "service": "db", "address": "172.17.0.20", "generation": 1, "ready": false, "detail": "starting"
    });
    assert_eq!(s.report("node-do", &t, "db-1", drained).await.0, 201);
    let unbound = start_unbound(&bin, s.dns);

    // The bound: min(SOA TTL, SOA MINIMUM), 5 s with zones/cluster.test.zone; stackdns puts
    // it on the SOA of its negative answers.
    let apex = s.dns().query(ZONE, RecordType::SOA);
    let bound = match apex.answers.first().map(|r| (r.ttl, &r.data)) {
        Some((ttl, RData::SOA(soa))) => ttl.min(soa.minimum),
        other => panic!("no SOA: {other:?}"),
    };
    let missing = "web-9.quickstart-ruby.honeniq.cont.cluster.test.";
    let nodata = "db.quickstart-ruby.honeniq.svc.cluster.test.";
    assert_eq!(negative_ttl(&s.dns().query(missing, RecordType::A)), Some(bound));
    assert_eq!(negative_ttl(&s.dns().query(nodata, RecordType::A)), Some(bound));

    // Both negative answers through unbound, which caches them.
    let nx = ask(unbound.addr, missing, RecordType::A, 11).expect("an answer");
    assert_eq!(
        nx.metadata.response_code,
        ResponseCode::NXDomain,
        "{nx:?}\n{}",
        unbound.log()
    );
    let nd = ask(unbound.addr, nodata, RecordType::A, 12).expect("an answer");
    assert_eq!(nd.metadata.response_code, ResponseCode::NoError, "{nd:?}");
    assert!(nd.answers.is_empty(), "NODATA: {nd:?}");
    // Unbound reports what is left of its negative TTL: never more than the bound.
    let (nx_ttl, nd_ttl) = (negative_ttl(&nx), negative_ttl(&nd));
    let read_at = Instant::now();
    // Whether a cached answer with `ttl` seconds left when read is surely still cached now.
    let still_cached = |ttl: Option<u32>| {
        ttl.is_some_and(|t| Duration::from_secs(t.into()) > read_at.elapsed() + Duration::from_millis(1200))
    };
    assert!(
        nx_ttl.is_some_and(|t| t <= bound),
        "NXDOMAIN SOA TTL {nx_ttl:?}, bound {bound}"
    );
    assert!(
        nd_ttl.is_some_and(|t| t <= bound),
        "NODATA SOA TTL {nd_ttl:?}, bound {bound}"
    );

    // Now the name exists and db is ready; stackdns answers at once.
    let changed = Instant::now();
    let body = json!({"service": "web", "address": "172.17.0.9", "generation": 1});
    assert_eq!(s.report("node-do", &t, "web-9", body).await.0, 201);
    let ready = json!({"service": "db", "address": "172.17.0.20", "generation": 1});
    assert_eq!(s.report("node-do", &t, "db-1", ready).await.0, 200);
    assert_eq!(s.dns().a(missing), vec!["172.17.0.9"]);
    assert_eq!(s.dns().a(nodata), vec!["172.17.0.20"]);

    // Unbound still has the negative answers (when it had at least 2 s of them left)...
    let a_through = |name: &str, id: u16| {
        ask(unbound.addr, name, RecordType::A, id)
            .map(|m| order(&m))
            .unwrap_or_default()
    };
    if still_cached(nx_ttl) {
        let now = ask(unbound.addr, missing, RecordType::A, 13).expect("an answer");
        assert_eq!(
            now.metadata.response_code,
            ResponseCode::NXDomain,
            "cached NXDOMAIN"
        );
    }
    if still_cached(nd_ttl) {
        assert!(a_through(nodata, 14).is_empty(), "cached NODATA");
    }
    // ...and drops them within the bound.
    let mut id = 100u16;
    let appeared = eventually(Duration::from_secs(bound.into()) + MARGIN, || {
        id = id.wrapping_add(2);
        a_through(missing, id) == ["172.17.0.9"] && a_through(nodata, id + 1) == ["172.17.0.20"]
    });
    assert!(
        appeared,
        "after {:?}: {:?} {:?} (negative TTLs {nx_ttl:?} {nd_ttl:?})\n{}",
        changed.elapsed(),
        a_through(missing, 1),
        a_through(nodata, 2),
        unbound.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unbound_drops_a_stopped_container_within_the_record_ttl() {
    let Some(bin) = unbound_bin() else { return };
    let s = Server::start(&["--ttl", "2"]);
    let t = three_web(&s).await;
    let unbound = start_unbound(&bin, s.dns);

    let before = ask(unbound.addr, SVC, RecordType::A, 21).expect("an answer");
    assert_eq!(sorted(order(&before)), ["172.17.0.2", "172.17.0.3", "172.17.0.4"]);
    let left = before.answers.iter().map(|r| r.ttl).min().expect("records");
    assert!(left <= TTL, "TTL at most --ttl: {:?}", before.answers);
    let read_at = Instant::now();

    let stopped = Instant::now();
    let path = "/v1/nodes/node-do/containers/honeniq/quickstart-ruby/web-3?generation=1";
    assert_eq!(s.call("DELETE", path, Some(&t), None).await.0, 200);
    assert_eq!(
        s.dns().a(SVC),
        vec!["172.17.0.2", "172.17.0.3"],
        "stackdns: gone at once"
    );

    let through = |id: u16| {
        sorted(
            ask(unbound.addr, SVC, RecordType::A, id)
                .map(|m| order(&m))
                .unwrap_or_default(),
        )
    };
    if Duration::from_secs(left.into()) > read_at.elapsed() + Duration::from_millis(1200) {
        assert!(
            through(22).iter().any(|a| a == "172.17.0.4"),
            "unbound: still cached"
        );
    }
    let mut id = 100u16;
    let gone = eventually(Duration::from_secs(TTL.into()) + MARGIN, || {
        id = id.wrapping_add(1);
        through(id) == ["172.17.0.2", "172.17.0.3"]
    });
    assert!(
        gone,
        "after {:?} unbound answers {:?}\n{}",
        stopped.elapsed(),
        through(1),
        unbound.log()
    );
}
