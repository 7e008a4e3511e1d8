//! What survives a restart or a crash, and the generated admin token.

use std::os::unix::fs::PermissionsExt;

use serde_json::json;

use crate::support::*;

const SVC: &str = "web.quickstart-ruby.honeniq.svc.cluster.test.";

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_kill_9_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let s = Server::start_in(&data, &[], true);
    let t = s.add_node("node-do", "10.0.0.1").await;
    let mut last_serial = 0;
    for i in 1..=20 {
        let body = json!({"service": "web", "address": format!("172.17.0.{i}"), "generation": 1});
        let (status, reply) = s.report("node-do", &t, &format!("web-{i}"), body).await;
        assert_eq!(status, 201);
        last_serial = reply["serial"].as_u64().expect("serial");
    }
    s.kill();

    let s = Server::start_in(&data, &[], true);
    let dns = s.dns();
    assert_eq!(
        dns.a(SVC).len(),
        20,
        "every acknowledged container answers after a crash"
    );
    assert!(
        u64::from(dns.serial()) > last_serial,
        "serials never go backwards"
    );
    // The node token still works: it was stored (hashed) with the node.
    let (status, _) = s
        .call("POST", "/v1/nodes/node-do/heartbeat", Some(&t), None)
        .await;
    assert_eq!(status, 200);
    let status = s.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");

    let s = Server::start_in(&data, &[], true);
    assert_eq!(s.dns().a(SVC).len(), 20, "and after a clean restart");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_token_is_generated_once_with_mode_0600() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let s = Server::start_in(&data, &[], false);
    let path = data.join("admin.token");
    let token = std::fs::read_to_string(&path)
        .expect("token file")
        .trim()
        .to_owned();
    assert_eq!(
        std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777,
        0o600
    );
    assert!(s.log().contains("admin.token"), "the log says where the token is");
    let (status, _) = s.call("GET", "/v1/nodes", Some(&token), None).await;
    assert_eq!(status, 200);
    s.kill();

    let s = Server::start_in(&data, &[], false);
    assert_eq!(
        std::fs::read_to_string(&path).expect("token file").trim(),
        token,
        "reused"
    );
    let (status, _) = s.call("GET", "/v1/nodes", Some(&token), None).await;
    assert_eq!(status, 200);
    let (status, _) = s.call("GET", "/v1/nodes", Some(ADMIN), None).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_token_file_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    std::fs::write(&file, "from-a-file\n").expect("write");
    let data = dir.path().join("data");
    let s = Server::start_in(
        &data,
        &["--admin-token-file", file.to_str().expect("utf-8")],
        true,
    );
    assert_eq!(s.call("GET", "/v1/nodes", Some("from-a-file"), None).await.0, 200);
    assert_eq!(
        s.call("GET", "/v1/nodes", Some(ADMIN), None).await.0,
        401,
        "the file wins over the env"
    );
}

/// Reads every message of a zone transfer answering `query` on a new TCP connection.
pub(crate) fn transfer(dns: &Dns, query: &hickory_proto::op::Message) -> Vec<hickory_proto::rr::Record> {
    use std::io::Write;
    let bytes = query.to_vec().expect("encode");
    let mut stream = std::net::TcpStream::connect(dns.addr).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .expect("timeout");
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    stream.write_all(&framed).expect("write");
    let mut records = Vec::new();
    let mut soas = 0;
    while let Some(frame) = read_frame(&mut stream) {
        let message = hickory_proto::op::Message::from_vec(&frame).expect("parses");
        assert_eq!(
            message.metadata.response_code,
            hickory_proto::op::ResponseCode::NoError
        );
        for r in message.answers {
            soas += usize::from(r.record_type() == hickory_proto::rr::RecordType::SOA);
            records.push(r);
        }
        // The transfer ends with the current SOA a second time at the top level.
        let first = records.first().map(|r| r.data.to_string());
        if soas >= 2 && records.last().map(|r| r.data.to_string()) == first {
            break;
        }
    }
    records
}

