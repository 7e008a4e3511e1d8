//! Property: every endpoint, with every role's token, and any body or path (random bytes, random
//! JSON built from the API's own field names, valid bodies with one field replaced, bad names),
//! is answered without a 5xx and without the server falling over, and a refused request
//! (4xx) changes nothing stored: the serial and a dump of everything readable are the same
//! before and after it.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};

use crate::support::*;

/// The field names the API's bodies use, so random JSON reaches past "unknown field".
const FIELDS: &[&str] = &[
    "address",
    "labels",
    "tags",
    "capacity",
    "memory_mb",
    "cpus",
    "tenants",
    "service",
    "ports",
    "container_port",
    "host_port",
    "protocol",
    "generation",
    "ready",
    "detail",
    "containers",
    "user",
    "stack",
    "name",
    "target_num_containers",
    "max_containers",
    "max_stacks",
    "max_nodes",
];

/// Every route, with `{}` where a name goes.
const ROUTES: &[(&str, &str)] = &[
    ("PUT", "/v1/nodes/{}"),
    ("GET", "/v1/nodes"),
    ("GET", "/v1/nodes/{}"),
    ("DELETE", "/v1/nodes/{}"),
    ("POST", "/v1/nodes/{}/token"),
    ("POST", "/v1/nodes/{}/heartbeat"),
    ("PUT", "/v1/nodes/{}/containers/{}/{}/{}"),
    ("DELETE", "/v1/nodes/{}/containers/{}/{}/{}"),
    ("PUT", "/v1/nodes/{}/containers"),
    ("GET", "/v1/nodes/{}/containers"),
    ("GET", "/v1/nodes/{}/assignments"),
    ("POST", "/v1/users/{}/tokens"),
    ("DELETE", "/v1/users/{}/tokens"),
    ("PUT", "/v1/users/{}/limits"),
    ("GET", "/v1/users/{}/limits"),
    ("PUT", "/v1/stacks/{}/{}"),
    ("GET", "/v1/stacks/{}/{}"),
    ("DELETE", "/v1/stacks/{}/{}"),
    ("GET", "/v1/stacks"),
    ("GET", "/v1/stacks/{}"),
    ("PATCH", "/v1/stacks/{}/{}/services/{}"),
    ("GET", "/v1/info"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v1/sd/prometheus"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/ui/stacks/{}/{}"),
    ("POST", "/ui/stacks/{}/{}/dry-run"),
    ("POST", "/ui/login"),
    ("POST", "/v1/nodes"),
    ("GET", "/v1/nope"),
];

/// Names for the path: the ones that exist, valid ones that do not, and invalid ones.
const NAMES: &[&str] = &[
    "n1",
    "honeniq",
    "quickstart-ruby",
    "web",
    "web-1",
    "other",
    "n2",
    "Web",
    "a_b",
    "-x",
    "%00",
    "%2e%2e",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "",
    "x%20y",
];

/// Query strings, none of which can make a blocking query wait long.
const QUERIES: &[&str] = &[
    "",
    "?dry_run",
    "?dry_run=maybe",
    "?generation=3",
    "?generation=-1",
    "?generation=99999999999999999999",
    "?detail=%00",
    "?index=0&wait=0s",
    "?index=x",
    "?wait=1ms&index=1",
    "?bogus=1",
    "?index=1&index=2",
    "?port=80&service=web",
    "?port=x",
];

fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![3 => prop::sample::select(FIELDS).prop_map(str::to_owned), 1 => "[a-z_]{1,8}"];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e20f64..1e20).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        prop::sample::select(NAMES).prop_map(Value::from),
        prop::sample::select(&["10.0.0.9", "::1", "tcp", "udp", "300.1.1.1", "80"][..]).prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 5, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A body: nothing, random bytes, random JSON, a valid body with one field replaced, or a
/// Stackfile with random values.
fn body() -> impl Strategy<Value = Option<Vec<u8>>> {
    let valid = prop_oneof![
        Just(json!({"address": "10.0.0.9"})),
        Just(
            json!({"service": "web", "generation": 2, "ports": [{"container_port": 80, "host_port": 80, "protocol": "tcp"}]})
        ),
        Just(
            json!({"containers": [{"user": "honeniq", "stack": "quickstart-ruby", "name": "web-2", "service": "web", "generation": 1}]})
        ),
        Just(json!({"target_num_containers": 2})),
        Just(json!({"max_containers": 5, "max_stacks": 1, "max_nodes": 1})),
    ];
    let mutated = (valid, prop::sample::select(FIELDS), json_value()).prop_map(|(mut v, field, value)| {
        if let Some(o) = v.as_object_mut() {
            o.insert(field.to_owned(), value);
        }
        Some(serde_json::to_vec(&v).expect("json"))
    });
    let stackfile = ("[a-z]{1,6}", json_value(), 0u32..20).prop_map(|(service, value, n)| {
        Some(format!("{service}:\n  image: x\n  target_num_containers: {n}\n  ports: {value}\n").into_bytes())
    });
    prop_oneof![
        1 => Just(None),
        2 => prop::collection::vec(any::<u8>(), 0..48).prop_map(Some),
        3 => json_value().prop_map(|v| Some(serde_json::to_vec(&v).expect("json"))),
        4 => mutated,
        2 => stackfile,
    ]
}

