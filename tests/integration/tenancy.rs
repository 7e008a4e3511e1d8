//! Tenants cannot hurt each other through nodes (issue "tenants cannot hurt each other",
//! finding 1): a node publishes only what placement put on it or what its tenants run, and a
//! user's own node serves that user alone. Each test is a finding's regression test.

use serde_json::{Value, json};

use crate::support::*;

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

async fn put(s: &Server, token: &str, path: &str, body: Value) -> (u16, Value) {
    s.call("PUT", path, Some(token), Some(body)).await
}

async fn stack(s: &Server, token: &str, user_stack: &str, yaml: &str) -> (u16, Value) {
    let path = format!("/v1/stacks/{user_stack}");
    s.call_raw("PUT", &path, Some(token), yaml.as_bytes().to_vec())
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_cannot_publish_names_in_a_declared_stack_it_was_not_given() {
    let s = Server::start(&[]);
    let t1 = s.add_node("n1", "10.0.0.1").await;
    let t2 = s.add_node("n2", "10.0.0.2").await;
    let yaml = "web:\n  image: x\n  ports: ['80:80']\n  tags: [one]\n";
    put(
        &s,
        ADMIN,
        "/v1/nodes/n1",
        json!({"address": "10.0.0.1", "tags": ["one"]}),
    )
    .await;
    let (status, body) = stack(&s, ADMIN, "honeniq/quickstart-ruby", yaml).await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = s.report("n1", &t1, "web-1", web(1)).await;
    assert_eq!(status, 201, "the placed node reports its container");

    // n2 tries to add a name of honeniq's stack: refused, naming the rule; DNS unchanged.
    let squat = json!({"service": "web", "address": "203.0.113.66", "ports": [{"container_port": 80, "host_port": 80}], "generation": 0});
    let (status, body) = s.report("n2", &t2, "web-99", squat).await;
    assert_eq!((status, code(&body)), (403, "not_assigned"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("only the node placement assigns"),
        "{body}"
    );
    let dns = s.dns();
    assert_eq!(
        dns.a("web.quickstart-ruby.honeniq.svc.cluster.test."),
        ["10.0.0.1"]
    );
    // n2 cannot report the placed name either (placement gave it to n1).
    let (status, _) = s.report("n2", &t2, "web-1", web(1)).await;
    assert_eq!(status, 409);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_reported_before_its_stack_existed_stops_answering_once_placed_elsewhere() {
    let s = Server::start(&[]);
    let t1 = s.add_node("n1", "10.0.0.1").await;
    let t3 = s.add_node("n3", "10.0.0.3").await;
    put(
        &s,
        ADMIN,
        "/v1/nodes/n3",
        json!({"address": "10.0.0.3", "tags": ["pay"]}),
    )
    .await;
    // Discovery-only (no stack declares it yet): n1 publishes honeniq/pay/api-1.
    let early = json!({"service": "api", "address": "203.0.113.77", "generation": 0});
    let (status, body) = put(&s, &t1, "/v1/nodes/n1/containers/honeniq/pay/api-1", early).await;
    assert_eq!(status, 201, "{body}");
    let dns = s.dns();
    assert_eq!(dns.a("api-1.pay.honeniq.cont.cluster.test."), ["203.0.113.77"]);

    // honeniq declares the stack; placement puts api-1 on n3: the early record stops answering.
    let (status, body) = stack(&s, ADMIN, "honeniq/pay", "api:\n  image: x\n  tags: [pay]\n").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["stack"]["containers"][0]["node"], "n3", "{body}");
    assert!(
        dns.a("api-1.pay.honeniq.cont.cluster.test.").is_empty(),
        "the squatted record is gone"
    );
    assert!(dns.a("api.pay.honeniq.svc.cluster.test.").is_empty());
    // n1 can no longer touch it; n3 fills it.
    let again = json!({"service": "api", "address": "203.0.113.77", "generation": 1});
    let (status, _) = put(&s, &t1, "/v1/nodes/n1/containers/honeniq/pay/api-1", again).await;
    assert_eq!(status, 409);
    let real = json!({"service": "api", "generation": 1});
    let (status, body) = put(&s, &t3, "/v1/nodes/n3/containers/honeniq/pay/api-1", real).await;
    assert!(matches!(status, 200 | 201), "{body}");
    assert_eq!(dns.a("api-1.pay.honeniq.cont.cluster.test."), ["10.0.0.3"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_users_own_node_serves_that_user_alone() {
    let s = Server::start(&[]);
    s.add_node("shared", "10.0.1.1").await;
    let (honeniq, zoe) = (s.user_token("honeniq").await, s.user_token("zoe").await);

    // honeniq registers a node with their own token: it is theirs.
    let (status, body) = put(&s, &honeniq, "/v1/nodes/mine", json!({"address": "10.0.2.1"})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["node"]["owner"], "honeniq");
    let mine = body["token"].as_str().expect("node token").to_owned();
    // Nobody else may change it, or open it to others; zoe does not even see it.
    let (status, body) = put(&s, &zoe, "/v1/nodes/mine", json!({"address": "10.0.2.9"})).await;
    assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");
    let (status, body) = put(
        &s,
        &honeniq,
        "/v1/nodes/other",
        json!({"address": "10.0.2.2", "tenants": ["zoe"]}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (_, list) = s.call("GET", "/v1/nodes", Some(&zoe), None).await;
    assert_eq!(list["nodes"].as_array().map(Vec::len), Some(0), "{list}");
    let (_, list) = s.call("GET", "/v1/nodes", Some(&honeniq), None).await;
    assert_eq!(list["nodes"][0]["name"], "mine", "{list}");

    // The node's heartbeat makes it live; placement uses it for honeniq, never for zoe.
    assert_eq!(
        s.call("POST", "/v1/nodes/mine/heartbeat", Some(&mine), None)
            .await
            .0,
        200
    );
    let spread = "web:\n  image: x\n  target_num_containers: 4\n  deployment_strategy: high_availability\n";
    let (status, body) = stack(&s, &honeniq, "honeniq/app", spread).await;
    assert_eq!(status, 201, "{body}");
    let nodes = |body: &Value| -> std::collections::BTreeSet<String> {
        body["stack"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["node"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(
        nodes(&body),
        ["mine".to_owned(), "shared".to_owned()].into(),
        "{body}"
    );
    let (status, body) = stack(&s, &zoe, "zoe/app", spread).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        nodes(&body),
        ["shared".to_owned()].into(),
        "zoe's stack stays off honeniq's node: {body}"
    );

    // Its token reports honeniq's discovery containers, never zoe's.
    let body = reports_honeniq_not_zoe(&s, "mine", &mine).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("may report containers of honeniq only"),
        "{body}"
    );
}

/// `node` (with `token`) reports honeniq's discovery container, and is refused zoe's: the
/// refusal's body.
async fn reports_honeniq_not_zoe(s: &Server, node: &str, token: &str) -> Value {
    let found = json!({"service": "cache", "generation": 1});
    let path = |user: &str| format!("/v1/nodes/{node}/containers/{user}/side/cache-1");
    let (status, _) = put(s, token, &path("honeniq"), found.clone()).await;
    assert_eq!(status, 201);
    let (status, body) = put(s, token, &path("zoe"), found).await;
    assert_eq!((status, code(&body)), (403, "not_a_tenant"), "{body}");
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_limits_a_platform_node_to_some_users() {
    let s = Server::start(&[]);
    let (status, body) = put(
        &s,
        ADMIN,
        "/v1/nodes/edge",
        json!({"address": "10.0.3.1", "tenants": ["honeniq"]}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().expect("token").to_owned();
    assert_eq!(body["node"]["tenants"], json!(["honeniq"]));
    reports_honeniq_not_zoe(&s, "edge", &token).await;
    let (status, body) = stack(&s, ADMIN, "zoe/app", "web:\n  image: x\n").await;
    assert_eq!((status, code(&body)), (422, "no_node_for_user"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_placed_elsewhere_can_still_be_withdrawn_by_its_old_node() {
    let s = Server::start(&[]);
    let t1 = s.add_node("n1", "10.0.0.1").await;
    s.add_node("n2", "10.0.0.2").await;
    put(
        &s,
        ADMIN,
        "/v1/nodes/n1",
        json!({"address": "10.0.0.1", "tags": ["one"]}),
    )
    .await;
    put(
        &s,
        ADMIN,
        "/v1/nodes/n2",
        json!({"address": "10.0.0.2", "tags": ["two"]}),
    )
    .await;
    let (status, _) = stack(
        &s,
        ADMIN,
        "honeniq/quickstart-ruby",
        "web:\n  image: x\n  tags: [one]\n",
    )
    .await;
    assert_eq!(status, 201);
    let path = "/v1/nodes/n1/containers/honeniq/quickstart-ruby/web-1";
    let (status, _) = put(&s, &t1, path, json!({"service": "web", "generation": 1})).await;
    assert_eq!(status, 201);
    // The service moves to n2 (generation 2). n1 still runs generation 1 and is in DNS.
    let (status, body) = stack(
        &s,
        ADMIN,
        "honeniq/quickstart-ruby",
        "web:\n  image: x\n  tags: [two]\n",
    )
    .await;
    assert_eq!(
        (status, body["stack"]["containers"][0]["node"].as_str()),
        (200, Some("n2")),
        "{body}"
    );
    let dns = s.dns();
    assert_eq!(
        dns.a("web.quickstart-ruby.honeniq.svc.cluster.test."),
        ["10.0.0.1"]
    );
    // n1 may take it out of DNS (drain) and stop it, but not bring it back.
    let (status, body) = put(
        &s,
        &t1,
        path,
        json!({"service": "web", "generation": 1, "ready": false}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(dns.a("web.quickstart-ruby.honeniq.svc.cluster.test.").is_empty());
    let (status, _) = put(
        &s,
        &t1,
        path,
        json!({"service": "web", "generation": 1, "ready": true}),
    )
    .await;
    assert_eq!(status, 409);
    let (status, body) = s
        .call("DELETE", &format!("{path}?generation=1"), Some(&t1), None)
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn privileged_options_need_an_admin_policy_for_the_user() {
    let s = Server::start(&["--privileged-users", "ops"]);
    s.add_node("n1", "10.0.0.1").await;
    let yaml = "tools:\n  image: x\n  privileged: true\n  volumes: ['/:/host']\n";
    let (status, body) = stack(&s, ADMIN, "honeniq/tools", yaml).await;
    assert_eq!((status, code(&body)), (400, "unsupported_key"), "{body}");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with("line 3:")
            && message.contains("privileged")
            && message.contains("--privileged-users"),
        "{message}"
    );
    let (status, body) = stack(&s, ADMIN, "ops/tools", yaml).await;
    assert_eq!(status, 201, "the policy allows it for ops: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn quotas_bound_what_one_user_may_ask_for() {
    let s = Server::start(&["--default-max-containers", "20", "--default-max-stacks", "2"]);
    for n in ["n1", "n2", "n3"] {
        s.add_node(n, "10.0.0.1").await;
    }
    let (status, body) = stack(
        &s,
        ADMIN,
        "honeniq/big",
        "web:\n  image: x\n  target_num_containers: 30\n",
    )
    .await;
    assert_eq!((status, code(&body)), (422, "quota_exceeded"), "{body}");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("at most 20 containers") && message.contains("needs 30"),
        "{message}"
    );

    // The finding's request (30 services × 10000, as a dry run) is refused before any planning.
    let huge: String = (0..30)
        .map(|i| format!("s{i}:\n  image: x\n  target_num_containers: 10000\n"))
        .collect();
    let started = std::time::Instant::now();
    let (status, body) = s
        .call_raw(
            "PUT",
            "/v1/stacks/honeniq/huge?dry_run=true",
            Some(ADMIN),
            huge.into_bytes(),
        )
        .await;
    assert_eq!((status, code(&body)), (422, "quota_exceeded"), "{body}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // An admin raises honeniq's limit; honeniq sees its limits and usage.
    let (status, body) = put(
        &s,
        ADMIN,
        "/v1/users/honeniq/limits",
        json!({"max_containers": 50}),
    )
    .await;
    assert_eq!(
        (status, &body["limits"]),
        (
            200,
            &json!({"max_containers": 50, "max_stacks": 2, "max_nodes": 20})
        ),
        "{body}"
    );
    let (status, _) = stack(
        &s,
        ADMIN,
        "honeniq/big",
        "web:\n  image: x\n  target_num_containers: 30\n",
    )
    .await;
    assert_eq!(status, 201);
    let token = s.user_token("honeniq").await;
    let (status, body) = s
        .call("GET", "/v1/users/honeniq/limits", Some(&token), None)
        .await;
    assert_eq!(
        (status, body["containers"].as_u64(), body["stacks"].as_u64()),
        (200, Some(30), Some(1)),
        "{body}"
    );
    let (status, _) = put(
        &s,
        &token,
        "/v1/users/honeniq/limits",
        json!({"max_containers": 5000}),
    )
    .await;
    assert_eq!(status, 403, "only an admin sets limits");
    // Scaling counts against the limit too; so does a third stack.
    let (status, body) = s
        .call(
            "PATCH",
            "/v1/stacks/honeniq/big/services/web",
            Some(&token),
            Some(json!({"target_num_containers": 60})),
        )
        .await;
    assert_eq!((status, code(&body)), (422, "quota_exceeded"), "{body}");
    assert_eq!(stack(&s, &token, "honeniq/two", "a:\n  image: x\n").await.0, 201);
    let (status, body) = stack(&s, &token, "honeniq/three", "a:\n  image: x\n").await;
    assert_eq!((status, code(&body)), (422, "quota_exceeded"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("at most 2 stacks"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_maximal_plan_does_not_stall_other_nodes() {
    let s = std::sync::Arc::new(Server::start(&["--node-ttl", "2", "--lease-check-ms", "100"]));
    let mut tokens = Vec::new();
    for i in 0..20 {
        tokens.push(s.add_node(&format!("n{i}"), &format!("10.0.1.{i}")).await);
    }
    let other = s.add_node("busy", "10.0.2.1").await;
    // Another node reports and heartbeats as fast as it can while the plan runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let (s, stop) = (s.clone(), stop.clone());
        tokio::spawn(async move {
            let mut slowest = std::time::Duration::ZERO;
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let started = std::time::Instant::now();
                let path = format!("/v1/nodes/busy/containers/zoe/side/c-{}", n % 50);
                let (status, _) = put(&s, &other, &path, json!({"service": "c", "generation": n})).await;
                assert!(status < 300, "{status}");
                slowest = slowest.max(started.elapsed());
            }
            (slowest, n)
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // The largest stack a user may declare by default: 1,000 containers over 10 services.
    let yaml: String = (0..10)
        .map(|i| format!("s{i}:\n  image: x\n  ports: ['80']\n  target_num_containers: 100\n  deployment_strategy: high_availability\n"))
        .collect();
    let started = std::time::Instant::now();
    let (status, body) = stack(&s, ADMIN, "honeniq/max", &yaml).await;
    let applied = started.elapsed();
    assert_eq!(status, 201, "{}", body["error"]);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (slowest, writes) = worker.await.expect("worker");
    eprintln!(
        "figure: maximal plan (1,000 containers on 20 nodes) applied in {applied:?}; another node's slowest write meanwhile {slowest:?} over {writes} writes"
    );
    let (_, busy) = s.call("GET", "/v1/nodes/busy", Some(ADMIN), None).await;
    assert_eq!(busy["node"]["state"], "live", "never declared lost");
    assert!(slowest < std::time::Duration::from_millis(500), "{slowest:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn closing_a_node_to_a_user_takes_their_containers_off_it() {
    let s = Server::start(&[]);
    let token = s.add_node("open", "10.0.4.1").await;
    s.add_node("other", "10.0.4.2").await;
    // zoe's discovery container on the open node answers ...
    let found = json!({"service": "cache", "generation": 1});
    let (status, _) = put(&s, &token, "/v1/nodes/open/containers/zoe/side/cache-1", found).await;
    assert_eq!(status, 201);
    // ... and so does a declared container placed there.
    let (status, body) = stack(&s, ADMIN, "zoe/app", "web:\n  image: x\n").await;
    assert_eq!(status, 201, "{body}");
    let node = body["stack"]["containers"][0]["node"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let dns = s.dns();
    assert_eq!(dns.a("cache-1.side.zoe.cont.cluster.test."), ["10.0.4.1"]);
    // The admin closes "open" to everyone but honeniq: zoe's discovery container leaves DNS,
    // and a declared container placed there moves to a node that still serves zoe.
    let (status, _) = put(
        &s,
        ADMIN,
        "/v1/nodes/open",
        json!({"address": "10.0.4.1", "tenants": ["honeniq"]}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(dns.a("cache-1.side.zoe.cont.cluster.test.").is_empty());
    let (_, now) = s.call("GET", "/v1/stacks/zoe/app", Some(ADMIN), None).await;
    assert_eq!(
        now["stack"]["containers"][0]["node"], "other",
        "moved from {node}: {now}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_registers_only_as_many_nodes_as_allowed() {
    let s = Server::start(&["--default-max-nodes", "2"]);
    let token = s.user_token("honeniq").await;
    for n in ["a", "b"] {
        let (status, body) = put(
            &s,
            &token,
            &format!("/v1/nodes/{n}"),
            json!({"address": "10.0.5.1"}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = put(&s, &token, "/v1/nodes/c", json!({"address": "10.0.5.1"})).await;
    assert_eq!((status, code(&body)), (422, "quota_exceeded"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("at most 2 nodes"),
        "{body}"
    );
    // Updating an own node is not a new one.
    let (status, _) = put(&s, &token, "/v1/nodes/a", json!({"address": "10.0.5.2"})).await;
    assert_eq!(status, 200);
}
