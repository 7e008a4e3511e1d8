//! `stackdns serve --config FILE` with the real binary: the file's keys take effect, the
//! environment and flags win over them, and an unknown key stops the start with its name.

use hickory_proto::rr::RecordType;

use crate::support::*;

async fn svc_ttl(s: &Server) -> u32 {
    let token = s.add_node("node-1", "10.0.0.1").await;
    assert_eq!(s.report("node-1", &token, "web-1", web(1)).await.0, 201);
    let answer = s
        .dns()
        .query("web.quickstart-ruby.honeniq.svc.cluster.test", RecordType::A);
    answer.answers.first().expect("an address").ttl
}

#[tokio::test(flavor = "multi_thread")]
async fn the_files_keys_apply_and_the_environment_wins_over_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("stackdns.toml");
    std::fs::write(&file, "ttl = 7\nnode_ttl = 60\nmax-answers = 0\n").expect("write");
    let config = file.display().to_string();
    let s = Server::start(&["--config", &config]);
    assert_eq!(svc_ttl(&s).await, 7, "ttl from the file");
    drop(s);
    let s = Server::start_with_env(
        &dir.path().join("data-2"),
        &["--config", &config],
        &[("STACKDNS_TTL", "9")],
    );
    assert_eq!(svc_ttl(&s).await, 9, "the environment wins");
    drop(s);
    let s = Server::start_in(
        &dir.path().join("data-3"),
        &["--config", &config, "--ttl", "11"],
        true,
    );
    assert_eq!(svc_ttl(&s).await, 11, "the flag wins");
}

#[test]
fn an_unknown_key_stops_the_start_with_its_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("stackdns.toml");
    std::fs::write(&file, "ttl = 5\nallow-tranfser = [\"10.0.0.0/8\"]\n").expect("write");
    let config = file.display().to_string();
    let (code, stderr) = start_fails(&dir.path().join("data"), &["--config", &config]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "config file {}: unknown key \"allow-tranfser\"",
            file.display()
        )),
        "{stderr}"
    );
    assert!(!dir.path().join("data").exists(), "nothing was created");
}

/// `log-format = "json"` from the file: every line stackdns writes is one JSON object.
#[test]
fn json_logs_are_one_object_per_line() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("stackdns.toml");
    std::fs::write(&file, "log-format = \"json\"\n").expect("write");
    let config = file.display().to_string();
    let mut child = spawn_once(
        &dir.path().join("data"),
        &["--config", &config],
        &[("STACKDNS_LOG", "info")],
    );
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = Vec::new();
    for line in std::io::BufReader::new(stderr).lines() {
        let line = line.expect("a line");
        let done = line.contains("listening dns=");
        lines.push(line);
        if done || lines.len() > 100 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines.last().is_some_and(|l| l.contains("listening dns=")),
        "{lines:#?}"
    );
    for line in &lines {
        let object: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            object["timestamp"].is_string() && object["level"].is_string(),
            "{line}"
        );
        assert!(object["fields"]["message"].is_string(), "{line}");
    }
}
