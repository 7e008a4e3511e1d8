//! The agent under health checks and faults, with real processes on 127.0.0.10 and up (the
//! seed scenario owns .2 and .3): each fault gets a clear log line and a state `stack ps`
//! shows, and nothing else on the node is disturbed.

use std::time::Duration;

use crate::fleet::*;
use crate::support::Server;

/// A tiny HTTP server on $HOST:$PORT whose /healthz fails while the file `unhealthy` exists
/// in its working directory.
const SERVE: &str = r#"["python3", "-c", "import http.server, os\nclass H(http.server.BaseHTTPRequestHandler):\n    def do_GET(self):\n        sick = self.path == '/healthz' and os.path.exists('unhealthy')\n        self.send_response(503 if sick else 200)\n        self.end_headers()\n    def log_message(self, *a):\n        pass\nhttp.server.HTTPServer((os.environ['HOST'], int(os.environ['PORT'])), H).serve_forever()"]"#;

fn state_of(server: &Server, stack: &str, name: &str) -> (String, String) {
    let ps = ps(server, stack);
    ps["stack"]["containers"]
        .as_array()
        .and_then(|list| list.iter().find(|c| c["name"] == name))
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (s("state"), s("detail"))
        })
        .unwrap_or_default()
}

fn up(server: &Server, dir: &std::path::Path, stack: &str, text: &str) {
    let file = dir.join(format!("{}.yml", stack.replace('/', "-")));
    std::fs::write(&file, text).expect("stackfile");
    admin(
        server,
        &["stack", "up", stack, "-f", file.to_str().expect("path")],
    );
}

#[test]
fn health_checks_move_a_container_out_of_dns_and_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&["--ttl", "1"]);
    let agent = Agent::register_and_start(&server, dir.path(), "node-h", "127.0.0.10", &[]);
    let stackfile = format!(
        "web:\n  image: x\n  ports: ['8080']\n  command: {SERVE}\n  health_check:\n    http: /healthz\n    interval: 200ms\n    healthy_threshold: 2\n    unhealthy_threshold: 2\n"
    );
    up(&server, dir.path(), "hana/shop", &stackfile);
    let svc = "web.shop.hana.svc.cluster.test";
    assert!(
        wait_for(Duration::from_secs(15), || dig(&server, svc, "A")
            == ["127.0.0.10"])
        .is_some(),
        "healthy web enters DNS: {:?}\n{}",
        ps(&server, "hana/shop"),
        agent.log()
    );
    let sick = agent.data.join("containers/hana/shop/web-1/unhealthy");
    std::fs::write(&sick, "").expect("make it sick");
    assert!(
        wait_for(Duration::from_secs(10), || dig(&server, svc, "A").is_empty()).is_some(),
        "unhealthy web leaves DNS"
    );
    let (state, detail) = state_of(&server, "hana/shop", "web-1");
    assert_eq!(state, "unready");
    assert!(
        detail.contains("health check failed: GET /healthz answered 503"),
        "{detail}"
    );
    assert!(
        agent.log().contains("health check fails; out of DNS"),
        "a clear log line"
    );
    std::fs::remove_file(&sick).expect("heal it");
    assert!(
        wait_for(Duration::from_secs(10), || dig(&server, svc, "A")
            == ["127.0.0.10"])
        .is_some(),
        "it comes back once healthy"
    );
    assert_eq!(state_of(&server, "hana/shop", "web-1").0, "running");
}

