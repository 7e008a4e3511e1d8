//! `health_check`: how the agent decides a running container may receive traffic.
//!
//! ```yaml
//! health_check:
//!   http: /healthz          # GET must answer 2xx or 3xx; or `tcp: true` for a TCP connect
//!   port: 80                # a published TCP container port; default: the first one
//!   interval: 5s            # between probes (default 10s)
//!   timeout: 2s             # per probe, at most the interval (default 2s, or the interval)
//!   healthy_threshold: 2    # consecutive passes to enter DNS (default 2)
//!   unhealthy_threshold: 3  # consecutive failures to leave DNS (default 3)
//! ```

use super::ServiceReader;
use crate::model::{PortSpec, Protocol};
use crate::stackfile::document::{Node, Problem, Value, key_text};
use crate::stackfile::{HealthCheck, Probe};

const KEY: &str = "health_check";
/// Probes closer together than this would be load, not health checking.
const MIN_INTERVAL_MS: u64 = 100;
const MAX_INTERVAL_MS: u64 = 3_600_000;
const MAX_THRESHOLD: i128 = 100;
const MAX_PATH_LEN: usize = 1024;

impl ServiceReader<'_> {
    /// Reads the mapping; the port is checked against the published ports by
    /// [`ServiceReader::health_port`] once every key of the service is read.
    pub(super) fn health_check(&self, node: &Node) -> Result<HealthCheck, Problem> {
        let Value::Map(entries) = &node.value else {
            return Err(self.wrong_type(node, KEY, "a mapping with http: PATH or tcp: true"));
        };
        let mut check = HealthCheck::default();
        let mut probe = None;
        let mut timeout = None;
        for (key, value) in entries {
            let name = key_text(key).unwrap_or_default();
            let field = format!("{KEY}.{name}");
            match name.as_str() {
                "http" => {
                    let Value::Str(path) = &value.value else {
                        return Err(self.wrong_type(value, &field, "a path such as \"/healthz\""));
                    };
                    if !path.starts_with('/')
                        || path.len() > MAX_PATH_LEN
                        || path.chars().any(|c| c.is_whitespace() || c.is_control())
                    {
                        let reason = format!("{path:?} is not a path; write one like \"/healthz\"");
                        return Err(self.invalid(value, &field, reason));
                    }
                    probe = Some(Probe::Http { path: path.clone() });
                }
                "tcp" => match value.value {
                    Value::Bool(true) => probe = Some(Probe::Tcp),
                    Value::Bool(false) => {}
                    _ => return Err(self.wrong_type(value, &field, "true")),
                },
                "port" => {
                    let n = self.integer(value, &field)?;
                    let port = u16::try_from(n)
                        .ok()
                        .filter(|&p| p > 0)
                        .ok_or_else(|| self.invalid(value, &field, format!("{n} is not a port (1-65535)")))?;
                    check.port = Some(port);
                }
                "interval" => check.interval_ms = self.millis(value, &field, MIN_INTERVAL_MS)?,
                "timeout" => timeout = Some(self.millis(value, &field, 1)?),
                "healthy_threshold" => check.healthy_threshold = self.threshold(value, &field)?,
                "unhealthy_threshold" => check.unhealthy_threshold = self.threshold(value, &field)?,
                _ => {
                    let reason = format!(
                        "unknown key {name:?}; a health check has http or tcp, port, interval, \
                         timeout, healthy_threshold and unhealthy_threshold"
                    );
                    return Err(self.problem(
                        crate::stackfile::error::ErrorKind::UnknownKey,
                        key.at,
                        KEY,
                        reason,
                    ));
                }
            }
        }
        check.probe = probe.ok_or_else(|| {
            self.invalid(
                node,
                KEY,
                "it needs a probe: http: PATH (an HTTP GET) or tcp: true (a TCP connect)",
            )
        })?;
        // Without a timeout of its own, a short interval shortens the default.
        check.timeout_ms = timeout.unwrap_or(check.timeout_ms.min(check.interval_ms));
        if check.timeout_ms > check.interval_ms {
            let reason = format!(
                "the timeout ({} ms) is longer than the interval ({} ms)",
                check.timeout_ms, check.interval_ms
            );
            return Err(self.invalid(node, KEY, reason));
        }
        Ok(check)
    }

    /// The port a health check probes: the one it names, which must be a published TCP port,
    /// or the service's first published TCP port.
    pub(super) fn health_port(
        &self,
        check: Option<(HealthCheck, &Node)>,
        ports: &[PortSpec],
    ) -> Result<Option<HealthCheck>, Problem> {
        let Some((mut check, node)) = check else {
            return Ok(None);
        };
        let tcp = |p: &&PortSpec| p.protocol == Protocol::Tcp;
        let published = match check.port {
            Some(port) => ports.iter().filter(tcp).find(|p| p.container_port == port),
            None => ports.iter().find(tcp),
        };
        let Some(published) = published else {
            let reason = match check.port {
                Some(port) => {
                    format!("port {port} is not a published TCP port of this service; add it to ports")
                }
                None => "the service publishes no TCP port to probe; add one to ports".to_owned(),
            };
            return Err(self.invalid(node, KEY, reason));
        };
        check.port = Some(published.container_port);
        Ok(Some(check))
    }

    /// `5s`, `500ms`, `1m`, or a number of seconds, at least `min` milliseconds.
    fn millis(&self, node: &Node, field: &str, min: u64) -> Result<u64, Problem> {
        let text = match &node.value {
            Value::Int(n) => format!("{n}s"),
            Value::Str(s) => s.clone(),
            _ => return Err(self.wrong_type(node, field, "a duration such as \"5s\" or \"500ms\"")),
        };
        let (number, unit) = if let Some(n) = text.strip_suffix("ms") {
            (n, 1)
        } else if let Some(n) = text.strip_suffix('s') {
            (n, 1_000)
        } else if let Some(n) = text.strip_suffix('m') {
            (n, 60_000)
        } else {
            return Err(self.invalid(
                node,
                field,
                format!("{text:?} has no unit; write \"5s\" or \"500ms\""),
            ));
        };
        let ms = number
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(unit))
            .filter(|ms| (min..=MAX_INTERVAL_MS).contains(ms))
            .ok_or_else(|| {
                let reason = format!("{text:?} is not a whole duration between {min} ms and 1 hour");
                self.invalid(node, field, reason)
            })?;
        Ok(ms)
    }

    fn threshold(&self, node: &Node, field: &str) -> Result<u32, Problem> {
        let n = self.integer(node, field)?;
        if !(1..=MAX_THRESHOLD).contains(&n) {
            return Err(self.invalid(node, field, format!("{n} is not between 1 and {MAX_THRESHOLD}")));
        }
        Ok(n as u32)
    }
}
