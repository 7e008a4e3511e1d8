//! Stacks, placement and assignments through the API, and the seed scenario of issue 3.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

/// The README's quick-start Stackfile, then the same stack grown.
const FIRST: &str = include_str!("../data/quickstart/stackfile.yml");

const SECOND: &str = include_str!("../data/quickstart/stackfile-scaled.yml");

const STACK: &str = "/v1/stacks/honeniq/quickstart-ruby";

async fn put_stack(s: &Server, token: &str, yaml: &str, query: &str) -> (u16, Value) {
    s.call_raw(
        "PUT",
        &format!("{STACK}{query}"),
        Some(token),
        yaml.as_bytes().to_vec(),
    )
    .await
}

/// (name, node, host ports) of every container of the stack, sorted.
fn placed(body: &Value) -> Vec<(String, String, Vec<u64>)> {
    let mut out: Vec<_> = body["stack"]["containers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    let ports = c["ports"]
                        .as_array()
                        .map(|p| p.iter().filter_map(|p| p["host_port"].as_u64()).collect());
                    (
                        c["name"].as_str().unwrap_or_default().to_owned(),
                        c["node"].as_str().unwrap_or_default().to_owned(),
                        ports.unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Reports every assignment of `node` as running, the way an agent would.
pub(crate) async fn run_assigned(s: &Server, node: &str, token: &str) -> usize {
    let (status, body) = s
        .call("GET", &format!("/v1/nodes/{node}/assignments"), Some(token), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let list = body["assignments"].as_array().cloned().unwrap_or_default();
    let containers: Vec<Value> = list
        .iter()
        .map(|a| {
            json!({"user": a["user"], "stack": a["stack"], "name": a["name"], "service": a["service"],
                   "ports": a["ports"], "generation": a["generation"]})
        })
        .collect();
    s.replace_containers(node, token, containers).await;
    list.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_scenario() {
    let s = Server::start(&[]);
    let t_do = s.add_node("node-do", "95.85.30.162").await;
    let t_ec2 = s.add_node("node-ec2", "52.193.37.165").await;

    let (status, body) = put_stack(&s, ADMIN, FIRST, "").await;
    assert_eq!(status, 201, "{body}");
    let first = placed(&body);
    assert_eq!(
        first.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
        ["redis-1", "web-1"]
    );

    // Scale web to 2: one per node, because both publish host port 80.
    let web_path = format!("{STACK}/services/web");
    let scale = |n: u64| {
        s.call(
            "PATCH",
            &web_path,
            Some(ADMIN),
            Some(json!({"target_num_containers": n})),
        )
    };
    let (status, body) = scale(2).await;
    assert_eq!(status, 200, "{body}");
    let webs: Vec<_> = placed(&body)
        .into_iter()
        .filter(|c| c.0.starts_with("web"))
        .collect();
    assert_eq!(webs.len(), 2);
    assert_ne!(
        webs[0].1, webs[1].1,
        "web-1 and web-2 on different nodes: {webs:?}"
    );
    assert!(webs.contains(&first[1]), "web-1 stayed where it was");

    // Scale to 3: refused with the explanation, and nothing changes.
    let serial = s.dns().serial();
    let (status, body) = scale(3).await;
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    for needle in ["web-3", "80/tcp", "node-do", "node-ec2", "\"80\""] {
        assert!(message.contains(needle), "{message:?} should mention {needle}");
    }
    assert_eq!(s.dns().serial(), serial, "nothing changed");
    let (_, now) = s.call("GET", STACK, Some(ADMIN), None).await;
    assert_eq!(placed(&now).iter().filter(|c| c.0.starts_with("web")).count(), 2);

    // The second Stackfile: web goes dynamic (3 containers), haproxy takes host port 80.
    let (status, body) = put_stack(&s, ADMIN, SECOND, "").await;
    assert_eq!(status, 200, "{body}");
    let second = placed(&body);
    let webs: Vec<_> = second.iter().filter(|c| c.0.starts_with("web")).collect();
    assert_eq!(webs.len(), 3, "{second:?}");
    for w in &webs {
        assert!(w.2.len() == 1 && w.2[0] >= 32768, "dynamic host port for {w:?}");
    }
    let haproxy: Vec<_> = second.iter().filter(|c| c.0.starts_with("haproxy")).collect();
    assert_eq!(haproxy.len(), 1);
    assert_eq!(haproxy[0].2, vec![80]);

    // Each node's assignments say so; the agents run them; DNS follows.
    let n_do = run_assigned(&s, "node-do", &t_do).await;
    let n_ec2 = run_assigned(&s, "node-ec2", &t_ec2).await;
    assert_eq!(n_do + n_ec2, second.len());
    let srv = s.dns().query(
        "_80._tcp.web.quickstart-ruby.honeniq.svc.cluster.test.",
        hickory_proto::rr::RecordType::SRV,
    );
    let mut ports: Vec<u16> = srv
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            hickory_proto::rr::RData::SRV(v) => Some(v.port),
            _ => None,
        })
        .collect();
    ports.sort();
    let mut want: Vec<u16> = webs.iter().map(|w| w.2[0] as u16).collect();
    want.sort();
    assert_eq!(
        ports, want,
        "SRV lists all three web containers with their host ports"
    );
    let (_, view) = s.call("GET", STACK, Some(ADMIN), None).await;
    let web = view["stack"]["services"]
        .as_array()
        .and_then(|v| v.iter().find(|x| x["name"] == "web").cloned())
        .expect("web");
    assert_eq!(
        (web["running"].as_u64(), web["target_num_containers"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(web["endpoint"], "web.quickstart-ruby.honeniq.svc.cluster.test.");
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_is_idempotent_and_dry_runs_change_nothing() {
    let s = Server::start(&[]);
    s.add_node("node-do", "10.0.0.1").await;
    let (status, _) = put_stack(&s, ADMIN, FIRST, "?dry_run=true").await;
    assert_eq!(status, 200);
    let (status, _) = s.call("GET", STACK, Some(ADMIN), None).await;
    assert_eq!(status, 404, "a dry run creates nothing");
    let (status, first) = put_stack(&s, ADMIN, FIRST, "").await;
    assert_eq!(status, 201);
    let serial = s.dns().serial();
    let (status, again) = put_stack(&s, ADMIN, FIRST, "").await;
    assert_eq!(status, 200);
    assert_eq!(placed(&first), placed(&again));
    assert_eq!(
        again["serial"].as_u64(),
        Some(u64::from(serial)),
        "no serial bump"
    );
    // Known services answer NODATA before any container runs.
    let reply = s.dns().query(
        "web.quickstart-ruby.honeniq.svc.cluster.test.",
        hickory_proto::rr::RecordType::A,
    );
    assert_eq!(
        reply.metadata.response_code,
        hickory_proto::op::ResponseCode::NoError
    );
    assert!(reply.answers.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn stackfile_errors_and_user_scope() {
    let s = Server::start(&[]);
    s.add_node("node-do", "10.0.0.1").await;
    let (status, body) = put_stack(&s, ADMIN, "web:\n  image: x\n  colour: blue\n", "").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("colour"),
        "{body}"
    );
    let (status, body) = put_stack(&s, ADMIN, "web:\n  image: x\n  links: [db]\n", "").await;
    assert_eq!(status, 400, "{body}");

    let (_, t) = s
        .call("POST", "/v1/users/honeniq/tokens", Some(ADMIN), None)
        .await;
    let mine = t["token"].as_str().expect("token").to_owned();
    let (_, t) = s
        .call("POST", "/v1/users/someone-else/tokens", Some(ADMIN), None)
        .await;
    let theirs = t["token"].as_str().expect("token").to_owned();
    assert_eq!(
        put_stack(&s, &mine, FIRST, "").await.0,
        201,
        "a user applies their own stack"
    );
    assert_eq!(s.call("GET", STACK, Some(&mine), None).await.0, 200);
    for (method, path) in [
        ("GET", STACK.to_owned()),
        ("DELETE", STACK.to_owned()),
        ("GET", "/v1/stacks/honeniq".to_owned()),
    ] {
        let (status, body) = s.call(method, &path, Some(&theirs), None).await;
        if path.ends_with("honeniq") {
            assert_eq!(
                body["stacks"].as_array().map(Vec::len),
                Some(0),
                "no stacks shown to another user"
            );
        } else {
            assert_eq!(
                status, 404,
                "{method} {path}: another user's stack does not exist for them"
            );
        }
    }
    assert_eq!(put_stack(&s, &theirs, FIRST, "").await.0, 404);
    assert_eq!(s.call("DELETE", STACK, Some(&mine), None).await.0, 200);
    assert_eq!(s.call("GET", STACK, Some(&mine), None).await.0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn assignments_block_until_they_change_and_follow_lost_nodes() {
    let s = std::sync::Arc::new(Server::start(&["--node-ttl", "1", "--lease-check-ms", "100"]));
    let t_do = s.add_node("node-do", "10.0.0.1").await;
    let t_ec2 = s.add_node("node-ec2", "10.0.0.2").await;
    let dynamic = "web:\n  image: x\n  ports: ['80']\n  target_num_containers: 2\n  deployment_strategy: high_availability\n";
    assert_eq!(put_stack(&s, ADMIN, dynamic, "").await.0, 201);
    let (_, list) = s
        .call("GET", "/v1/nodes/node-do/assignments", Some(&t_do), None)
        .await;
    let index = list["index"].as_u64().expect("index");
    assert_eq!(list["assignments"].as_array().map(Vec::len), Some(1), "{list}");

    // A blocking query returns as soon as the node's assignments change.
    let waiter = {
        let (s, t) = (s.clone(), t_do.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let path = format!("/v1/nodes/node-do/assignments?index={index}&wait=20s");
            let (_, body) = s.call("GET", &path, Some(&t), None).await;
            (started.elapsed(), body)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // node-ec2 stops heartbeating; node-do keeps going; web-2 moves to node-do.
    let moved = eventually(Duration::from_secs(5), || {
        let hb = s.call("POST", "/v1/nodes/node-do/heartbeat", Some(&t_do), None);
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(hb));
        waiter.is_finished()
    });
    assert!(moved, "the blocking query returned");
    let (elapsed, body) = waiter.await.expect("task");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert!(body["index"].as_u64() > Some(index));
    assert_eq!(
        body["assignments"].as_array().map(Vec::len),
        Some(2),
        "both web containers now on node-do: {body}"
    );
    let (_, ec2) = s
        .call("GET", "/v1/nodes/node-ec2/assignments", Some(&t_ec2), None)
        .await;
    assert_eq!(
        ec2["assignments"].as_array().map(Vec::len),
        Some(0),
        "the lost node runs nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn blocking_queries_end_when_the_server_shuts_down() {
    let s = Server::start(&[]);
    let t = s.add_node("node-do", "10.0.0.1").await;
    let (_, list) = s
        .call("GET", "/v1/nodes/node-do/assignments", Some(&t), None)
        .await;
    let index = list["index"].as_u64().expect("index");
    let url = format!("{}/v1/nodes/node-do/assignments?index={index}&wait=120s", s.api);
    let waiter = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let resp = reqwest::Client::new().get(url).bearer_auth(t).send().await;
        let status = resp.map(|r| r.status().as_u16()).ok();
        (started.elapsed(), status)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "the query blocks while nothing changes");
    let stopped = std::time::Instant::now();
    let exit = tokio::task::block_in_place(|| s.terminate());
    assert!(exit.success(), "clean exit: {exit:?}");
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopped.elapsed()
    );
    let (elapsed, status) = waiter.await.expect("task");
    assert_eq!(status, Some(200), "answered with what there is, not cut off");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stacks_and_assignments_survive_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let s = Server::start_in(&data, &[], true);
    let t = s.add_node("node-do", "10.0.0.1").await;
    s.add_node("node-ec2", "10.0.0.2").await;
    let (status, before) = put_stack(&s, ADMIN, SECOND, "").await;
    assert_eq!(status, 201, "{before}");
    let (_, assigned) = s
        .call("GET", "/v1/nodes/node-do/assignments", Some(&t), None)
        .await;
    s.kill();

    let s = Server::start_in(&data, &[], true);
    let (status, after) = s.call("GET", STACK, Some(ADMIN), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        placed(&before),
        placed(&after),
        "same containers, nodes and ports"
    );
    let (_, again) = s
        .call("GET", "/v1/nodes/node-do/assignments", Some(&t), None)
        .await;
    assert_eq!(assigned["assignments"], again["assignments"]);
    assert_eq!(
        put_stack(&s, ADMIN, SECOND, "").await.0,
        200,
        "re-applying after a restart is a no-op"
    );
    let (_, same) = s.call("GET", STACK, Some(ADMIN), None).await;
    assert_eq!(placed(&before), placed(&same));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_node_services_follow_nodes_as_they_join_and_leave() {
    let s = Server::start(&[]);
    s.add_node("node-do", "10.0.0.1").await;
    let agent = "agent:\n  image: 'tutum/agent'\n  deployment_strategy: every_node\n";
    let (status, body) = put_stack(&s, ADMIN, agent, "").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(placed(&body).len(), 1);
    let t = s.add_node("node-ec2", "10.0.0.2").await;
    let (_, list) = s
        .call("GET", "/v1/nodes/node-ec2/assignments", Some(&t), None)
        .await;
    assert_eq!(
        list["assignments"].as_array().map(Vec::len),
        Some(1),
        "a joining node gets its copy: {list}"
    );
    let (status, body) = s
        .call(
            "PATCH",
            &format!("{STACK}/services/agent"),
            Some(ADMIN),
            Some(json!({"target_num_containers": 5})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("not_scalable")),
        "{body}"
    );
    assert_eq!(
        s.call("DELETE", "/v1/nodes/node-ec2", Some(ADMIN), None).await.0,
        200
    );
    let (_, view) = s.call("GET", STACK, Some(ADMIN), None).await;
    assert_eq!(placed(&view).len(), 1, "a deleted node's copy goes: {view}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_placed_again_after_its_tombstone_went_passes_the_floor() {
    let s = Server::start(&["--tombstone-retention", "1s"]);
    let t = s.add_node("node-do", "10.0.0.1").await;
    let one = "web:\n  image: 'honeniq/quickstart-ruby:latest'\n";
    let generation = |body: &Value| body["assignments"][0]["generation"].as_u64();
    let (status, body) = put_stack(&s, ADMIN, one, "").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(run_assigned(&s, "node-do", &t).await, 1);
    let (_, first) = s
        .call("GET", "/v1/nodes/node-do/assignments", Some(&t), None)
        .await;
    assert_eq!(generation(&first), Some(1), "{first}");
    // The stack goes; its agent stops the container: a tombstone at generation 1 on node-do.
    assert_eq!(s.call("DELETE", STACK, Some(ADMIN), None).await.0, 200);
    let path = "/v1/nodes/node-do/containers/honeniq/quickstart-ruby/web-1";
    let (status, body) = s.call("DELETE", path, Some(&t), None).await;
    assert_eq!(status, 200, "{body}");
    let cont = "web-1.quickstart-ruby.honeniq.cont.cluster.test.";
    let gone = || {
        s.dns()
            .query(cont, hickory_proto::rr::RecordType::A)
            .metadata
            .response_code
            == hickory_proto::op::ResponseCode::NXDomain
    };
    assert!(eventually(Duration::from_secs(10), gone), "the tombstone stayed");
    // Declared again, the name starts over at generation 1, at the node's floor: the floor
    // lets the assignment itself through, and nothing else at or below it.
    let (status, body) = put_stack(&s, ADMIN, one, "").await;
    assert_eq!(status, 201, "{body}");
    let (_, again) = s
        .call("GET", "/v1/nodes/node-do/assignments", Some(&t), None)
        .await;
    assert_eq!(generation(&again), Some(1), "{again}");
    let stale = json!({"service": "web", "generation": 0});
    let (status, body) = s.report("node-do", &t, "web-1", stale).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(run_assigned(&s, "node-do", &t).await, 1);
    assert_eq!(s.dns().a(cont), vec!["10.0.0.1"]);
}
