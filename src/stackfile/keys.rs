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
}

use Handling::{Honoured, Platform, Runtime, Unsupported};
use Shape::{Bool, ListOrMap, OneOf, Scalar, Size, Strings};

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
    ("cap_add", Runtime(Strings)),
    ("cap_drop", Runtime(Strings)),
    ("cgroup_parent", Runtime(Scalar)),
    ("cpuset", Runtime(Scalar)),
    ("devices", Runtime(Strings)),
    ("dns", Runtime(Strings)),
    ("dns_search", Runtime(Strings)),
    ("domainname", Runtime(Scalar)),
    ("expose", Runtime(Strings)),
    ("extra_hosts", Runtime(ListOrMap)),
    ("hostname", Runtime(Scalar)),
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
    ("pid", Runtime(OneOf(&["host"], ""))),
    ("privileged", Runtime(Bool)),
    ("read_only", Runtime(Bool)),
    ("security_opt", Runtime(Strings)),
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
            (_, Platform(shape) | Runtime(shape)) => match shape {
                Bool => "true",
                Scalar => "value",
                Strings => "[a, b]",
                ListOrMap => "{a: b}",
                Size => "1g",
                OneOf(allowed, _) => allowed[0],
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
            match handling {
                Unsupported(_) => assert_eq!(
                    result.map_err(|e| e.code()).err(),
                    Some("unsupported_key"),
                    "{key}"
                ),
                _ => assert!(result.is_ok(), "{key}: {result:?}"),
            }
        }
    }
}
