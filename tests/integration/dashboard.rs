//! The dashboard in a real browser: headless Chromium (Debian's), driven over its DevTools
//! protocol, logs in with a form, reads each page, and screenshots it into
//! `target/ui-screenshots/` (CI keeps them as artifacts). Also: a user's isolation, logout,
//! and forms that do not carry the session's CSRF token.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Ws;

use crate::stacks::run_assigned;
use crate::support::{ADMIN, Reaped, Server, peer};

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A headless Chromium and a DevTools connection to its one page.
struct Browser {
    _child: Reaped,
    page: Socket,
    next: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn launch(chromium: PathBuf) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let browser_url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("Chromium says where DevTools listens");
        let http_base = browser_url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .map(|host| format!("http://{host}"))
            .expect("a ws:// address");
        let mut page_url = None;
        for _ in 0..50 {
            let targets: Value = reqwest::get(format!("{http_base}/json/list"))
                .await
                .expect("list targets")
                .json()
                .await
                .expect("JSON");
            page_url = targets.as_array().and_then(|ts| {
                ts.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                    .map(str::to_owned)
            });
            if page_url.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (page, _) = tokio_tungstenite::connect_async(page_url.expect("a page target"))
            .await
            .expect("DevTools connection");
        Browser {
            _child: Reaped(child),
            page,
            next: 0,
            _profile: profile,
        }
    }

