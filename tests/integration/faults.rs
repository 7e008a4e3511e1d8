//! A failing disk under a real server: redb's file backend fails writes or syncs on command
//! (`store::faults`, driven through a control file). A failed commit acknowledges nothing,
//! `/readyz` says so, DNS keeps answering the last good zone, and once the disk takes writes
//! again they resume with nothing lost or duplicated, also across a crash. And a data
//! directory that cannot be written gets a clear error at start-up and is left as it was.

use std::path::Path;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::Value;

use crate::support::*;

fn cont(name: &str) -> String {
    format!("{name}.quickstart-ruby.honeniq.cont.cluster.test.")
}

/// The names of the containers the server knows on `node`, running or not.
async fn known(s: &Server, node: &str) -> Vec<String> {
    let (status, body) = s
        .call("GET", &format!("/v1/nodes/{node}/containers"), Some(ADMIN), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let mut names: Vec<String> = body["containers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

async fn readyz(s: &Server) -> (u16, Value) {
    s.call("GET", "/readyz", None, None).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_disk_acknowledges_nothing_and_writes_resume_when_it_clears() {
    for fault in ["write=eio", "sync=eio", "write=enospc"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let control = dir.path().join("faults");
        let env = [("STACKDNS_STORAGE_FAULTS", control.to_str().expect("utf-8 path"))];
        let s = Server::start_with_env(&data, &[], &env);
        let t = s.add_node("n1", "10.0.0.1").await;
        let (status, body) = s.report("n1", &t, "web-1", web(1)).await;
        assert_eq!(status, 201, "{body}");
        let serial = s.dns().serial();

        std::fs::write(&control, fault).expect("fault on");
        for name in ["web-2", "web-3"] {
            let (status, body) = s.report("n1", &t, name, web(1)).await;
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (500, Some("storage_failed")),
                "{fault}: {body}"
            );
        }
        let (status, body) = readyz(&s).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (503, Some("not_ready")),
            "{fault}: {body}"
        );
        // DNS answers the last good zone: what was acknowledged, nothing that was refused.
        assert_eq!(s.dns().serial(), serial, "{fault}");
        assert_eq!(s.dns().a(&cont("web-1")), vec!["10.0.0.1"]);
        let refused = s.dns().query(&cont("web-2"), RecordType::A);
        assert_eq!(refused.metadata.response_code, ResponseCode::NXDomain, "{fault}");

        // The disk takes writes again: ready by itself, and writes resume.
        std::fs::write(&control, "").expect("fault off");
        let ready = async {
            for _ in 0..100 {
                if readyz(&s).await.0 == 200 {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        };
        assert!(ready.await, "{fault}: never ready again:\n{}", s.log());
        let (status, body) = s.report("n1", &t, "web-4", web(1)).await;
        assert_eq!(status, 201, "{fault}: {body}");
        assert_eq!(s.dns().a(&cont("web-4")), vec!["10.0.0.1"]);
        assert_eq!(known(&s, "n1").await, ["web-1", "web-4"], "{fault}");
        if fault == "write=enospc" {
            assert!(s.log().contains("No space left on device"), "{}", s.log());
        }

        // A crash now loses nothing acknowledged and brings back nothing refused.
        s.kill();
        let s = Server::start_in(&data, &[], true);
        assert_eq!(
            known(&s, "n1").await,
            ["web-1", "web-4"],
            "{fault} after a restart"
        );
        assert_eq!(s.dns().a(&cont("web-4")), vec!["10.0.0.1"]);
    }
}

/// Makes `path` and what is in it read-only for the server: by mode, and, as root (whom
/// modes do not stop), by running the server as nobody.
fn read_only(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(path).expect("read dir").flatten() {
        std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o444)).expect("chmod");
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o555)).expect("chmod");
}

#[test]
fn a_read_only_data_directory_is_a_clear_error_at_start_and_stays_as_it_was() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let data = dir.path().join("data");
    let s = Server::start_in(&data, &[], true);
    assert_eq!(s.terminate().code(), Some(0));
    let db = data.join("stackdns.redb");
    let before = std::fs::read(&db).expect("the database");
    read_only(&data);

    // The binary and the zone file are copied next to the data, so that nobody can reach them
    // wherever the checkout is (under /root, say).
    let zone = dir.path().join("cluster.test.zone");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("zones/cluster.test.zone"),
        &zone,
    )
    .expect("zone");
    let binary = dir.path().join("stackdns");
    std::fs::copy(env!("CARGO_BIN_EXE_stackdns"), &binary).expect("binary");
    for path in [&zone, &binary] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let root = nix_is_root();
    let mut cmd = if root {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(binary);
        cmd
    } else {
        std::process::Command::new(binary)
    };
    let output = serve_once(&mut cmd, &data, &zone)
        .env("STACKDNS_ADMIN_TOKEN", ADMIN)
        .output()
        .expect("run stackdns");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "started on a read-only directory:\n{stderr}"
    );
    assert!(
        stderr.contains("stackdns.redb") && stderr.contains("Permission denied"),
        "the error names the file and the cause:\n{stderr}"
    );
    assert_eq!(
        std::fs::read(&db).expect("the database"),
        before,
        "the database was changed"
    );
    // Writable again, it starts and has everything it had.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let s = Server::start_in(&data, &[], true);
    assert_eq!(s.terminate().code(), Some(0));
}

fn nix_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
