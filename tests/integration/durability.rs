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
