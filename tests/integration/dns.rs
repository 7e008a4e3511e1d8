//! DNS behaviour of design.md §3 that needs a scenario (rotation, answer limits, SRV additionals,
//! truncation, serial changes, several queries per connection, garbage), checked with an
//! independent DNS codec. Single query → answer checks are rows of the table in conformance.rs.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use serde_json::json;

use crate::support::*;

const SVC: &str = "web.quickstart-ruby.honeniq.svc.cluster.test.";

/// Two nodes, web-1 on node-do and web-2 on node-ec2.
async fn two_web(extra: &[&str]) -> Server {
    let s = Server::start(extra);
    let t1 = s.add_node("node-do", "95.85.30.162").await;
    let t2 = s.add_node("node-ec2", "52.193.37.165").await;
    assert_eq!(s.report("node-do", &t1, "web-1", web(1)).await.0, 201);
    assert_eq!(s.report("node-ec2", &t2, "web-2", web(1)).await.0, 201);
    s
}

use crate::support::addresses_in_order as order;

#[tokio::test(flavor = "multi_thread")]
async fn svc_lists_every_running_container_and_rotates() {
    let s = two_web(&[]).await;
    let dns = s.dns();
    let first = dns.query(SVC, RecordType::A);
    assert_eq!(first.metadata.response_code, ResponseCode::NoError);
    assert!(first.metadata.authoritative, "AA set");
    assert!(!first.metadata.recursion_available, "RA clear");
    assert_eq!(first.answers.len(), 2);
    assert!(first.answers.iter().all(|r| r.ttl == 5), "default TTL 5");
    let second = dns.query(SVC, RecordType::A);
    let third = dns.query(SVC, RecordType::A);
    assert_ne!(order(&first), order(&second), "cyclic rotation changes the order");
    assert_eq!(order(&first), order(&third), "two records cycle with period 2");
}

#[tokio::test(flavor = "multi_thread")]
async fn fixed_and_random_rotation() {
    let s = two_web(&["--rotation", "fixed"]).await;
    let dns = s.dns();
    let orders: Vec<_> = (0..5).map(|_| order(&dns.query(SVC, RecordType::A))).collect();
    assert!(orders.windows(2).all(|w| w[0] == w[1]), "fixed order: {orders:?}");
    drop(s);

    let s = two_web(&["--rotation", "random"]).await;
    let dns = s.dns();
    let firsts: std::collections::BTreeSet<_> = (0..64)
        .map(|_| order(&dns.query(SVC, RecordType::A))[0].clone())
        .collect();
    assert_eq!(firsts.len(), 2, "random order puts each address first sometimes");
}

#[tokio::test(flavor = "multi_thread")]
async fn max_answers_returns_a_rotating_subset() {
    let s = Server::start(&["--max-answers", "1"]);
    let t = s.add_node("node-do", "10.0.0.1").await;
    for i in 1..=3 {
        let body = json!({"service": "web", "address": format!("10.1.0.{i}"), "generation": 1});
        assert_eq!(s.report("node-do", &t, &format!("web-{i}"), body).await.0, 201);
    }
    let dns = s.dns();
    let seen: std::collections::BTreeSet<_> = (0..3)
        .map(|_| {
            let got = order(&dns.query(SVC, RecordType::A));
            assert_eq!(got.len(), 1);
            got[0].clone()
        })
        .collect();
    assert_eq!(seen.len(), 3, "three queries see all three addresses");
}

