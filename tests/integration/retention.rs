//! Tombstones are removed after `--tombstone-retention`, and fencing survives them: a report
//! from before the stop is refused by its node's generation floor, also after a restart.

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::support::*;

const CONT: &str = "web-1.quickstart-ruby.honeniq.cont.cluster.test.";

fn rcode(server: &Server, name: &str) -> ResponseCode {
    server.dns().query(name, RecordType::A).metadata.response_code
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_older_than_a_removed_tombstone_is_still_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let retention = ["--tombstone-retention", "1s"];
    let s = Server::start_in(&data, &retention, true);
    let t = s.add_node("node-do", "10.0.0.1").await;
    let (status, body) = s.report("node-do", &t, "web-1", web(3)).await;
    assert_eq!(status, 201, "{body}");
    let path = "/v1/nodes/node-do/containers/honeniq/quickstart-ruby/web-1";
    let (status, body) = s.call("DELETE", path, Some(&t), None).await;
    assert_eq!(status, 200, "{body}");
    // The tombstone: the name is known (NODATA) until its retention is over, then gone.
    assert_eq!(rcode(&s, CONT), ResponseCode::NoError);
    assert!(
        eventually(Duration::from_secs(10), || rcode(&s, CONT)
            == ResponseCode::NXDomain),
        "the tombstone was never removed:\n{}",
        s.log()
    );
    // The sweeper logs once its commit is answered, just after the name left DNS.
    let logged = eventually(Duration::from_secs(2), || {
        s.log().contains("old tombstones removed")
    });
    assert!(logged, "{}", s.log());

    // The late report from before the stop, and anything older: refused by the node's floor.
    for generation in [3, 2, 0] {
        let (status, body) = s.report("node-do", &t, "web-1", web(generation)).await;
        assert_eq!(status, 409, "generation {generation}: {body}");
        assert_eq!(body["error"]["code"], "stale_generation");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("tombstones were removed")),
            "{body}"
        );
    }
    // The floor is stored: after a restart the same report is refused.
    s.kill();
    let s = Server::start_in(&data, &retention, true);
    let (status, body) = s.report("node-do", &t, "web-1", web(3)).await;
    assert_eq!(status, 409, "{body}");
    // A newer life of the name is accepted, and answers again.
    let (status, body) = s.report("node-do", &t, "web-1", web(4)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(s.dns().a(CONT), vec!["10.0.0.1"]);
}
