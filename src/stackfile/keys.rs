//! The key table: every key a service may have and what happens to it, and the shape checks
//! for keys that are accepted but not interpreted. `docs/stackfile.md` describes the same
//! table for users; change both together.

use super::document::{Node, Value, key_text};
use super::values::{self, SIZE_FORMS};

/// What happens to a service key.
#[derive(Debug, Clone, Copy)]
pub(super) enum Handling {
    /// Parsed into a [`ServiceDef`](super::ServiceDef) field.
    Honoured,
    /// Tutum platform behaviour that has no counterpart here: checked, then dropped.
    Platform(Shape),
    /// A container runtime option stackdns does not interpret: checked, kept verbatim in
    /// [`ServiceDef::runtime_options`](super::ServiceDef::runtime_options), so `spec_hash`
    /// sees it and an agent could apply it.
    Runtime(Shape),
    /// A runtime option that reaches outside the container (the node's devices, processes,
    /// capabilities or files): kept like [`Handling::Runtime`] when the user's policy allows it
    /// (`--privileged-users`), refused otherwise.
    Privileged(Shape),
    /// Refused; the text says why and what to do instead.
    Unsupported(&'static str),
}

/// The form an accepted-but-not-interpreted value must have.
#[derive(Debug, Clone, Copy)]
pub(super) enum Shape {
    Bool,
    /// One string or number.
    Scalar,
    /// A list of strings or numbers, or a single one.
    Strings,
    /// A list of `KEY=VALUE` strings, or a mapping of scalars.
    ListOrMap,
    /// A memory size as for `mem_limit`, or -1 (unlimited).
    Size,
    /// One of these strings; the text explains the restriction.
    OneOf(&'static [&'static str], &'static str),
    /// A DNS name: labels of letters, digits and hyphens, at most 253 characters.
    Hostname,
    /// Ports (`"8080"`, `"53/udp"`), a list or one: 1-65535, tcp or udp.
    PortList,
    /// `"host:address"` entries, a list or a mapping of host to address.
    HostEntries,
}

use Handling::{Honoured, Platform, Privileged, Runtime, Unsupported};
use Shape::{Bool, HostEntries, Hostname, ListOrMap, OneOf, PortList, Scalar, Size, Strings};

/// Every key a service may have: Tutum's and Docker Cloud's stack file keys, plus the three
/// Compose keys Docker Cloud itself refused.
pub(super) const KEYS: &[(&str, Handling)] = &[
    ("image", Honoured),
    ("ports", Honoured),
    ("links", Honoured),
    ("environment", Honoured),
    ("target_num_containers", Honoured),
    ("deployment_strategy", Honoured),
    ("tags", Honoured),
    ("mem_limit", Honoured),
    ("cpu_shares", Honoured),
    ("command", Honoured),
    ("entrypoint", Honoured),
    ("restart", Honoured),
    ("autorestart", Honoured),
    ("health_check", Honoured),
    (
        "autodestroy",
        Platform(OneOf(&["no", "on-success", "always"], "")),
    ),
    ("autoredeploy", Platform(Bool)),
    ("roles", Platform(Strings)),
    ("sequential_deployment", Platform(Bool)),
    ("cap_add", Privileged(Strings)),
    ("cap_drop", Runtime(Strings)),
    ("cgroup_parent", Runtime(Scalar)),
    ("cpuset", Runtime(Scalar)),
    ("devices", Privileged(Strings)),
    ("dns", Runtime(Strings)),
    ("dns_search", Runtime(Strings)),
    ("domainname", Runtime(Hostname)),
    ("expose", Runtime(PortList)),
    ("extra_hosts", Runtime(HostEntries)),
    ("hostname", Runtime(Hostname)),
    ("labels", Runtime(ListOrMap)),
    ("mac_address", Runtime(Scalar)),
    ("memswap_limit", Runtime(Size)),
    (
        "net",
        Runtime(OneOf(
            &["bridge"],
            "; host networking would bypass the port mapping that placement and DNS SRV records \
             describe",
        )),
    ),
    ("pid", Privileged(OneOf(&["host"], ""))),
    ("privileged", Privileged(Bool)),
    ("read_only", Runtime(Bool)),
    ("security_opt", Privileged(Strings)),
    ("stdin_open", Runtime(Bool)),
    ("tty", Runtime(Bool)),
    ("user", Runtime(Scalar)),
    ("volumes", Runtime(Strings)),
    ("volumes_from", Runtime(Strings)),
    ("working_dir", Runtime(Scalar)),
    (
        "build",
        Unsupported("stackdns runs published images; build and push the image, then name it in image"),
    ),
    (
        "env_file",
        Unsupported("the file is on your machine, not the server's; list the variables in environment"),
    ),
    (
        "external_links",
        Unsupported(
            "links name services of this Stackfile; reach other services through DNS \
             (<service>.<stack>.<user>.svc.<zone>)",
        ),
    ),
];

/// What happens to `key`; `None` if it is not a Stackfile key.
pub(super) fn handling(key: &str) -> Option<Handling> {
    KEYS.iter().find(|(k, _)| *k == key).map(|(_, h)| *h)
}

/// Every key, for "did you mean".
pub(super) fn names() -> impl Iterator<Item = &'static str> {
    KEYS.iter().map(|(k, _)| *k)
}

