//! The docker runtime against a real engine: Debian's dockerd (docker.io), started by the test
//! in a temp dir with no bridge and no iptables, and an image built here (`docker import` of a
//! busybox-static rootfs: no registry is reachable). Containers use host networking and bind
//! `$HOST:$PORT` on 127.0.0.20, so nothing leaves loopback. Runs as root, as CI does.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::fleet::*;
use crate::support::Server;

const IMAGE: &str = "stackdns-test/busybox:1";

/// A dockerd of the test's own, stopped when dropped.
struct Engine {
    child: Child,
    socket: PathBuf,
}

impl Engine {
    fn start(dir: &Path) -> Engine {
        let socket = dir.join("docker.sock");
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.join("root"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dockerd (docker.io) is installed; .ci/run installs it");
        let engine = Engine { child, socket };
        let up = wait_for(Duration::from_secs(30), || engine.docker(&["version"]).is_ok());
        assert!(up.is_some(), "dockerd did not come up");
        engine
    }

    /// Runs the docker CLI against this engine.
    fn docker(&self, args: &[&str]) -> Result<String, String> {
        let output = Command::new("docker")
            .env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// Builds the test image from Debian's busybox-static.
    fn build_image(&self, dir: &Path) {
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).expect("rootfs");
        std::fs::create_dir_all(rootfs.join("www")).expect("rootfs");
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static is installed");
        for tool in ["sh", "httpd", "sleep", "echo"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(tool)).expect("link");
        }
        let tar = dir.join("rootfs.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("tar");
        assert!(status.success());
        let imported = self.docker(&["import", tar.to_str().expect("path"), IMAGE]);
        assert!(imported.is_ok(), "{imported:?}");
    }

    /// Our containers: name → id.
    fn containers(&self) -> Vec<(String, String)> {
        let out = self
            .docker(&[
                "ps",
                "-a",
                "--filter",
                "label=stackdns.node",
                "--format",
                "{{.Names}} {{.ID}}",
            ])
            .unwrap_or_default();
        let mut list: Vec<(String, String)> = out
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(n, i)| (n.to_owned(), i.to_owned()))
            .collect();
        list.sort();
        list
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        for (name, _) in self.containers() {
            let _ = self.docker(&["rm", "-f", &name]);
        }
        // SIGTERM lets it unmount its layers; then make sure it is gone.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let stopped = wait_for(Duration::from_secs(15), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if stopped.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn docker_runtime_runs_labels_adopts_and_stops_containers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::start(dir.path());
    engine.build_image(dir.path());
    let server = Server::start(&["--ttl", "1"]);
    let socket = engine.socket.to_str().expect("path").to_owned();
    let flags = [
        "--runtime",
        "docker",
        "--docker-socket",
        socket.as_str(),
        "--docker-network",
        "host",
    ];
    let mut agent = Agent::register_and_start(&server, dir.path(), "node-dk", "127.0.0.20", &flags);
    let stackfile = dir.path().join("stackfile.yml");
    std::fs::write(
        &stackfile,
        format!(
            "web:\n  image: {IMAGE}\n  ports: ['8080']\n  target_num_containers: 2\n  \
             command: [/bin/sh, -c, 'echo \"$STACKDNS_CONTAINER\" > /www/index.html && exec /bin/httpd -f -p \"$HOST:$PORT\" -h /www']\n  \
             health_check: {{http: /, interval: 300ms, healthy_threshold: 1}}\n"
        ),
    )
    .expect("stackfile");
    admin(
        &server,
        &[
            "stack",
            "up",
            "dora/boxes",
            "-f",
            stackfile.to_str().expect("path"),
        ],
    );

    let srv = "_8080._tcp.web.boxes.dora.svc.cluster.test";
    let both = wait_for(Duration::from_secs(30), || dig(&server, srv, "SRV").len() == 2);
    assert!(both.is_some(), "{:?}\n{}", ps(&server, "dora/boxes"), agent.log());
    assert_eq!(
        dig(&server, "web.boxes.dora.svc.cluster.test", "A"),
        ["127.0.0.20"]
    );
    for record in dig(&server, srv, "SRV") {
        // "0 1 PORT web-N.boxes.dora.cont.cluster.test."
        let fields: Vec<&str> = record.split(' ').collect();
        let (port, target) = (fields[2], fields[3]);
        let name = target.split('.').next().unwrap_or_default();
        assert_eq!(
            get(&format!("http://127.0.0.20:{port}/")).as_deref(),
            Ok(name),
            "{record}"
        );
    }

    // Labelled with who they are.
    let label = |container: &str, key: &str| {
        engine
            .docker(&[
                "inspect",
                "--format",
                &format!("{{{{index .Config.Labels \"{key}\"}}}}"),
                container,
            ])
            .unwrap_or_default()
    };
    let web1 = "stackdns-node-dk-dora-boxes-web-1";
    assert_eq!(label(web1, "stackdns.container"), "web-1");
    assert_eq!(label(web1, "stackdns.user"), "dora");
    assert_eq!(label(web1, "stackdns.generation"), "1");

    // The agent dies and comes back: it adopts the same containers, starts nothing twice.
    let before = engine.containers();
    assert_eq!(before.len(), 2, "{before:?}");
    agent.kill();
    agent.start();
    let adopted = wait_for(Duration::from_secs(15), || {
        agent.log().matches("adopted a running docker container").count() == 2
    });
    assert!(adopted.is_some(), "{}", agent.log());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(engine.containers(), before, "the same containers, none new");
    assert_eq!(dig(&server, srv, "SRV").len(), 2);

    // Scale down: web-2 is drained, stopped and removed.
    admin(&server, &["service", "scale", "dora/boxes/web", "1"]);
    let removed = wait_for(Duration::from_secs(20), || engine.containers().len() == 1);
    assert!(removed.is_some(), "{:?}\n{}", engine.containers(), agent.log());
    assert_eq!(dig(&server, srv, "SRV").len(), 1);

    admin(&server, &["stack", "rm", "dora/boxes"]);
    let empty = wait_for(Duration::from_secs(20), || engine.containers().is_empty());
    assert!(empty.is_some(), "{:?}", engine.containers());
}