    /// Sends a DevTools command and waits for its result (events in between are skipped).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let command = json!({"id": id, "method": method, "params": params}).to_string();
        self.page.send(Ws::text(command)).await.expect("send");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let message = tokio::time::timeout_at(deadline, self.page.next())
                .await
                .unwrap_or_else(|_| panic!("{method}: no answer"))
                .expect("connection open")
                .expect("message");
            let Ws::Text(text) = message else { continue };
            let reply: Value = serde_json::from_str(&text).expect("JSON");
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page; its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        result["result"]["value"].clone()
    }

    /// Runs `action` (JavaScript that leaves the page: a click, a submit) and waits until a new
    /// page at `path` has loaded. The old page is marked first, so it is never mistaken for the
    /// new one.
    async fn act(&mut self, action: &str, path: &str) {
        self.eval(&format!("window.__left = true; {action}; true")).await;
        self.arrive(path).await;
    }

    /// Waits until a page other than the marked one has loaded, at `path`.
    async fn arrive(&mut self, path: &str) {
        let mut at = Value::Null;
        for _ in 0..200 {
            at = self
                .eval("window.__left === undefined && document.readyState === 'complete' ? location.pathname : ''")
                .await;
            if at == path {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let href = self.eval("location.href").await;
        panic!("never arrived at {path}; at {href} ({at})");
    }

    /// Opens `url` and waits for it to load at `path` (where a redirect may have taken it).
    async fn goto(&mut self, url: &str, path: &str) {
        self.eval("window.__left = true").await;
        self.call("Page.navigate", json!({"url": url})).await;
        self.arrive(path).await;
    }

    /// The text of the element `selector`, or null.
    async fn text(&mut self, selector: &str) -> String {
        let expression = format!("(document.querySelector({selector:?}) || {{}}).innerText || ''");
        self.eval(&expression)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn screenshot(&mut self, name: &str) {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("image data"))
            .expect("base64");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }

    /// Fills the login form with `token` and sends it; waits for the page at `then`.
    async fn log_in(&mut self, base: &str, token: &str, then: &str) {
        self.goto(&format!("{base}/ui/login"), "/ui/login").await;
        let fill = format!(
            "document.querySelector('#token').value = {token:?}; document.querySelector('#login button').click()"
        );
        self.act(&fill, then).await;
    }
}

const STACKFILE: &str = "web:\n  image: honeniq/quickstart-ruby\n  ports: ['80:80']\n  target_num_containers: 2\n\
                         worker:\n  image: honeniq/worker\n";

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_in_a_real_browser() {
    let Some(chromium) = peer("chromium", "chromium") else {
        return;
    };
    // Long leases: the nodes send no heartbeats, and Chromium may be slow to start on a busy machine.
    let s = Server::start(&["--allow-transfer", "127.0.0.0/8", "--node-ttl", "600"]);
    let n1 = s.add_node("node-1", "127.0.0.2").await;
    let n2 = s.add_node("node-2", "127.0.0.3").await;
    let honeniq = s.user_token("honeniq").await;
    let alice = s.user_token("alice").await;
    let (status, body) = s
        .call_raw(
            "PUT",
            "/v1/stacks/honeniq/quickstart-ruby",
            Some(&honeniq),
            STACKFILE.as_bytes().to_vec(),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = s
        .call_raw(
            "PUT",
            "/v1/stacks/alice/blog",
            Some(&alice),
            b"ghost:\n  image: ghost\n".to_vec(),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    run_assigned(&s, "node-1", &n1).await;
    run_assigned(&s, "node-2", &n2).await;
    // A secondary transfers the zone, so the zone page has one to show.
    let mut axfr = hickory_proto::op::Message::query();
    axfr.add_query(hickory_proto::op::Query::query(
        crate::support::fqdn("cluster.test."),
        hickory_proto::rr::RecordType::AXFR,
    ));
    assert!(s.dns().tcp_raw(&axfr.to_vec().expect("encode")).is_some());

    let mut b = Browser::launch(chromium).await;
    let base = s.api.clone();

    // Not logged in: every page leads to the login form.
    b.goto(&format!("{base}/ui/nodes"), "/ui/login").await;
    b.screenshot("login").await;
    b.log_in(&base, "not-a-token", "/ui/login").await;
    assert!(
        b.text("#error").await.contains("not known"),
        "a wrong token is refused"
    );

    // A user: their stack, its names, endpoints and counts; not alice's.
    b.log_in(&base, &honeniq, "/ui").await;
    let stacks = b.text("#stacks").await;
    for needle in [
        "quickstart-ruby",
        "web.quickstart-ruby.honeniq.svc.cluster.test.",
        "_80._tcp.web.quickstart-ruby.honeniq.svc.cluster.test.",
        "127.0.0.2:80",
        "127.0.0.3:80",
        "2 / 2",
    ] {
        assert!(stacks.contains(needle), "{needle:?} in {stacks}");
    }
    assert!(!stacks.contains("blog") && !stacks.contains("alice"), "{stacks}");
    assert_eq!(b.text("#who").await, "user honeniq");
    b.screenshot("stacks").await;

    b.goto(
        &format!("{base}/ui/stacks/honeniq/quickstart-ruby"),
        "/ui/stacks/honeniq/quickstart-ruby",
    )
    .await;
    let containers = b.text("#containers").await;
    for needle in [
        "web-1",
        "web-2",
        "worker-1",
        "node-1",
        "node-2",
        "running",
        "80/tcp → 80",
    ] {
        assert!(containers.contains(needle), "{needle:?} in {containers}");
    }
    assert!(b.text("#services").await.contains("honeniq/worker"));
    b.screenshot("stack").await;

    // A dry run that fits: every node's verdict, and nothing changes.
    let serial = s.dns().serial();
    b.act("document.querySelector('#service').value = 'worker'; document.querySelector('#target').value = '2'; document.querySelector('#dry-run button').click()", "/ui/stacks/honeniq/quickstart-ruby/dry-run").await;
    let verdicts = b.text("#verdicts").await;
    assert!(
        verdicts.contains("worker-2") && verdicts.contains("chosen"),
        "{verdicts}"
    );
    assert!(
        verdicts.contains("node-1") && verdicts.contains("node-2"),
        "{verdicts}"
    );
    b.screenshot("dry-run").await;
    // One that does not: a third web on fixed host port 80 with two nodes.
    b.act("document.querySelector('#service').value = 'web'; document.querySelector('#target').value = '3'; document.querySelector('#dry-run button').click()", "/ui/stacks/honeniq/quickstart-ruby/dry-run").await;
    let refusal = b.text("#refusal").await;
    assert!(
        refusal.contains("80/tcp") && refusal.contains("web-3"),
        "{refusal}"
    );
    b.screenshot("dry-run-refused").await;
    assert_eq!(s.dns().serial(), serial, "dry runs change nothing");

    // alice's stack does not exist for honeniq.
    b.goto(&format!("{base}/ui/stacks/alice/blog"), "/ui/stacks/alice/blog")
        .await;
    assert!(b.text("h1").await.contains("404"), "{}", b.text("main").await);
    // Platform nodes are the admin's.
    b.goto(&format!("{base}/ui/nodes"), "/ui/nodes").await;
    assert!(b.text("#no-nodes").await.contains("No nodes of yours"));

    // Log out: the session is gone.
    b.act("document.querySelector('.logout button').click()", "/ui/login")
        .await;
    b.goto(&format!("{base}/ui"), "/ui/login").await;

    // The admin: everyone's stacks, the nodes and their leases, the zone and its secondary.
    b.log_in(&base, ADMIN, "/ui").await;
    let stacks = b.text("#stacks").await;
    assert!(
        stacks.contains("quickstart-ruby") && stacks.contains("blog"),
        "{stacks}"
    );
    b.goto(&format!("{base}/ui/nodes"), "/ui/nodes").await;
    let nodes = b.text("#nodes").await;
    for needle in ["node-1", "127.0.0.2", "node-2", "live", " s"] {
        assert!(nodes.contains(needle), "{needle:?} in {nodes}");
    }
    b.screenshot("nodes").await;
    b.goto(&format!("{base}/ui/zone"), "/ui/zone").await;
    assert_eq!(b.text("#zone-serial").await, s.dns().serial().to_string());
    let secondaries = b.text("#secondaries").await;
    assert!(
        secondaries.contains("127.0.0.1") && secondaries.contains("AXFR"),
        "{secondaries}"
    );
    b.screenshot("zone").await;
}

/// The session cookie from a login by plain HTTP, as a browser would keep it.
async fn session(s: &Server, token: &str) -> String {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let resp = http
        .post(format!("{}/ui/login", s.api))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .await
        .expect("login");
    assert_eq!(resp.status(), 303);
    let cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a cookie")
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    cookie.split(';').next().expect("name=value").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_forms_need_the_sessions_csrf_token_and_revoked_tokens_end_sessions() {
    let s = Server::start(&[]);
    s.add_node("node-1", "127.0.0.2").await;
    let token = s.user_token("honeniq").await;
    let (status, _) = s
        .call_raw(
            "PUT",
            "/v1/stacks/honeniq/app",
            Some(&token),
            b"worker:\n  image: w\n".to_vec(),
        )
        .await;
    assert_eq!(status, 201);
    let cookie = session(&s, &token).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let page = http
        .get(format!("{}/ui/stacks/honeniq/app", s.api))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), 200);
    for header in ["content-security-policy", "x-content-type-options"] {
        assert!(page.headers().contains_key(header), "{header}");
    }
    let html = page.text().await.expect("html");
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the form's CSRF token")
        .to_owned();
    let post = |body: String, origin: Option<&'static str>| {
        let mut req = http
            .post(format!("{}/ui/stacks/honeniq/app/dry-run", s.api))
            .header("cookie", &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(origin) = origin {
            req = req.header("origin", origin);
        }
        req.send()
    };
    let ok = post(format!("csrf={csrf}&service=worker&target=2"), None)
        .await
        .expect("post");
    assert_eq!(ok.status(), 200);
    assert!(ok.text().await.expect("html").contains("id=\"verdicts\""));
    let forged = post("csrf=0000&service=worker&target=2".to_owned(), None)
        .await
        .expect("post");
    assert_eq!(forged.status(), 403, "a wrong CSRF token");
    let missing = post("service=worker&target=2".to_owned(), None)
        .await
        .expect("post");
    assert_eq!(missing.status(), 403, "no CSRF token");
    let foreign = post(
        format!("csrf={csrf}&service=worker&target=2"),
        Some("http://evil.example"),
    )
    .await
    .expect("post");
    assert_eq!(foreign.status(), 403, "a form from another site");

    // Revoking the user's tokens ends the session at once.
    let (status, _) = s
        .call("DELETE", "/v1/users/honeniq/tokens", Some(ADMIN), None)
        .await;
    assert_eq!(status, 200);
    let after = http
        .get(format!("{}/ui", s.api))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("page");
    assert_eq!(after.status(), 303);
    assert_eq!(
        after.headers().get("location").and_then(|v| v.to_str().ok()),
        Some("/ui/login")
    );
}