#[tokio::test(flavor = "multi_thread")]
async fn addresses_are_deduplicated() {
    let s = Server::start(&[]);
    let t = s.add_node("node-do", "95.85.30.162").await;
    s.report("node-do", &t, "web-1", web(1)).await;
    s.report("node-do", &t, "web-2", web(1)).await;
    assert_eq!(
        s.dns().a(SVC),
        vec!["95.85.30.162"],
        "two containers on one node, one address"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn srv_lists_host_ports_with_target_addresses() {
    let s = Server::start(&[]);
    let t = s.add_node("node-do", "95.85.30.162").await;
    let body =
        json!({"service": "web", "ports": [{"container_port": 80, "host_port": 32768}], "generation": 1});
    s.report("node-do", &t, "web-1", body).await;
    let body = json!({"service": "web", "address": "fd00::2", "ports": [{"container_port": 80, "host_port": 32769}], "generation": 1});
    s.report("node-do", &t, "web-2", body).await;
    let reply = s.dns().query(&format!("_80._tcp.{SVC}"), RecordType::SRV);
    let mut srv: Vec<_> = reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some(s),
            _ => None,
        })
        .map(|s| (s.priority, s.weight, s.port, s.target.to_ascii()))
        .collect();
    srv.sort();
    assert_eq!(
        srv,
        vec![
            (
                0,
                1,
                32768,
                "web-1.quickstart-ruby.honeniq.cont.cluster.test.".to_owned()
            ),
            (
                0,
                1,
                32769,
                "web-2.quickstart-ruby.honeniq.cont.cluster.test.".to_owned()
            ),
        ]
    );
    let mut extra: Vec<_> = reply
        .additionals
        .iter()
        .map(|r| (r.name.to_ascii(), r.record_type(), r.data.to_string()))
        .collect();
    extra.sort();
    assert_eq!(
        extra,
        vec![
            (
                "web-1.quickstart-ruby.honeniq.cont.cluster.test.".to_owned(),
                RecordType::A,
                "95.85.30.162".to_owned()
            ),
            (
                "web-2.quickstart-ruby.honeniq.cont.cluster.test.".to_owned(),
                RecordType::AAAA,
                "fd00::2".to_owned()
            ),
        ]
    );
    let udp = s.dns().query(&format!("_80._udp.{SVC}"), RecordType::SRV);
    assert_eq!(
        udp.metadata.response_code,
        ResponseCode::NXDomain,
        "no udp port published"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cont_and_node_names() {
    let s = Server::start(&[]);
    let t = s.add_node("node-do", "95.85.30.162").await;
    s.add_node("node-v6", "2001:db8::7").await;
    s.report("node-do", &t, "web-1", web(1)).await;
    let body = json!({"service": "web", "address": "172.17.0.5", "generation": 1});
    s.report("node-do", &t, "web-2", body).await;
    let dns = s.dns();
    assert_eq!(
        dns.a("web-1.quickstart-ruby.honeniq.cont.cluster.test."),
        vec!["95.85.30.162"]
    );
    assert_eq!(
        dns.a("web-2.quickstart-ruby.honeniq.cont.cluster.test."),
        vec!["172.17.0.5"]
    );
    assert_eq!(dns.a("node-do.node.cluster.test."), vec!["95.85.30.162"]);
    let v6 = dns.query("node-v6.node.cluster.test.", RecordType::AAAA);
    assert_eq!(v6.answers[0].data.to_string(), "2001:db8::7");
    let nodata = dns.query("node-v6.node.cluster.test.", RecordType::A);
    assert_eq!(
        (nodata.metadata.response_code, nodata.answers.len()),
        (ResponseCode::NoError, 0)
    );
}

/// NODATA: NOERROR, no answer, the SOA in authority with TTL = min(SOA TTL, minimum).
fn assert_nodata(reply: &hickory_proto::op::Message, what: &str) {
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError, "{what}");
    assert!(reply.answers.is_empty(), "{what}: {:?}", reply.answers);
    assert!(reply.metadata.authoritative, "{what}");
    assert_eq!(reply.authorities.len(), 1, "{what}");
    assert_eq!(reply.authorities[0].record_type(), RecordType::SOA, "{what}");
    assert_eq!(reply.authorities[0].ttl, 5, "{what}: negative TTL = SOA minimum");
}

#[tokio::test(flavor = "multi_thread")]
async fn known_service_without_live_containers_is_nodata() {
    let s = Server::start(&[]);
    let t = s.add_node("node-do", "95.85.30.162").await;
    s.report("node-do", &t, "web-1", web(1)).await;
    let (status, _) = s
        .call(
            "DELETE",
            "/v1/nodes/node-do/containers/honeniq/quickstart-ruby/web-1?generation=1",
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_nodata(&s.dns().query(SVC, RecordType::A), "stopped service");
    assert_nodata(
        &s.dns()
            .query("web-1.quickstart-ruby.honeniq.cont.cluster.test.", RecordType::A),
        "stopped container",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn apex_soa_ns_and_serial() {
    let s = Server::start(&[]);
    let dns = s.dns();
    let ns = dns.query(ZONE, RecordType::NS);
    assert!(ns.metadata.authoritative);
    assert_eq!(ns.answers[0].data.to_string(), "ns1.cluster.test.");
    assert_eq!(
        ns.additionals[0].data.to_string(),
        "127.0.0.1",
        "glue for the in-zone NS"
    );
    let before = dns.serial();
    let (_, body) = s
        .call(
            "PUT",
            "/v1/nodes/node-do",
            Some(ADMIN),
            Some(json!({"address": "10.0.0.1"})),
        )
        .await;
    let serial = body["serial"].as_u64().expect("serial") as u32;
    assert!(serial > before, "a published change raises the serial");
    assert_eq!(dns.serial(), serial, "the response's serial is already live");
}

#[tokio::test(flavor = "multi_thread")]
async fn sixty_containers_truncate_honestly() {
    let s = Server::start(&[]);
    let t = s.add_node("node-do", "10.0.0.1").await;
    let containers: Vec<_> = (1..=60)
        .map(|i| {
            json!({"user": "honeniq", "stack": "quickstart-ruby", "name": format!("web-{i}"),
                        "service": "web", "address": format!("10.2.{}.{}", i / 200, i % 200 + 1),
                        "ports": [{"container_port": 80, "host_port": 30000 + i}], "generation": 1})
        })
        .collect();
    let (status, body) = s
        .call(
            "PUT",
            "/v1/nodes/node-do/containers",
            Some(&t),
            Some(json!({"containers": containers})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let dns = s.dns();

    let no_edns = dns.ask(
        SVC,
        RecordType::A,
        Ask {
            edns: None,
            tcp: false,
        },
    );
    assert!(no_edns.metadata.truncation, "60 A records exceed 512 bytes");
    assert!(no_edns.answers.is_empty(), "no partial RRset");
    let small = dns.ask(
        SVC,
        RecordType::A,
        Ask {
            edns: Some(512),
            tcp: false,
        },
    );
    assert!(small.metadata.truncation && small.answers.is_empty());
    assert!(small.edns.is_some(), "OPT survives truncation");

    let big = dns.ask(
        SVC,
        RecordType::A,
        Ask {
            edns: Some(4096),
            tcp: false,
        },
    );
    assert!(!big.metadata.truncation);
    assert_eq!(big.answers.len(), 60, "fits in 1232 bytes");
    let raw_len = {
        let mut q = hickory_proto::op::Message::query();
        q.add_query(hickory_proto::op::Query::query(fqdn(SVC), RecordType::A));
        let mut e = hickory_proto::op::Edns::new();
        e.set_max_payload(4096);
        q.set_edns(e);
        dns.udp_raw(&q.to_vec().expect("encode")).expect("answer").len()
    };
    assert!(raw_len <= 1232, "UDP answers never exceed 1232 bytes: {raw_len}");

    let tcp = dns.ask(
        SVC,
        RecordType::A,
        Ask {
            edns: None,
            tcp: true,
        },
    );
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 60, "TCP gets the full set");

    // 60 SRV records do not fit 1232 bytes: TC over UDP; TCP gets them with every address.
    let srv = format!("_80._tcp.{SVC}");
    let udp = dns.ask(&srv, RecordType::SRV, Ask::default());
    assert!(udp.metadata.truncation && udp.answers.is_empty());
    let tcp = dns.ask(
        &srv,
        RecordType::SRV,
        Ask {
            edns: Some(1232),
            tcp: true,
        },
    );
    assert_eq!((tcp.answers.len(), tcp.additionals.len()), (60, 60));
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_packets_are_answered_or_dropped_never_fatal() {
    let s = two_web(&[]).await;
    let dns = s.dns();
    let header = |qd: u8| vec![0xab, 0xcd, 0x01, 0x00, 0x00, qd, 0, 0, 0, 0, 0, 0];
    // Garbage: shorter than a header is dropped; a broken name is FORMERR; never a crash.
    assert!(dns.udp_raw(&[1, 2, 3]).is_none());
    let mut broken = header(1);
    broken.extend_from_slice(b"\x3fabc");
    assert_eq!(dns.udp_raw(&broken).expect("answer")[3] & 0x0f, 1);
    // Random packets from one socket: each gets an answer of at least a header, or nothing.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(std::time::Duration::from_millis(20)))
        .expect("timeout");
    let mut seed = 0x1234_5678u32;
    for len in 0..300usize {
        let packet: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as u8
            })
            .collect();
        socket.send_to(&packet, s.dns).expect("send");
        let mut buf = [0u8; 2048];
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            assert!(n >= 12, "a reply is at least a header");
        }
    }
    let _ = dns.tcp_raw(&[0xff; 40]);
    assert_eq!(dns.a(SVC).len(), 2, "still answering after garbage");
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_serves_several_queries_per_connection() {
    use std::io::Write;
    let s = two_web(&[]).await;
    let mut stream = std::net::TcpStream::connect(s.dns).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .expect("timeout");
    let mut pipelined = Vec::new();
    for id in 1..=3u16 {
        let mut q = hickory_proto::op::Message::query();
        q.metadata.id = id;
        q.add_query(hickory_proto::op::Query::query(fqdn(SVC), RecordType::A));
        let bytes = q.to_vec().expect("encode");
        pipelined.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        pipelined.extend_from_slice(&bytes);
    }
    stream.write_all(&pipelined).expect("write");
    for id in 1..=3u16 {
        let reply =
            hickory_proto::op::Message::from_vec(&read_frame(&mut stream).expect("frame")).expect("parses");
        assert_eq!(reply.metadata.id, id);
        assert_eq!(reply.answers.len(), 2);
        assert!(matches!(reply.answers[0].data, RData::A(_)));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rrsets_beyond_a_tcp_message_come_as_a_rotating_subset() {
    let s = Server::start(&[]);
    let t = s.add_node("node-do", "10.0.0.1").await;
    let containers: Vec<_> = (1..=1100)
        .map(|i| json!({"user": "honeniq", "stack": "quickstart-ruby", "name": format!("web-{i}"),
                        "service": "web", "ports": [{"container_port": 80, "host_port": 20000 + i}], "generation": 1}))
        .collect();
    let (status, body) = s
        .call(
            "PUT",
            "/v1/nodes/node-do/containers",
            Some(&t),
            Some(json!({"containers": containers})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let srv = format!("_80._tcp.{SVC}");
    let tcp = Ask {
        edns: None,
        tcp: true,
    };
    let first = s.dns().ask(&srv, RecordType::SRV, tcp);
    assert!(!first.metadata.truncation, "TCP is never truncated to nothing");
    let n = first.answers.len();
    assert!(
        (900..1100).contains(&n),
        "as many whole records as fit 64 KiB: {n}"
    );
    let second = s.dns().ask(&srv, RecordType::SRV, tcp);
    assert_ne!(
        first.answers[0].data, second.answers[0].data,
        "the subset rotates"
    );
}