#[test]
fn faults_get_a_clear_state_and_disturb_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("server");
    // Fixed ports, so the server can come back where the agent looks for it.
    let free = |proto: &str| -> u16 {
        match proto {
            "udp" => std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()),
            _ => std::net::TcpListener::bind("127.0.0.1:0").and_then(|s| s.local_addr()),
        }
        .expect("a free port")
        .port()
    };
    let api = format!("127.0.0.1:{}", free("tcp"));
    let args = [
        "--ttl",
        "1",
        "--node-ttl",
        "2",
        "--lease-check-ms",
        "100",
        "--api",
        api.as_str(),
    ];
    let server = Server::start_in(&data, &args, true);
    let mut agent = Agent::register_and_start(&server, dir.path(), "node-f", "127.0.0.11", &[]);

    // Port 9999 on the node is already taken by something else.
    let squat = std::net::TcpListener::bind("127.0.0.11:9999").expect("squat the port");
    let stackfile = format!(
        "steady:\n  image: x\n  command: sleep infinity\n\
         quitter:\n  image: x\n  command: [sh, -c, 'echo giving up >&2; exit 3']\n\
         squatter:\n  image: x\n  ports: ['9999:9999']\n  command: {SERVE}\n\
         stubborn:\n  image: x\n  command: [sh, -c, 'trap \"\" TERM; while :; do sleep 0.1; done']\n"
    );
    up(&server, dir.path(), "fay/faults", &stackfile);
    let steady_pid = || {
        processes_under(&agent.data)
            .into_iter()
            .filter(|(_, name)| name == "steady-1")
            .map(|(pid, _)| pid)
            .min()
    };
    assert!(
        wait_for(Duration::from_secs(10), || steady_pid().is_some()).is_some(),
        "{}",
        agent.log()
    );
    let pid = steady_pid();

    // A command that exits at once, and one that cannot bind its port: stopped, with why.
    let stopped = |name: &str, says: &str| {
        wait_for(Duration::from_secs(10), || {
            let (state, detail) = state_of(&server, "fay/faults", name);
            state == "stopped" && detail.contains(says)
        })
        .is_some()
    };
    assert!(
        stopped("quitter-1", "exited with status 3: giving up"),
        "{:?}",
        ps(&server, "fay/faults")
    );
    assert!(
        stopped("squatter-1", "Address already in use"),
        "{:?}",
        ps(&server, "fay/faults")
    );
    drop(squat);

    // A container that ignores SIGTERM is killed after the grace period.
    admin(&server, &["service", "scale", "fay/faults/stubborn", "0"]);
    let killed = wait_for(Duration::from_secs(15), || {
        running_count(&agent.data, "stubborn-1") == 0
    });
    assert!(killed.is_some(), "stubborn-1 is killed");
    let said = wait_for(Duration::from_secs(5), || {
        agent
            .log()
            .contains("ignored SIGTERM for the grace period; killed")
    });
    assert!(said.is_some(), "{}", agent.log());

    // stackdns goes away and comes back: the containers keep running; the agent resyncs.
    let resyncs = agent
        .log()
        .matches("resynchronised the node's containers")
        .count();
    server.terminate();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(steady_pid(), pid, "steady-1 keeps running while the API is away");
    let server = Server::start_in(&data, &args, true);
    assert!(
        wait_for(Duration::from_secs(15), || agent
            .log()
            .matches("resynchronised the node's containers")
            .count()
            > resyncs
            && dig(&server, "steady-1.faults.fay.cont.cluster.test", "A")
                == ["127.0.0.11"])
        .is_some(),
        "{}",
        agent.log()
    );
    assert_eq!(steady_pid(), pid, "and was not restarted");

    // A revoked (rotated) node token: the agent says so, keeps its containers, and takes the
    // new token as soon as its file has it.
    let token = admin(&server, &["node", "token", "node-f"]);
    let refused = wait_for(Duration::from_secs(10), || {
        agent.log().contains("refuses the node token")
    });
    assert!(refused.is_some(), "{}", agent.log());
    assert_eq!(steady_pid(), pid, "still running");
    std::fs::write(dir.path().join("node-f.token"), token.trim()).expect("new token");
    let back = wait_for(Duration::from_secs(15), || {
        agent.log().contains("read a new node token")
            && dig(&server, "steady-1.faults.fay.cont.cluster.test", "A") == ["127.0.0.11"]
    });
    assert!(back.is_some(), "{}", agent.log());
    assert_eq!(steady_pid(), pid, "never disturbed");

    admin(&server, &["stack", "rm", "fay/faults"]);
    assert!(
        wait_for(Duration::from_secs(15), || processes_under(&agent.data)
            .is_empty())
        .is_some()
    );
    agent.kill();
}

#[test]
fn an_agent_with_a_wrong_name_or_token_says_so_and_exits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&[]);
    let token = admin(&server, &["node", "add", "node-w", "--address", "127.0.0.12"]);
    let token_file = dir.path().join("token");
    for (node, written, says) in [
        ("node-x", token.trim(), "node-x"),
        ("node-w", "not-the-token", "the bearer token is not known"),
    ] {
        std::fs::write(&token_file, written).expect("token file");
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_stackdns"))
            .args(["agent", "--api", &server.api, "--node", node, "--data"])
            .arg(dir.path().join("data"))
            .arg("--token-file")
            .arg(&token_file)
            .output()
            .expect("run the agent");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{node}: {stderr}");
        assert!(
            stderr.contains("the API refuses node") && stderr.contains(says),
            "{stderr}"
        );
    }
}

#[test]
fn restart_policies_restart_with_a_pause_and_give_up_when_told() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&[]);
    let agent = Agent::register_and_start(&server, dir.path(), "node-r", "127.0.0.13", &[]);
    let stackfile = "flaky:\n  image: x\n  restart: on-failure:2\n  command: [sh, -c, 'echo crash >&2; exit 1']\n\
                     sturdy:\n  image: x\n  restart: always\n  command: [sh, -c, 'sleep 0.2; exit 0']\n";
    up(&server, dir.path(), "rita/restarts", stackfile);
    // on-failure:2: two restarts (1 s, then 2 s apart), then it stays stopped, saying why.
    let gave_up = wait_for(Duration::from_secs(15), || {
        let (state, detail) = state_of(&server, "rita/restarts", "flaky-1");
        state == "stopped" && detail.contains("exited with status 1: crash")
    });
    assert!(
        gave_up.is_some(),
        "{:?}\n{}",
        ps(&server, "rita/restarts"),
        agent.log()
    );
    let restarts = agent
        .log()
        .lines()
        .filter(|l| l.contains("restarting after a pause") && l.contains("flaky-1"))
        .count();
    assert_eq!(restarts, 2, "{}", agent.log());
    // always: restarted even after a clean exit.
    let again = wait_for(Duration::from_secs(10), || {
        agent
            .log()
            .lines()
            .filter(|l| l.contains("restarting after a pause") && l.contains("sturdy-1"))
            .count()
            >= 2
    });
    assert!(again.is_some(), "{}", agent.log());
    admin(&server, &["stack", "rm", "rita/restarts"]);
    assert!(
        wait_for(Duration::from_secs(15), || processes_under(&agent.data)
            .is_empty())
        .is_some()
    );
}