#[tokio::test(flavor = "multi_thread")]
async fn ixfr_journal_survives_restart() {
    use hickory_proto::rr::{RData, Record, RecordType, rdata::SOA};
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let flags = ["--allow-transfer", "127.0.0.1/32"];
    let s = Server::start_in(&data, &flags, true);
    let t = s.add_node("node-do", "10.0.0.1").await;
    let (_, body) = s.report("node-do", &t, "web-1", web(1)).await;
    let before = body["serial"].as_u64().expect("serial") as u32;
    let body = json!({"service": "web", "address": "172.17.0.2", "generation": 1});
    s.report("node-do", &t, "web-2", body).await;
    s.kill();

    let s = Server::start_in(&data, &flags, true);
    let mut q = hickory_proto::op::Message::query();
    q.add_query(hickory_proto::op::Query::query(fqdn(ZONE), RecordType::IXFR));
    let soa = SOA::new(
        fqdn("ns1.cluster.test."),
        fqdn("hostmaster.cluster.test."),
        before,
        0,
        0,
        0,
        0,
    );
    q.add_authority(Record::from_rdata(fqdn(ZONE), 0, RData::SOA(soa)));
    let records = transfer(&s.dns(), &q);
    let text: Vec<String> = records
        .iter()
        .map(|r| format!("{} {} {}", r.name, r.record_type(), r.data))
        .collect();
    assert!(
        text.iter()
            .any(|r| r.starts_with("web-2.quickstart-ruby.honeniq.cont.cluster.test. A 172.17.0.2")),
        "the increment since serial {before}: {text:#?}"
    );
    assert!(
        !text.iter().any(|r| r.starts_with("ns1.")),
        "incremental, not the whole zone: {text:#?}"
    );
    // The server logs the transfer after sending it; give the log a moment.
    let logged = eventually(std::time::Duration::from_secs(2), || {
        s.log().contains("kind=\"IXFR\"")
    });
    assert!(logged, "{}", s.log());

    // Over UDP (with EDNS) the same increment fits one datagram, so it comes whole (RFC 1995 §2).
    let mut edns = hickory_proto::op::Edns::new();
    edns.set_max_payload(1232);
    q.set_edns(edns);
    let udp = s.dns().udp_raw(&q.to_vec().expect("encode")).expect("an answer");
    let udp = hickory_proto::op::Message::from_vec(&udp).expect("parses");
    let names: Vec<String> = udp.answers.iter().map(|r| r.name.to_ascii()).collect();
    assert!(names.iter().any(|n| n.starts_with("web-2.")), "{names:?}");

    // A serial older than the journal reaches (RFC 1982: u32::MAX - 10 precedes small serials)
    // gets the whole zone.
    let mut old = hickory_proto::op::Message::query();
    old.add_query(hickory_proto::op::Query::query(fqdn(ZONE), RecordType::IXFR));
    let soa = SOA::new(
        fqdn("ns1.cluster.test."),
        fqdn("hostmaster.cluster.test."),
        u32::MAX - 10,
        0,
        0,
        0,
        0,
    );
    old.add_authority(Record::from_rdata(fqdn(ZONE), 0, RData::SOA(soa)));
    let whole = transfer(&s.dns(), &old);
    assert!(
        whole.iter().any(|r| r.name.to_ascii() == "ns1.cluster.test."),
        "AXFR-style answer"
    );
}

/// The crash loop of `bench/crash_loop.py` (200 trials there), a few trials here: kill -9 at
/// random moments under concurrent reports, stops and anti-entropy replaces from four nodes;
/// after each restart every acknowledged write is there, every in-doubt one is all or nothing,
/// and nothing else changed.
#[test]
fn acknowledged_writes_survive_kill_9_at_random_moments() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/crash_loop.py");
    let output = std::process::Command::new("python3")
        .arg(script)
        .args(["--binary", env!("CARGO_BIN_EXE_stackdns"), "--trials", "4"])
        .output()
        .expect("python3 runs the crash loop");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("acknowledged writes all present"), "{stdout}");
}
