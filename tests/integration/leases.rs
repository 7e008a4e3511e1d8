//! Node leases: a node that stops heartbeating leaves DNS, and comes back when it returns.

use std::time::{Duration, Instant};

use crate::support::*;

const SVC: &str = "web.quickstart-ruby.honeniq.svc.cluster.test.";

#[tokio::test(flavor = "multi_thread")]
async fn lost_nodes_leave_dns_and_come_back() {
    let s = Server::start(&["--node-ttl", "1", "--lease-check-ms", "100"]);
    let t1 = s.add_node("node-do", "95.85.30.162").await;
    let t2 = s.add_node("node-ec2", "52.193.37.165").await;
    s.report("node-do", &t1, "web-1", web(1)).await;
    s.report("node-ec2", &t2, "web-2", web(1)).await;
    let dns = s.dns();
    assert_eq!(dns.a(SVC).len(), 2);

    // node-do keeps heartbeating, node-ec2 goes silent.
    let started = Instant::now();
    let gone = loop {
        let (status, _) = s
            .call("POST", "/v1/nodes/node-do/heartbeat", Some(&t1), None)
            .await;
        assert_eq!(status, 200);
        if dns.a(SVC) == vec!["95.85.30.162"] {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "node-ec2 never left DNS"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(gone >= Duration::from_millis(900), "left too early: {gone:?}");
    assert!(
        dns.a("web-2.quickstart-ruby.honeniq.cont.cluster.test.")
            .is_empty()
    );
    assert_eq!(
        dns.a("node-ec2.node.cluster.test."),
        vec!["52.193.37.165"],
        "the node's own name stays"
    );
    let (_, body) = s.call("GET", "/v1/nodes/node-ec2", Some(ADMIN), None).await;
    assert_eq!(body["node"]["state"], "lost");

    // It heartbeats again: its containers are back, and the answer carries a new serial.
    let serial = dns.serial();
    let (status, body) = s
        .call("POST", "/v1/nodes/node-ec2/heartbeat", Some(&t2), None)
        .await;
    assert_eq!(status, 200);
    assert!(body["serial"].as_u64().expect("serial") > u64::from(serial));
    assert_eq!(dns.a(SVC).len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_keeps_lost_nodes_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let flags = ["--node-ttl", "1", "--lease-check-ms", "100"];
    let s = Server::start_in(&data, &flags, true);
    let t1 = s.add_node("node-do", "95.85.30.162").await;
    let t2 = s.add_node("node-ec2", "52.193.37.165").await;
    s.report("node-do", &t1, "web-1", web(1)).await;
    s.report("node-ec2", &t2, "web-2", web(1)).await;
    let lost = eventually(Duration::from_secs(5), || {
        let hb = s.call("POST", "/v1/nodes/node-do/heartbeat", Some(&t1), None);
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(hb));
        s.dns().a(SVC) == vec!["95.85.30.162"]
    });
    assert!(lost);
    s.kill();

    let s = Server::start_in(&data, &["--node-ttl", "30"], true);
    assert_eq!(
        s.dns().a(SVC),
        vec!["95.85.30.162"],
        "node-ec2 stays lost across the restart"
    );
    assert_eq!(
        s.call("POST", "/v1/nodes/node-ec2/heartbeat", Some(&t2), None)
            .await
            .0,
        200
    );
    assert_eq!(s.dns().a(SVC).len(), 2, "until it heartbeats");
}