/// Whether a privileged option asks for anything (`privileged: false`, `cap_add: []` do not).
pub(super) fn asks_privilege(value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::Seq(items) => !items.is_empty(),
        Value::Null => false,
        _ => true,
    }
}

/// Whether `value` has the form `shape` asks for; the reason follows `service "web", key: `.
pub(super) fn check_shape(value: &Value, shape: Shape) -> Result<(), String> {
    let is_scalar = |v: &Value| matches!(v, Value::Str(_) | Value::Int(_) | Value::Float(_));
    let ok = match (value, shape) {
        (Value::Bool(_), Bool) => true,
        (v, Scalar) => is_scalar(v),
        (Value::Seq(items), Strings | ListOrMap) => items.iter().all(|i| is_scalar(&i.value)),
        (v, Strings) => is_scalar(v),
        (Value::Map(entries), ListOrMap) => entries
            .iter()
            .all(|(_, v)| is_scalar(&v.value) || matches!(v.value, Value::Null | Value::Bool(_))),
        (Value::Int(n), Size) => *n >= -1,
        (Value::Str(text), Size) => text == "-1" || values::memory_bytes(text).is_ok(),
        (Value::Str(text), OneOf(allowed, why)) => {
            if allowed.contains(&text.as_str()) {
                return Ok(());
            }
            return Err(format!("{text:?} is not supported; use {}{why}", quoted(allowed)));
        }
        (Value::Str(text), Hostname) => return values::hostname(text),
        (Value::Seq(items), PortList) => {
            for item in items {
                let text = item.value.scalar_text().unwrap_or_default();
                values::exposed_port(&text)?;
            }
            return Ok(());
        }
        (v @ (Value::Str(_) | Value::Int(_)), PortList) => {
            return values::exposed_port(&v.scalar_text().unwrap_or_default());
        }
        (Value::Seq(items), HostEntries) => {
            for item in items {
                let Value::Str(text) = &item.value else {
                    return Err(format!(
                        "expected \"host:address\", found {}",
                        item.value.describe()
                    ));
                };
                let (host, address) = text
                    .split_once(':')
                    .ok_or_else(|| format!("{text:?} is not \"host:address\""))?;
                values::host_entry(host, address)?;
            }
            return Ok(());
        }
        (Value::Map(entries), HostEntries) => {
            for (key, value) in entries {
                let host = key_text(key).unwrap_or_default();
                values::host_entry(&host, &value.value.scalar_text().unwrap_or_default())?;
            }
            return Ok(());
        }
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let expected = match shape {
        Bool => "true or false".to_owned(),
        Scalar => "a string".to_owned(),
        Strings => "a string or a list of strings".to_owned(),
        ListOrMap => "a list of \"KEY=value\" or a mapping".to_owned(),
        Size => format!("a memory size; {SIZE_FORMS}"),
        OneOf(allowed, _) => quoted(allowed),
        Hostname => "a host name".to_owned(),
        PortList => "a port such as \"8080\" or \"53/udp\", or a list of them".to_owned(),
        HostEntries => "a list of \"host:address\" or a mapping".to_owned(),
    };
    Err(format!("expected {expected}, found {}", value.describe()))
}

fn quoted(allowed: &[&str]) -> String {
    allowed
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(" or ")
}

/// An accepted runtime option, kept as written (numbers stay numbers, booleans booleans).
pub(super) fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value as J;
    match &node.value {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(n) => match (i64::try_from(*n), u64::try_from(*n)) {
            (Ok(n), _) => J::from(n),
            (_, Ok(n)) => J::from(n),
            _ => J::String(n.to_string()),
        },
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::Str(s) => J::String(s.clone()),
        Value::Seq(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => J::Object(
            entries
                .iter()
                .map(|(k, v)| (key_text(k).unwrap_or_default(), to_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value each key accepts, so that every entry of the table is exercised end to end.
    fn sample(key: &str, handling: Handling) -> &'static str {
        match (key, handling) {
            ("image", _) => "nginx",
            ("ports", _) => "['80', '53/udp']",
            ("links", _) => "[other]",
            ("environment", _) => "[A=1]",
            ("target_num_containers", _) => "2",
            ("deployment_strategy", _) => "every_node",
            ("tags", _) => "[blue]",
            ("mem_limit", _) => "512m",
            ("cpu_shares", _) => "512",
            ("command" | "entrypoint", _) => "run it",
            ("restart", _) => "always",
            ("autorestart", _) => "ALWAYS",
            ("health_check", _) => "{tcp: true}, ports: ['80']",
            (_, Platform(shape) | Runtime(shape) | Privileged(shape)) => match shape {
                Bool => "true",
                Scalar => "value",
                Strings => "[a, b]",
                ListOrMap => "{a: b}",
                Size => "1g",
                OneOf(allowed, _) => allowed[0],
                Hostname => "web.example",
                PortList => "['8080', '53/udp']",
                HostEntries => "['db:10.0.0.5']",
            },
            (_, Honoured | Unsupported(_)) => "x",
        }
    }

    #[test]
    fn every_key_is_documented() {
        let reference = include_str!("../../docs/stackfile.md");
        for (key, _) in KEYS {
            assert!(
                reference.contains(&format!("`{key}`")),
                "docs/stackfile.md does not mention `{key}`"
            );
        }
    }

    #[test]
    fn every_key_in_the_table_is_handled() {
        for &(key, handling) in KEYS {
            let image = if key == "image" {
                String::new()
            } else {
                "image: nginx, ".to_owned()
            };
            let text = format!(
                "svc: {{{image}{key}: {}}}\nother: {{image: x}}\n",
                sample(key, handling)
            );
            let result = super::super::parse(text.as_bytes(), None);
            let privileged = super::super::Policy {
                privileged: true,
                ..Default::default()
            };
            match handling {
                Unsupported(_) => assert_eq!(
                    result.map_err(|e| e.code()).err(),
                    Some("unsupported_key"),
                    "{key}"
                ),
                Privileged(_) => {
                    assert_eq!(
                        result.map_err(|e| e.code()).err(),
                        Some("unsupported_key"),
                        "{key}"
                    );
                    let allowed = super::super::parse_with(text.as_bytes(), None, &privileged);
                    assert!(allowed.is_ok(), "{key} with the policy: {allowed:?}");
                }
                _ => assert!(result.is_ok(), "{key}: {result:?}"),
            }
        }
    }
}
