//! The command-line client against a real server, its human output pinned by a golden file
//! (`tests/golden/cli.txt`; `UPDATE_GOLDEN=1 cargo test cli::` rewrites it after a deliberate
//! change). Tokens, serials and heartbeat ages vary from run to run and are masked.

use crate::fleet::cli;
use crate::support::{ADMIN, Server};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/cli.txt");
const FIRST: &str = "tests/data/quickstart/stackfile.yml";

/// Masks what differs between runs.
fn mask(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut words: Vec<String> = Vec::new();
        for word in line.split(' ') {
            let hex = word.len() == 64 && word.bytes().all(|b| b.is_ascii_hexdigit());
            let age =
                word.ends_with('s') && word[..word.len() - 1].parse::<f64>().is_ok() && line.contains(" ago");
            words.push(if hex {
                "<token>".to_owned()
            } else if age {
                "<age>".to_owned()
            } else {
                word.to_owned()
            });
        }
        let line = words.join(" ");
        // "(serial 12)" and "serial": 12
        let mut line = line;
        for marker in ["serial ", "\"serial\": "] {
            if let Some(at) = line.find(marker) {
                let end = at + marker.len();
                let rest: String = line[end..].chars().skip_while(char::is_ascii_digit).collect();
                line = format!("{}<n>{rest}", &line[..end]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[test]
fn human_output_matches_the_golden_file() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut transcript = String::new();
    let mut run = |token: &str, args: &[&str]| -> String {
        let result = cli(&server, token, args);
        transcript.push_str(&format!("$ stackdns {}\n", args.join(" ")));
        transcript.push_str(&mask(&result.stdout));
        if !result.stderr.is_empty() {
            transcript.push_str(&format!("[stderr]\n{}", mask(&result.stderr)));
        }
        transcript.push_str(&format!("[exit {}]\n\n", result.code));
        result.stdout
    };
    let root = env!("CARGO_MANIFEST_DIR");
    let first = format!("{root}/{FIRST}");
    let node_token = run(
        ADMIN,
        &[
            "node",
            "add",
            "node-do",
            "--address",
            "95.85.30.162",
            "--label",
            "region=eu",
            "--tag",
            "web",
        ],
    );
    assert_eq!(node_token.trim().len(), 64, "the token alone on stdout");
    run(ADMIN, &["node", "add", "node-ec2", "--address", "52.193.37.165"]);
    run(ADMIN, &["node", "add", "node-ec2", "--address", "52.193.37.166"]);
    run(ADMIN, &["node", "ls"]);
    run(ADMIN, &["stack", "up", "honeniq/quickstart-ruby", "-f", &first]);
    run(ADMIN, &["stack", "ls"]);
    run(ADMIN, &["stack", "ps", "honeniq/quickstart-ruby"]);
    run(
        ADMIN,
        &[
            "service",
            "scale",
            "honeniq/quickstart-ruby/web",
            "2",
            "--dry-run",
        ],
    );
    run(ADMIN, &["service", "scale", "honeniq/quickstart-ruby/web", "2"]);
    run(ADMIN, &["service", "scale", "honeniq/quickstart-ruby/web", "3"]);
    let user_token = run(ADMIN, &["user", "token", "honeniq"]);
    run(user_token.trim(), &["stack", "ls"]);
    run(user_token.trim(), &["node", "ls"]);
    run(node_token.trim(), &["stack", "ls", "honeniq"]);
    run(ADMIN, &["lookup", "node-do.node"]);
    run(ADMIN, &["lookup", "web.quickstart-ruby.honeniq.svc", "SRV"]);
    run(ADMIN, &["lookup", "nope.node"]);
    run(ADMIN, &["stack", "ls", "--json"]);
    run(ADMIN, &["stack", "ps", "honeniq"]);
    let missing = dir.path().join("missing.yml");
    run(
        ADMIN,
        &[
            "stack",
            "up",
            "honeniq/other",
            "-f",
            missing.to_str().expect("path"),
        ],
    );
    run(ADMIN, &["user", "revoke", "honeniq"]);
    run(ADMIN, &["stack", "rm", "honeniq/quickstart-ruby"]);
    run(ADMIN, &["node", "rm", "node-ec2"]);
    run(ADMIN, &["node", "ls"]);
    let unreachable = cli(&server, ADMIN, &["node", "ls", "--api", "http://127.0.0.1:9"]);
    assert_eq!(unreachable.code, 3, "an unreachable API: {unreachable:?}");
    assert!(
        unreachable
            .stderr
            .contains("cannot reach the API at http://127.0.0.1:9"),
        "{unreachable:?}"
    );
    // The temp path of the missing Stackfile differs per run.
    let transcript = transcript.replace(missing.to_str().expect("path"), "<missing.yml>");
    let transcript = transcript.replace(root, "<repo>");

    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(std::path::Path::new(GOLDEN).parent().expect("dir")).expect("mkdir");
        std::fs::write(GOLDEN, &transcript).expect("write golden");
        return;
    }
    let golden = std::fs::read_to_string(GOLDEN).unwrap_or_default();
    if golden != transcript {
        let first_difference = golden
            .lines()
            .zip(transcript.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| format!("line {}:\n  golden: {a}\n  now:    {b}", i + 1))
            .unwrap_or_else(|| "one is a prefix of the other".to_owned());
        panic!(
            "CLI output differs from {GOLDEN} ({first_difference}); if intended, run with UPDATE_GOLDEN=1\n\n{transcript}"
        );
    }
}