#[derive(Debug, Clone)]
struct Request {
    method: &'static str,
    path: String,
    role: usize,
    body: Option<Vec<u8>>,
}

fn request() -> impl Strategy<Value = Request> {
    (
        prop::sample::select(ROUTES),
        prop::collection::vec(prop::sample::select(NAMES), 4),
        prop::sample::select(QUERIES),
        0usize..ROLES,
        body(),
    )
        .prop_map(|((method, template), names, query, role, body)| {
            let mut path = String::new();
            let mut names = names.into_iter();
            for (i, part) in template.split("{}").enumerate() {
                if i > 0 {
                    path.push_str(names.next().unwrap_or("x"));
                }
                path.push_str(part);
            }
            Request {
                method,
                path: path + query,
                role,
                body,
            }
        })
}

/// No token, a bad one, admin, node n1, user honeniq, user other.
const ROLES: usize = 6;

/// Everything a refused request must leave as it was: the serial and every listing, without
/// the fields that move with the clock.
async fn dump(s: &Server) -> Value {
    let mut out = serde_json::Map::new();
    for path in [
        "/v1/info",
        "/v1/nodes",
        "/v1/nodes/n1/containers",
        "/v1/stacks",
        "/v1/users/honeniq/limits",
        "/v1/stacks/honeniq/quickstart-ruby",
    ] {
        let (status, mut body) = s.call("GET", path, Some(ADMIN), None).await;
        strip_clock(&mut body);
        out.insert(path.to_owned(), json!({"status": status, "body": body}));
    }
    Value::Object(out)
}

fn strip_clock(v: &mut Value) {
    match v {
        Value::Object(o) => {
            o.remove("last_heartbeat_seconds_ago");
            o.values_mut().for_each(strip_clock);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_clock),
        _ => {}
    }
}

#[test]
fn any_request_is_answered_without_a_5xx_and_a_refused_one_changes_nothing() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = Server::start(&["--node-ttl", "3600"]);
    let tokens: Vec<Option<String>> = runtime.block_on(async {
        let node = server.add_node("n1", "10.0.0.1").await;
        server.report("n1", &node, "web-1", web(1)).await;
        let (_, user) = server
            .call("POST", "/v1/users/honeniq/tokens", Some(ADMIN), None)
            .await;
        let (_, other) = server
            .call("POST", "/v1/users/other/tokens", Some(ADMIN), None)
            .await;
        let stack = "web:\n  image: x\n  target_num_containers: 1\n";
        let (status, body) = server
            .call_raw(
                "PUT",
                "/v1/stacks/honeniq/quickstart-ruby",
                Some(ADMIN),
                stack.as_bytes().to_vec(),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        vec![
            None,
            Some("not-a-token".to_owned()),
            Some(ADMIN.to_owned()),
            Some(node),
            user["token"].as_str().map(str::to_owned),
            other["token"].as_str().map(str::to_owned),
        ]
    });
    let mut runner = TestRunner::new(Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    });
    let (refused, accepted) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    runner
        .run(&request(), |req| {
            runtime.block_on(async {
                let token = tokens[req.role].as_deref();
                let before = dump(&server).await;
                let (status, reply) = server
                    .call_raw(req.method, &req.path, token, req.body.clone().unwrap_or_default())
                    .await;
                prop_assert!(status < 500, "{req:?} -> {status} {reply}\n{}", server.log());
                let (alive, _) = server.call("GET", "/healthz", None, None).await;
                prop_assert_eq!(alive, 200, "the server stopped answering after {:?}", req);
                if status >= 400 {
                    refused.set(refused.get() + 1);
                    let after = dump(&server).await;
                    prop_assert_eq!(
                        &before,
                        &after,
                        "{:?} was refused ({}) but changed the state",
                        req,
                        status
                    );
                } else {
                    accepted.set(accepted.get() + 1);
                }
                Ok::<(), TestCaseError>(())
            })
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let (refused, accepted) = (refused.get(), accepted.get());
    eprintln!("API properties: {refused} refused requests changed nothing, {accepted} accepted");
    assert!(
        refused > 200 && accepted > 20,
        "{refused} refused, {accepted} accepted"
    );
}
