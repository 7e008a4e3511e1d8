//! The seed scenario of the core-path issue, at the DNS level.

use std::time::Duration;

use crate::support::*;

const SVC: &str = "web.quickstart-ruby.honeniq.svc.cluster.test.";

#[tokio::test(flavor = "multi_thread")]
async fn seed_scenario() {
    let s = Server::start(&["--node-ttl", "1", "--lease-check-ms", "100"]);
    let dns = s.dns();
    let t_do = s.add_node("node-do", "95.85.30.162").await;
    let t_ec2 = s.add_node("node-ec2", "52.193.37.165").await;

    // web-1 on node-do.
    assert_eq!(s.report("node-do", &t_do, "web-1", web(1)).await.0, 201);
    assert_eq!(dns.a(SVC), vec!["95.85.30.162"]);
    assert_eq!(
        dns.a("web-1.quickstart-ruby.honeniq.cont.cluster.test."),
        vec!["95.85.30.162"]
    );

    // web-2 starts on node-ec2: both addresses, rotating.
    assert_eq!(s.report("node-ec2", &t_ec2, "web-2", web(1)).await.0, 201);
    assert_eq!(dns.a(SVC), vec!["52.193.37.165", "95.85.30.162"]);
    let first = |_| {
        dns.query(SVC, hickory_proto::rr::RecordType::A).answers[0]
            .data
            .to_string()
    };
    let firsts: std::collections::BTreeSet<String> = (0..4).map(first).collect();
    assert_eq!(firsts.len(), 2, "the order rotates between queries");

    // node-ec2's lease lapses while node-do keeps heartbeating.
    let lapsed = eventually(Duration::from_secs(5), || {
        let hb = s.call("POST", "/v1/nodes/node-do/heartbeat", Some(&t_do), None);
        let status = tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(hb)).0;
        assert_eq!(status, 200);
        dns.a(SVC) == vec!["95.85.30.162"]
    });
    assert!(lapsed, "node-ec2 left DNS after its lease");
}
