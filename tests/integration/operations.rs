//! What an operator sees: the metrics, the OpenAPI description, Prometheus service discovery
//! (with a real Prometheus scraping a container found through it).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::RecordType;
use serde_json::{Value, json};

use crate::support::{ADMIN, Ask, Reaped, Server, fqdn, free_port, peer};

const SVC: &str = "web.quickstart-ruby.honeniq.svc.cluster.test.";

/// The value of the series `series` (name and labels exactly as written) in `text`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

/// `count` containers web-1… of service web on `node`, port 80 published on host port 8000+i;
/// with `own_addresses`, web-i has the address 10.1.0.i (else the node's).
async fn run_webs(s: &Server, node: &str, token: &str, count: u16, own_addresses: bool) {
    let containers: Vec<Value> = (1..=count)
        .map(|i| {
            let mut c = json!({"user": "honeniq", "stack": "quickstart-ruby", "name": format!("web-{i}"),
                "service": "web", "generation": 1,
                "ports": [{"container_port": 80, "host_port": 8000 + i, "protocol": "tcp"}]});
            if own_addresses {
                c["address"] = json!(format!("10.1.0.{i}"));
            }
            c
        })
        .collect();
    s.replace_containers(node, token, containers).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_what_dns_and_the_api_did() {
    let s = Server::start(&["--node-ttl", "3", "--lease-check-ms", "100"]);
    let token = s.add_node("node-1", "127.0.0.2").await;
    // node-1 keeps its lease; node-2 sends no heartbeat, so its lease lapses within 3 s.
    let beating = {
        let (url, token) = (format!("{}/v1/nodes/node-1/heartbeat", s.api), token.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            loop {
                let _ = http.post(&url).bearer_auth(&token).send().await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    s.add_node("node-2", "127.0.0.3").await;
    run_webs(&s, "node-1", &token, 40, true).await;
    let dns = s.dns();
    for _ in 0..5 {
        dns.ask(SVC, RecordType::A, Ask::default());
    }
    // 40 addresses do not fit 512 bytes: truncated over UDP without EDNS.
    let tc = dns.ask(
        SVC,
        RecordType::A,
        Ask {
            edns: None,
            tcp: false,
        },
    );
    assert!(tc.metadata.truncation);
    for _ in 0..2 {
        dns.ask(
            "nope.cluster.test.",
            RecordType::A,
            Ask {
                edns: Some(1232),
                tcp: true,
            },
        );
    }
    // An AXFR from an address the ACL does not allow (loopback is not in it by default).
    let mut axfr = Message::query();
    axfr.add_query(Query::query(fqdn("cluster.test."), RecordType::AXFR));
    let refused = dns.tcp_raw(&axfr.to_vec().expect("encode")).expect("a reply");
    assert_eq!(refused[3] & 0xF, 5, "REFUSED");
    // Placement refuses a third container on fixed host port 80 with two nodes.
    let (status, body) = s
        .call_raw(
            "PUT",
            "/v1/stacks/honeniq/blog",
            Some(ADMIN),
            b"web:\n  image: nginx\n  ports: [\"80:80\"]\n  target_num_containers: 3\n".to_vec(),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("port_conflict")),
        "{body}"
    );
    let mut text = String::new();
    for _ in 0..100 {
        text = s.scrape().await;
        if value(&text, "stackdns_lease_expiries_total").is_some_and(|n| n >= 1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    beating.abort();
    for (series, expected) in [
        ("stackdns_dns_requests_total{transport=\"udp\",qtype=\"A\"}", None),
        (
            "stackdns_dns_responses_total{transport=\"tcp\",qtype=\"A\",rcode=\"NXDOMAIN\"}",
            Some(2.0),
        ),
        (
            "stackdns_dns_responses_total{transport=\"tcp\",qtype=\"AXFR\",rcode=\"REFUSED\"}",
            Some(1.0),
        ),
        ("stackdns_dns_truncated_total{transport=\"udp\"}", Some(1.0)),
        ("stackdns_dns_truncated_total{transport=\"tcp\"}", Some(0.0)),
        // At least node-2's (node-1 keeps its lease unless the machine stalls for 3 s).
        ("stackdns_lease_expiries_total", None),
        (
            "stackdns_placement_refusals_total{code=\"port_conflict\"}",
            Some(1.0),
        ),
        (
            "stackdns_http_requests_total{route=\"/v1/nodes/{node}/containers\",method=\"PUT\",status=\"200\"}",
            Some(1.0),
        ),
        (
            "stackdns_http_requests_total{route=\"/v1/stacks/{user}/{stack}\",method=\"PUT\",status=\"422\"}",
            Some(1.0),
        ),
        ("stackdns_nodes{state=\"lost\"}", None),
    ] {
        let got = value(&text, series);
        let at_least = if series.starts_with("stackdns_dns_requests") {
            6.0
        } else {
            1.0
        };
        match expected {
            Some(want) => assert_eq!(got, Some(want), "{series} in\n{text}"),
            None => assert!(got.is_some_and(|v| v >= at_least), "{series}: {got:?} in\n{text}"),
        }
    }
    // The 40-address answer is counted between 512 and 1232 bytes, the truncated one below 64.
    let udp_le = |le: &str| {
        value(
            &text,
            &format!("stackdns_dns_response_size_bytes_bucket{{transport=\"udp\",le=\"{le}\"}}"),
        )
    };
    assert!(udp_le("64").is_some_and(|n| n >= 1.0), "{text}");
    assert!(udp_le("1232") > udp_le("512"), "{text}");
    // Two writes (the node, the containers) and the lease expiry were published; each write's
    // latency from queue to publication is in the histogram.
    let visible = value(&text, "stackdns_write_visible_seconds_count").unwrap_or(0.0);
    assert!(visible >= 3.0, "{text}");
    assert!(value(&text, "stackdns_commit_duration_seconds_count").unwrap_or(0.0) >= 3.0);
    assert!(value(&text, "stackdns_write_visible_seconds_bucket{le=\"+Inf\"}") == Some(visible));
    // Route labels are path templates, never the names in a path.
    assert!(!text.contains("route=\"/v1/nodes/node-1"), "{text}");
    // Every family says what it is.
    for family in [
        "stackdns_dns_requests_total",
        "stackdns_dns_responses_total",
        "stackdns_dns_response_size_bytes",
        "stackdns_write_visible_seconds",
        "stackdns_commit_writes",
        "stackdns_http_requests_total",
    ] {
        assert!(text.contains(&format!("# HELP {family} ")), "HELP {family}");
        assert!(text.contains(&format!("# TYPE {family} ")), "TYPE {family}");
    }
}

/// A placeholder for each path parameter, so every path can be requested.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|part| if part.starts_with('{') { "x1" } else { part })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_description_matches_the_routes_and_their_methods() {
    let s = Server::start(&[]);
    let http = reqwest::Client::new();
    let resp = http
        .get(format!("{}/v1/openapi.json", s.api))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 200, "served without a token");
    let doc: Value = resp.json().await.expect("JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    let routed: BTreeSet<&str> = stackdns::api::paths().into_iter().collect();
    assert_eq!(paths.keys().map(String::as_str).collect::<BTreeSet<_>>(), routed);
    for (path, item) in paths {
        let url = format!("{}{}", s.api, concrete(path));
        for method in ["GET", "PUT", "POST", "PATCH", "DELETE"] {
            let described = item.get(method.to_lowercase()).is_some();
            let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
            // No token: a described operation is routed (401, or its answer if it needs none),
            // anything else on the path is 405.
            let status = http.request(m, &url).send().await.expect("request").status();
            if described {
                assert!(status != 404 && status != 405, "{method} {path}: {status}");
            } else {
                assert_eq!(status, 405, "{method} {path} is not described, so not routed");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn service_discovery_lists_running_endpoints_scoped_by_token() {
    let s = Server::start(&[]);
    let node = s.add_node("node-1", "127.0.0.2").await;
    run_webs(&s, "node-1", &node, 2, false).await;
    let honeniq = s.user_token("honeniq").await;
    let alice = s.user_token("alice").await;

    let (status, groups) = s.call("GET", "/v1/sd/prometheus", Some(&honeniq), None).await;
    assert_eq!(status, 200, "{groups}");
    let groups = groups.as_array().expect("target groups").clone();
    assert_eq!(groups.len(), 2, "{groups:?}");
    assert_eq!(groups[0]["targets"], json!(["127.0.0.2:8001"]));
    let labels: BTreeMap<String, String> =
        serde_json::from_value(groups[0]["labels"].clone()).expect("labels");
    assert_eq!(labels["user"], "honeniq");
    assert_eq!(labels["stack"], "quickstart-ruby");
    assert_eq!(labels["service"], "web");
    assert_eq!(labels["container"], "web-1");
    assert_eq!(labels["node"], "node-1");
    assert_eq!(labels["__meta_stackdns_container_port"], "80");
    assert_eq!(
        labels["__meta_stackdns_fqdn"],
        "web-1.quickstart-ruby.honeniq.cont.cluster.test."
    );

    let (_, all) = s.call("GET", "/v1/sd/prometheus", Some(ADMIN), None).await;
    assert_eq!(all.as_array().map(Vec::len), Some(2), "the admin sees everyone's");
    let (_, none) = s.call("GET", "/v1/sd/prometheus", Some(&alice), None).await;
    assert_eq!(none, json!([]), "another user sees none of them");
    let (status, _) = s.call("GET", "/v1/sd/prometheus", Some(&node), None).await;
    assert_eq!(status, 403, "not for a node token");
    let (status, _) = s.call("GET", "/v1/sd/prometheus", None, None).await;
    assert_eq!(status, 401);
    let (_, other_port) = s
        .call("GET", "/v1/sd/prometheus?port=9100", Some(ADMIN), None)
        .await;
    assert_eq!(other_port, json!([]));
    let (status, body) = s
        .call("GET", "/v1/sd/prometheus?colour=red", Some(ADMIN), None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("unknown_parameter"))
    );
    for bad in ["port=http", "port=0", "port=70000"] {
        let path = format!("/v1/sd/prometheus?{bad}");
        let (status, body) = s.call("GET", &path, Some(ADMIN), None).await;
        let code = body["error"]["code"].as_str();
        assert_eq!((status, code), (400, Some("invalid_value")), "{bad}");
    }

    // A stopped container leaves the targets.
    let (status, body) = s
        .call(
            "DELETE",
            "/v1/nodes/node-1/containers/honeniq/quickstart-ruby/web-1?generation=2",
            Some(&node),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, groups) = s.call("GET", "/v1/sd/prometheus", Some(&honeniq), None).await;
    assert_eq!(groups.as_array().map(Vec::len), Some(1), "{groups}");
    assert_eq!(groups[0]["labels"]["container"], "web-2");
}

/// A container's metrics endpoint: answers every request with one Prometheus sample.
fn metrics_endpoint(addr: &str) -> u16 {
    let listener = TcpListener::bind(addr).expect("bind the container's port");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 4096];
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = stream.read(&mut request);
            let body = "# TYPE demo_orders_total counter\ndemo_orders_total 42\n";
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_discovers_a_container_and_scrapes_it() {
    let Some(prometheus) = peer("prometheus", "prometheus") else {
        return;
    };
    let s = Server::start(&[]);
    let node = s.add_node("node-1", "127.0.0.2").await;
    let port = metrics_endpoint("127.0.0.2:0");
    let report = json!({"service": "shop", "generation": 1,
        "ports": [{"container_port": 9100, "host_port": port, "protocol": "tcp"},
                  {"container_port": 80, "host_port": free_port(), "protocol": "tcp"}]});
    let (status, body) = s.report("node-1", &node, "shop-1", report).await;
    assert!(status == 200 || status == 201, "{body}");
    let token = s.user_token("honeniq").await;

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: platform\n    http_sd_configs:\n\
             \x20     - url: {}/v1/sd/prometheus?port=9100\n        refresh_interval: 1s\n\
             \x20       authorization:\n          type: Bearer\n          credentials: {token}\n",
            s.api
        ),
    )
    .expect("config");
    let web = format!("127.0.0.1:{}", free_port());
    let _prometheus = Reaped(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let http = reqwest::Client::new();
    let query = |q: &'static str| {
        let (http, web) = (http.clone(), web.clone());
        async move {
            let resp = http
                .get(format!("http://{web}/api/v1/query?query={q}"))
                .send()
                .await
                .ok()?;
            let body: Value = resp.json().await.ok()?;
            body["data"]["result"].as_array().cloned()
        }
    };
    let mut found = None;
    for _ in 0..60 {
        if let Some(result) = query("demo_orders_total").await
            && let Some(sample) = result.first()
        {
            found = Some(sample.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let sample = found.expect("Prometheus scraped the container found through service discovery");
    let metric = &sample["metric"];
    assert_eq!(sample["value"][1], "42");
    assert_eq!(
        metric["instance"],
        format!("127.0.0.2:{port}"),
        "only the 9100 endpoint"
    );
    for (label, want) in [
        ("user", "honeniq"),
        ("stack", "quickstart-ruby"),
        ("service", "shop"),
        ("container", "shop-1"),
        ("node", "node-1"),
        ("job", "platform"),
    ] {
        assert_eq!(metric[label], want, "{label} in {metric}");
    }
    let targets: Value = http
        .get(format!("http://{web}/api/v1/targets"))
        .send()
        .await
        .expect("targets")
        .json()
        .await
        .expect("JSON");
    let active = targets["data"]["activeTargets"]
        .as_array()
        .expect("active targets");
    assert_eq!(active.len(), 1, "{active:?}");
    assert_eq!(active[0]["health"], "up");
}
