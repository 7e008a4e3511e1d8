//! The registration API: roles, validation, fencing, anti-entropy and group commit.

use serde_json::{Value, json};

use crate::support::*;

const SVC: &str = "web.quickstart-ruby.honeniq.svc.cluster.test.";

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no code>")
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or("<no message>")
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_are_created_updated_listed_and_deleted() {
    let s = Server::start(&[]);
    let (status, body) = s
        .call(
            "PUT",
            "/v1/nodes/node-do",
            Some(ADMIN),
            Some(json!({
        "address": "95.85.30.162", "labels": {"region": "ams3"}, "tags": ["web"],
        "capacity": {"memory_mb": 2048, "cpus": 2.0}})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["token"].as_str().map(str::len), Some(64));
    assert_eq!(body["node"]["state"], "live");
    assert_eq!(body["node"]["fqdn"], "node-do.node.cluster.test.");

    let (status, body) = s
        .call(
            "PUT",
            "/v1/nodes/node-do",
            Some(ADMIN),
            Some(json!({"address": "95.85.30.163"})),
        )
        .await;
    assert_eq!(status, 200);
    assert!(body.get("token").is_none(), "the token is shown once");
    assert_eq!(s.dns().a("node-do.node.cluster.test."), vec!["95.85.30.163"]);

    let (status, body) = s.call("GET", "/v1/nodes", Some(ADMIN), None).await;
    assert_eq!(status, 200);
    assert_eq!(body["nodes"].as_array().map(Vec::len), Some(1));
    let (status, body) = s.call("GET", "/v1/nodes/node-do", Some(ADMIN), None).await;
    assert_eq!(
        (status, body["node"]["address"].as_str()),
        (200, Some("95.85.30.163"))
    );

    let (status, _) = s.call("DELETE", "/v1/nodes/node-do", Some(ADMIN), None).await;
    assert_eq!(status, 200);
    let (status, body) = s.call("GET", "/v1/nodes/node-do", Some(ADMIN), None).await;
    assert_eq!((status, code(&body)), (404, "not_found"));
    assert!(s.dns().a("node-do.node.cluster.test.").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_and_tokens() {
    let s = Server::start(&[]);
    let t1 = s.add_node("node-do", "10.0.0.1").await;
    let t2 = s.add_node("node-ec2", "10.0.0.2").await;

    let (status, body) = s.call("GET", "/v1/nodes", None, None).await;
    assert_eq!((status, code(&body)), (401, "unauthorized"), "missing token");
    let (status, _) = s.call("GET", "/v1/nodes", Some("not-a-token"), None).await;
    assert_eq!(status, 401, "unknown token");
    let (status, body) = s.call("GET", "/v1/nodes", Some(&t1), None).await;
    assert_eq!(
        (status, code(&body)),
        (403, "forbidden"),
        "node token on an admin endpoint"
    );
    let (status, _) = s
        .call("POST", "/v1/nodes/node-do/heartbeat", Some("not-a-token"), None)
        .await;
    assert_eq!(status, 401);

    let (status, body) = s.report("node-ec2", &t1, "web-1", web(1)).await;
    assert_eq!((status, code(&body)), (403, "forbidden"), "another node's token");
    assert!(message(&body).contains("node-do"), "{body}");
    let (status, _) = s.report("node-ec2", &t2, "web-1", web(1)).await;
    assert_eq!(status, 201);
    let (status, _) = s
        .call("POST", "/v1/nodes/node-do/heartbeat", Some(&t1), None)
        .await;
    assert_eq!(status, 200);
    let (status, _) = s
        .call("POST", "/v1/nodes/node-do/heartbeat", Some(ADMIN), None)
        .await;
    assert_eq!(status, 200, "admin may act for any node");

    // Rotating a token retires the old one.
    let (status, body) = s.call("POST", "/v1/nodes/node-do/token", Some(ADMIN), None).await;
    assert_eq!(status, 200);
    let fresh = body["token"].as_str().expect("token").to_owned();
    assert_eq!(
        s.call("POST", "/v1/nodes/node-do/heartbeat", Some(&t1), None)
            .await
            .0,
        401
    );
    assert_eq!(
        s.call("POST", "/v1/nodes/node-do/heartbeat", Some(&fresh), None)
            .await
            .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let s = Server::start(&[]);
    let t = s.add_node("node-do", "10.0.0.1").await;
    s.report("node-do", &t, "web-1", web(1)).await;
    let serial = s.dns().serial();

    let long = format!("/v1/nodes/{}", "a".repeat(64));
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, Vec<u8>, u16, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            "PUT",
            "/v1/nodes/node-x",
            Some(ADMIN),
            b"{\"address\": ".to_vec(),
            400,
            "invalid_json",
            "line 1",
        ),
        (
            "PUT",
            "/v1/nodes/node-x",
            Some(ADMIN),
            br#"{"address":"10.0.0.9","zone":"a"}"#.to_vec(),
            400,
            "unknown_field",
            "`zone`",
        ),
        (
            "PUT",
            "/v1/nodes/node_do",
            Some(ADMIN),
            br#"{"address":"10.0.0.9"}"#.to_vec(),
            400,
            "invalid_name",
            "node \"node_do\"",
        ),
        (
            "PUT",
            &long,
            Some(ADMIN),
            br#"{"address":"10.0.0.9"}"#.to_vec(),
            400,
            "invalid_name",
            "longer than 63",
        ),
        (
            "PUT",
            "/v1/nodes/-x",
            Some(ADMIN),
            br#"{"address":"10.0.0.9"}"#.to_vec(),
            400,
            "invalid_name",
            "starts or ends",
        ),
        (
            "PUT",
            "/v1/nodes/node-x",
            Some(ADMIN),
            br#"{"address":"not-an-ip"}"#.to_vec(),
            400,
            "invalid_address",
            "not-an-ip",
        ),
        (
            "PUT",
            "/v1/nodes/node-do/containers/honeniq/quick_start/web-1",
            Some(&t),
            br#"{"service":"web","generation":2}"#.to_vec(),
            400,
            "invalid_name",
            "stack",
        ),
        (
            "PUT",
            "/v1/nodes/node-do/containers/honeniq/qs/web-1",
            Some(&t),
            br#"{"service":"Web_1","generation":2}"#.to_vec(),
            400,
            "invalid_name",
            "service",
        ),
        (
            "PUT",
            "/v1/nodes/node-do/containers/honeniq/qs/web-1",
            Some(&t),
            br#"{"service":"web"}"#.to_vec(),
            400,
            "invalid_json",
            "generation",
        ),
        (
            "PUT",
            "/v1/nodes/node-do/containers/honeniq/qs/web-1",
            Some(&t),
            br#"{"service":"web","generation":2,"ports":[{"container_port":0}]}"#.to_vec(),
            400,
            "invalid_port",
            "port 0",
        ),
        (
            "PUT",
            "/v1/nodes/node-do/containers/honeniq/qs/web-1",
            Some(&t),
            br#"{"service":"web","generation":2,"ports":[{"container_port":80,"protocol":"sctp"}]}"#.to_vec(),
            400,
            "invalid_json",
            "sctp",
        ),
        (
            "DELETE",
            "/v1/nodes/node-do/containers/honeniq/quickstart-ruby/web-1?generation=x",
            Some(&t),
            vec![],
            400,
            "invalid_value",
            "generation",
        ),
        (
            "PUT",
            "/v1/nodes/node-x",
            Some(ADMIN),
            vec![b' '; 2 << 20],
            413,
            "payload_too_large",
            "limit",
        ),
    ];
    for (method, path, token, body, status, want_code, needle) in cases {
        let (got, reply) = s.call_raw(method, path, token, body).await;
        assert_eq!(
            (got, code(&reply)),
            (status, want_code),
            "{method} {path}: {reply}"
        );
        assert!(
            message(&reply).contains(needle),
            "{method} {path}: {reply} should mention {needle}"
        );
    }
    let (status, body) = s.call("GET", "/v1/nodes", Some(ADMIN), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["nodes"].as_array().map(Vec::len),
        Some(1),
        "no node was added"
    );
    assert_eq!(s.dns().serial(), serial, "nothing was published");
    assert_eq!(s.dns().a(SVC), vec!["10.0.0.1"]);

    // Upper case is the same name (labels are case-insensitive, stored lower-case).
    let (status, body) = s
        .call(
            "PUT",
            "/v1/nodes/Node-DO",
            Some(ADMIN),
            Some(json!({"address": "10.0.0.1"})),
        )
        .await;
    assert_eq!((status, body["node"]["name"].as_str()), (200, Some("node-do")));
}

#[tokio::test(flavor = "multi_thread")]
async fn generations_fence_stale_reports() {
    let s = Server::start(&[]);
    let t1 = s.add_node("node-do", "10.0.0.1").await;
    let t2 = s.add_node("node-ec2", "10.0.0.2").await;
    let dns = s.dns();
    assert_eq!(s.report("node-do", &t1, "web-1", web(2)).await.0, 201);

    let (status, body) = s.report("node-do", &t1, "web-1", web(1)).await;
    assert_eq!((status, code(&body)), (409, "stale_generation"));
    assert!(message(&body).contains("generation 1"), "{body}");
    assert_eq!(
        s.report("node-do", &t1, "web-1", web(2)).await.0,
        200,
        "a repeated report is idempotent"
    );

    // The container moves to node-ec2 with a newer generation; node-do cannot take it back.
    assert_eq!(s.report("node-ec2", &t2, "web-1", web(3)).await.0, 200);
    assert_eq!(dns.a(SVC), vec!["10.0.0.2"]);
    assert_eq!(s.report("node-do", &t1, "web-1", web(2)).await.0, 409);
    assert_eq!(
        s.report("node-do", &t1, "web-1", web(3)).await.0,
        409,
        "same generation, other node"
    );
    let path = "/v1/nodes/node-do/containers/honeniq/quickstart-ruby/web-1";
    assert_eq!(
        s.call("DELETE", &format!("{path}?generation=2"), Some(&t1), None)
            .await
            .0,
        409
    );
    assert_eq!(
        s.call("DELETE", path, Some(&t1), None).await.0,
        409,
        "not on this node"
    );
    assert_eq!(dns.a(SVC), vec!["10.0.0.2"]);

    // Stopped at generation 4: a late report at 3 cannot resurrect it.
    let path2 = "/v1/nodes/node-ec2/containers/honeniq/quickstart-ruby/web-1";
    let (status, body) = s
        .call("DELETE", &format!("{path2}?generation=4"), Some(&t2), None)
        .await;
    assert_eq!(
        (status, body["container"]["state"].as_str()),
        (200, Some("stopped"))
    );
    assert_eq!(s.report("node-ec2", &t2, "web-1", web(3)).await.0, 409);
    assert_eq!(s.report("node-ec2", &t2, "web-1", web(4)).await.0, 409);
    assert!(dns.a(SVC).is_empty());
    assert_eq!(
        s.report("node-ec2", &t2, "web-1", web(5)).await.0,
        201,
        "a new start"
    );
    assert_eq!(dns.a(SVC), vec!["10.0.0.2"]);
    let (status, body) = s
        .call(
            "DELETE",
            "/v1/nodes/node-ec2/containers/honeniq/quickstart-ruby/nope",
            Some(&t2),
            None,
        )
        .await;
    assert_eq!((status, code(&body)), (404, "not_found"));
}

#[tokio::test(flavor = "multi_thread")]
async fn full_list_replaces_the_nodes_set() {
    let s = Server::start(&[]);
    let t = s.add_node("node-do", "10.0.0.1").await;
    let item = |name: &str, addr: &str, generation: u64| json!({"user": "honeniq", "stack": "quickstart-ruby", "name": name, "service": "web", "address": addr, "generation": generation});
    let put = |list: Vec<Value>| {
        s.call(
            "PUT",
            "/v1/nodes/node-do/containers",
            Some(&t),
            Some(json!({"containers": list})),
        )
    };
    let (status, body) = put(vec![
        item("web-1", "172.17.0.1", 1),
        item("web-2", "172.17.0.2", 1),
    ])
    .await;
    assert_eq!((status, body["started"].as_u64()), (200, Some(2)), "{body}");
    assert_eq!(s.dns().a(SVC), vec!["172.17.0.1", "172.17.0.2"]);

    let (status, body) = put(vec![
        item("web-2", "172.17.0.2", 1),
        item("web-3", "172.17.0.3", 1),
    ])
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            body["started"].as_u64(),
            body["stopped"].as_u64(),
            body["unchanged"].as_u64()
        ),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(s.dns().a(SVC), vec!["172.17.0.2", "172.17.0.3"]);

    // One stale entry refuses the whole list.
    let serial = s.dns().serial();
    let (status, body) = put(vec![
        item("web-1", "172.17.0.1", 1),
        item("web-4", "172.17.0.4", 1),
    ])
    .await;
    assert_eq!(
        (status, code(&body)),
        (409, "stale_generation"),
        "web-1 was stopped at generation 1"
    );
    assert_eq!(s.dns().serial(), serial);
    assert_eq!(s.dns().a(SVC), vec!["172.17.0.2", "172.17.0.3"]);
    let (status, body) = put(vec![
        item("web-5", "172.17.0.5", 1),
        item("web-5", "172.17.0.5", 1),
    ])
    .await;
    assert_eq!((status, code(&body)), (400, "invalid_value"));

    let (status, body) = put(vec![]).await;
    assert_eq!((status, body["stopped"].as_u64()), (200, Some(2)));
    assert!(s.dns().a(SVC).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writes_share_commits() {
    let s = std::sync::Arc::new(Server::start(&[]));
    let t = s.add_node("node-do", "10.0.0.1").await;
    let before = s.dns().serial();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (s, t) = (s.clone(), t.clone());
        tasks.spawn(async move {
            let (status, body) = s.report("node-do", &t, &format!("web-{i}"), web(1)).await;
            assert_eq!(status, 201, "{body}");
            body["serial"].as_u64().expect("serial")
        });
    }
    let mut serials = std::collections::BTreeSet::new();
    while let Some(serial) = tasks.join_next().await {
        serials.insert(serial.expect("task"));
    }
    let after = s.dns().serial();
    assert!(
        serials
            .iter()
            .all(|&x| x > u64::from(before) && x <= u64::from(after))
    );
    assert!(
        serials.len() < 200,
        "200 concurrent writes shared commits: {} serials",
        serials.len()
    );
    let (_, body) = s.call("GET", "/v1/nodes/node-do", Some(ADMIN), None).await;
    assert_eq!(body["node"]["containers_running"], 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_and_metrics() {
    let s = Server::start(&[]);
    s.add_node("node-do", "10.0.0.1").await;
    let http = reqwest::Client::new();
    for path in ["/healthz", "/readyz"] {
        let resp = http.get(format!("{}{path}", s.api)).send().await.expect("get");
        assert_eq!(resp.status(), 200, "{path}");
    }
    // On the API's address /metrics needs the admin token (it tells tenant counts) ...
    let anonymous = http.get(format!("{}/metrics", s.api)).send().await.expect("get");
    assert_eq!(anonymous.status(), 401);
    let (status, _) = s
        .call(
            "GET",
            "/metrics",
            Some(&s.add_node("node-x", "10.0.0.9").await),
            None,
        )
        .await;
    assert_eq!(status, 403, "a node token is not enough");
    let admin = http
        .get(format!("{}/metrics", s.api))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("get");
    assert!(
        admin
            .text()
            .await
            .expect("text")
            .contains("stackdns_nodes{state=\"live\"} 2")
    );
    // ... and is open on --metrics-addr, where Prometheus scrapes it.
    let log = s.log();
    let addr = log
        .split("metrics listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a metrics listener");
    let metrics = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("stackdns_nodes{state=\"live\"} 2"), "{metrics}");
    let (status, body) = s.call("GET", "/v1/nope", Some(ADMIN), None).await;
    assert_eq!((status, code(&body)), (404, "not_found"));
}

#[tokio::test(flavor = "multi_thread")]
async fn user_tokens_are_issued_scoped_and_revoked() {
    let s = Server::start(&[]);
    s.add_node("node-do", "10.0.0.1").await;
    let (status, body) = s
        .call("POST", "/v1/users/honeniq/tokens", Some(ADMIN), None)
        .await;
    assert_eq!((status, body["user"].as_str()), (201, Some("honeniq")), "{body}");
    let token = body["token"].as_str().expect("token").to_owned();
    let (status, body) = s
        .call("POST", "/v1/users/Bad_User/tokens", Some(ADMIN), None)
        .await;
    assert_eq!((status, code(&body)), (400, "invalid_name"));

    // A user token is known (not 401): it sees only its own nodes (none yet), may not report
    // as a node, nor use admin endpoints.
    let (status, body) = s.call("GET", "/v1/nodes", Some(&token), None).await;
    assert_eq!(
        (status, body["nodes"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{body}"
    );
    let (status, body) = s.report("node-do", &token, "web-1", web(1)).await;
    assert_eq!((status, code(&body)), (403, "forbidden"));
    assert_eq!(
        s.call("POST", "/v1/users/honeniq/tokens", Some(&token), None)
            .await
            .0,
        403
    );

    let (status, body) = s
        .call("DELETE", "/v1/users/honeniq/tokens", Some(ADMIN), None)
        .await;
    assert_eq!((status, body["revoked"].as_u64()), (200, Some(1)));
    assert_eq!(
        s.call("GET", "/v1/nodes", Some(&token), None).await.0,
        401,
        "revoked"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_cannot_take_over_containers_placed_elsewhere() {
    let s = Server::start(&[]);
    let t_do = s.add_node("node-do", "10.0.0.1").await;
    let t_ec2 = s.add_node("node-ec2", "10.0.0.2").await;
    let yaml = "web:\n  image: x\n  ports: ['80:80']\n";
    let (status, body) = s
        .call_raw(
            "PUT",
            "/v1/stacks/honeniq/quickstart-ruby",
            Some(ADMIN),
            yaml.as_bytes().to_vec(),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let c = &body["stack"]["containers"][0];
    let (owner, other, generation) = if c["node"] == "node-do" {
        (&t_do, ("node-ec2", &t_ec2), c["generation"].as_u64())
    } else {
        (&t_ec2, ("node-do", &t_do), c["generation"].as_u64())
    };
    let owner_node = c["node"].as_str().expect("node").to_owned();
    let generation = generation.expect("generation");
    let report = |g: u64| json!({"service": "web", "ports": [{"container_port": 80, "host_port": 80}], "generation": g});

    let (status, body) = s
        .report(other.0, other.1, "web-1", report(generation + 100))
        .await;
    assert_eq!(
        (status, code(&body)),
        (409, "stale_generation"),
        "another node cannot claim it: {body}"
    );
    assert!(message(&body).contains(&owner_node), "{body}");
    let (status, _) = s
        .report(&owner_node, owner, "web-1", report(generation + 1))
        .await;
    assert_eq!(status, 409, "not beyond the generation placement gave");
    let (status, body) = s.report(&owner_node, owner, "web-1", report(u64::MAX)).await;
    assert_eq!((status, code(&body)), (400, "invalid_value"), "{body}");
    assert_eq!(
        s.report(&owner_node, owner, "web-1", report(generation)).await.0,
        201
    );

    // Nor stop it from another node, whatever generation it claims.
    let path = format!(
        "/v1/nodes/{}/containers/honeniq/quickstart-ruby/web-1?generation=999",
        other.0
    );
    assert_eq!(s.call("DELETE", &path, Some(other.1), None).await.0, 409);
    assert_eq!(
        s.dns().a("web.quickstart-ruby.honeniq.svc.cluster.test.").len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoints_without_parameters_refuse_them_and_do_nothing() {
    let s = Server::start(&[]);
    s.add_node("node-do", "10.0.0.1").await;
    let (status, body) = s
        .call_raw(
            "PUT",
            "/v1/stacks/honeniq/app",
            Some(ADMIN),
            b"worker:\n  image: w\n".to_vec(),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // A dry run of a delete does not exist: refused, and the stack stays.
    let (status, body) = s
        .call("DELETE", "/v1/stacks/honeniq/app?dry_run=true", Some(ADMIN), None)
        .await;
    assert_eq!((status, code(&body)), (400, "unknown_parameter"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("dry_run")
    );
    let (status, _) = s.call("GET", "/v1/stacks/honeniq/app", Some(ADMIN), None).await;
    assert_eq!(status, 200, "still there");
    for path in ["/v1/nodes?limit=5", "/v1/nodes/node-do?x", "/v1/info?verbose=1"] {
        let (status, body) = s.call("GET", path, Some(ADMIN), None).await;
        assert_eq!(
            (status, code(&body)),
            (400, "unknown_parameter"),
            "{path}: {body}"
        );
    }
    // An empty query string is no parameter.
    let (status, _) = s.call("GET", "/v1/nodes?", Some(ADMIN), None).await;
    assert_eq!(status, 200);
}
