//! Health checks (a service's `health_check`): one probe, and the thresholds that turn a run
//! of results into "in DNS" or "out of DNS" without flapping.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::stackfile::{HealthCheck, Probe};

/// Runs one probe against `address`; `Err` says why it failed.
pub async fn probe(check: &HealthCheck, address: SocketAddr) -> Result<(), String> {
    let timeout = Duration::from_millis(check.timeout_ms);
    let attempt = async {
        let mut stream = TcpStream::connect(address)
            .await
            .map_err(|e| format!("cannot connect to {address}: {e}"))?;
        let Probe::Http { path } = &check.probe else {
            return Ok(());
        };
        // HTTP/1.0 with Connection: close, so the answer ends when the server closes.
        let request = format!(
            "GET {path} HTTP/1.0\r\nHost: {address}\r\nUser-Agent: stackdns-agent\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("cannot send the request: {e}"))?;
        let mut head = [0u8; 64];
        let mut len = 0;
        while len < 12 {
            let n = stream
                .read(&mut head[len..])
                .await
                .map_err(|e| format!("cannot read the answer: {e}"))?;
            if n == 0 {
                break;
            }
            len += n;
        }
        let line = String::from_utf8_lossy(&head[..len]);
        let status: Option<u16> = line
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.get(2..5))
            .and_then(|code| code.parse().ok());
        match status {
            Some(code) if (200..400).contains(&code) => Ok(()),
            Some(code) => Err(format!("GET {path} answered {code}")),
            None => Err(format!("GET {path} got no HTTP answer")),
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} ms", check.timeout_ms)))
}

/// Where a container's health check connects: the node's address and the host port of the
/// probed container port.
pub fn target(check: &HealthCheck, host: IpAddr, ports: &[crate::model::Port]) -> Option<SocketAddr> {
    let port = ports
        .iter()
        .find(|p| Some(p.container_port) == check.port && p.protocol == crate::model::Protocol::Tcp)?;
    Some(SocketAddr::new(
        host,
        port.host_port.unwrap_or(port.container_port),
    ))
}

/// Consecutive results, turned into a verdict with hysteresis.
#[derive(Debug, Clone)]
pub struct Thresholds {
    healthy: u32,
    unhealthy: u32,
    /// Whether the container counts as healthy now; it starts unhealthy ("starting").
    pub passing: bool,
    streak: u32,
    /// The next result alone decides (a container adopted after an agent restart, whose last
    /// verdict is not known here).
    undecided: bool,
}

impl Thresholds {
    /// Thresholds for a container that starts `passing` (one adopted while in DNS) or not.
    pub fn new(check: &HealthCheck, passing: bool) -> Self {
        Self {
            healthy: check.healthy_threshold.max(1),
            unhealthy: check.unhealthy_threshold.max(1),
            passing,
            streak: 0,
            undecided: false,
        }
    }

    /// For an adopted container: in DNS until the first probe says otherwise.
    pub fn adopted(check: &HealthCheck) -> Self {
        Self {
            undecided: true,
            ..Self::new(check, true)
        }
    }

    /// Counts one result; answers `Some(new verdict)` when it changes.
    pub fn record(&mut self, passed: bool) -> Option<bool> {
        if std::mem::take(&mut self.undecided) && passed != self.passing {
            self.passing = passed;
            return Some(passed);
        }
        if passed == self.passing {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if passed { self.healthy } else { self.unhealthy };
        if self.streak >= needed {
            self.passing = passed;
            self.streak = 0;
            return Some(passed);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> HealthCheck {
        HealthCheck {
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            ..HealthCheck::default()
        }
    }

    #[test]
    fn thresholds_damp_flapping() {
        let mut t = Thresholds::new(&check(), false);
        assert_eq!(t.record(true), None, "one pass is not enough");
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None, "the streak restarted");
        assert_eq!(t.record(true), Some(true));
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None, "a pass resets the failures");
        for _ in 0..2 {
            assert_eq!(t.record(false), None);
        }
        assert_eq!(t.record(false), Some(false));

        let mut adopted = Thresholds::adopted(&check());
        assert!(adopted.passing, "in DNS until probed");
        assert_eq!(adopted.record(false), Some(false), "the first probe decides");
    }

    #[tokio::test]
    async fn probes_tcp_and_http() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let ok = String::from_utf8_lossy(&buf[..n]).starts_with("GET /ok ");
                let answer: &[u8] = if ok {
                    b"HTTP/1.0 200 OK\r\n\r\n"
                } else {
                    b"HTTP/1.0 503 No\r\n\r\n"
                };
                let _ = stream.write_all(answer).await;
            }
        });
        let tcp = HealthCheck::default();
        assert_eq!(probe(&tcp, address).await, Ok(()));
        let http = |path: &str| HealthCheck {
            probe: Probe::Http {
                path: path.to_owned(),
            },
            ..HealthCheck::default()
        };
        assert_eq!(probe(&http("/ok"), address).await, Ok(()));
        assert_eq!(
            probe(&http("/bad"), address).await,
            Err("GET /bad answered 503".to_owned())
        );
        let closed = SocketAddr::from(([127, 0, 0, 1], 1));
        assert!(probe(&tcp, closed).await.is_err());
    }
}
