//! Running under systemd: the server tells a `NOTIFY_SOCKET` it is ready once it answers, and
//! that it is stopping on SIGTERM; `dist/stackdns.service` passes `systemd-analyze verify`.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::support::*;

#[test]
fn ready_is_sent_once_it_answers_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let notify = path.display().to_string();
    let s = Server::start_with_env(&dir.path().join("data"), &[], &[("NOTIFY_SOCKET", &notify)]);
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("READY");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    assert!(
        ready.contains(&format!("STATUS=serving DNS on {}", s.dns)),
        "{ready}"
    );
    // Ready means answering.
    assert!(s.dns().serial() > 0);
    assert_eq!(s.terminate().code(), Some(0));
    let n = socket.recv(&mut buf).expect("STOPPING");
    assert_eq!(&buf[..n], b"STOPPING=1");
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let Some(analyze) = peer("systemd-analyze", "systemd") else {
        return;
    };
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dist/stackdns.service")).expect("unit");
    assert!(unit.contains("Type=notify"), "readiness by sd_notify");
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("stackdns.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/stackdns", env!("CARGO_BIN_EXE_stackdns")),
    )
    .expect("write");
    let output = std::process::Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.trim().is_empty(), "no warnings: {stderr}");
}
