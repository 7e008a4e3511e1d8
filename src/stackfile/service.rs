//! The Stackfile rules: what each honoured value must look like, how the tree becomes
//! [`ServiceDef`]s, and how links are resolved. Which keys exist is `keys.rs`'s table.

use std::collections::BTreeMap;

use crate::model::{Label, PortSpec, Protocol, Strategy};

use super::document::{At, Node, Problem, Value, key_text};
use super::error::ErrorKind;
use super::keys::{
    self,
    Handling::{Honoured, Platform, Privileged, Runtime, Unsupported},
};
use super::values::{self, PORT_FORMS, SIZE_FORMS};
use super::{MAX_SERVICES, MAX_TARGET_NUM_CONTAINERS, Policy, Restart, ServiceDef, Stackfile};

mod health;

const MAX_IMAGE_LEN: usize = 1024;
/// The kernel's range for CPU shares (cgroup v1 `cpu.shares`).
const CPU_SHARES: std::ops::RangeInclusive<i128> = 2..=262_144;

/// Turns the document's root into a Stackfile, checking every rule.
pub(super) fn stackfile(root: &Node, policy: &Policy) -> Result<Stackfile, Problem> {
    let entries = match &root.value {
        Value::Map(entries) if !entries.is_empty() => entries,
        Value::Map(_) | Value::Null => {
            let detail = "the Stackfile declares no services; it maps service names to services, \
                          e.g. \"web: {image: nginx}\"";
            return Err(Problem::new(ErrorKind::InvalidValue, root.at, detail));
        }
        other => {
            let found = other.describe();
            let detail = format!("a Stackfile maps service names to services, not {found}");
            return Err(Problem::new(ErrorKind::InvalidValue, root.at, detail));
        }
    };
    refuse_compose_layout(entries)?;
    if entries.len() > MAX_SERVICES {
        let detail = format!(
            "the Stackfile declares {} services; the limit is {MAX_SERVICES}",
            entries.len()
        );
        return Err(Problem::new(ErrorKind::TooLarge, root.at, detail));
    }
    let mut services = BTreeMap::new();
    let mut links = Vec::new();
    for (key, node) in entries {
        let name = service_name(key)?;
        if services.contains_key(&name) {
            let detail = format!(
                "service {:?} is declared twice (names are case-insensitive)",
                name.as_str()
            );
            return Err(Problem::new(ErrorKind::DuplicateKey, key.at, detail));
        }
        let service = ServiceReader { name: &name, policy };
        let (mut def, service_links) = service.read(key.at, node)?;
        def.links = service_links.iter().map(|(target, _)| target.clone()).collect();
        links.extend(
            service_links
                .into_iter()
                .map(|(target, at)| (name.clone(), target, at)),
        );
        services.insert(name, def);
    }
    for (from, to, at) in links {
        if !services.contains_key(&to) {
            return Err(unknown_link(&from, &to, at, &services));
        }
    }
    Ok(Stackfile { services })
}

/// A Compose v2/v3 file (`version:` + `services:`) would otherwise fail with a puzzling
/// "unknown key" inside a service called `services`.
fn refuse_compose_layout(entries: &[(Node, Node)]) -> Result<(), Problem> {
    for (key, value) in entries {
        let Value::Map(inner) = &value.value else { continue };
        let has_image = inner.iter().any(|(k, _)| key_text(k).as_deref() == Some("image"));
        if key_text(key).as_deref() == Some("services") && !has_image {
            let detail = "this looks like a Docker Compose file: a Stackfile lists its services at the \
                          top level, without \"version:\" and \"services:\"";
            return Err(Problem::new(ErrorKind::InvalidValue, key.at, detail));
        }
    }
    Ok(())
}

fn service_name(key: &Node) -> Result<Label, Problem> {
    let text = key_text(key).unwrap_or_default();
    Label::parse("service", &text).map_err(|e| {
        Problem::new(
            ErrorKind::InvalidName,
            key.at,
            format!("{e}{}", label_hint(&text)),
        )
    })
}

/// Tutum allowed `my_service`; a DNS label cannot have `_`. Suggest the spelling that works.
fn label_hint(text: &str) -> String {
    let fixed = text.replace('_', "-").to_ascii_lowercase();
    if fixed != text.to_ascii_lowercase() && Label::parse("service", &fixed).is_ok() {
        format!(" (try {fixed:?})")
    } else {
        String::new()
    }
}

fn unknown_link(from: &Label, to: &Label, at: At, services: &BTreeMap<Label, ServiceDef>) -> Problem {
    let names = services.keys().map(Label::as_str);
    let hint = match values::closest(to.as_str(), names.clone()) {
        Some(name) => format!("; did you mean {name:?}?"),
        None => {
            let listed: Vec<&str> = names.clone().take(10).collect();
            let more = if services.len() > listed.len() {
                ", …"
            } else {
                ""
            };
            format!(" (its services: {}{more})", listed.join(", "))
        }
    };
    let detail = format!(
        "service {:?} links to {:?}, which is not a service of this Stackfile{hint}",
        from.as_str(),
        to.as_str()
    );
    Problem::new(ErrorKind::UnknownLink, at, detail)
}

/// Reads one service; knows its name so every message can say which service is wrong.
struct ServiceReader<'a> {
    name: &'a Label,
    /// What the submitting user may ask for.
    policy: &'a Policy,
}

/// A link target and where it was written, checked once every service is known.
type LinkRef = (Label, At);

impl ServiceReader<'_> {
    fn problem(&self, kind: ErrorKind, at: At, key: &str, reason: impl std::fmt::Display) -> Problem {
        Problem::new(
            kind,
            at,
            format!("service {:?}, {key}: {reason}", self.name.as_str()),
        )
    }

    fn invalid(&self, node: &Node, key: &str, reason: impl std::fmt::Display) -> Problem {
        self.problem(ErrorKind::InvalidValue, node.at, key, reason)
    }

    fn wrong_type(&self, node: &Node, key: &str, expected: &str) -> Problem {
        self.invalid(
            node,
            key,
            format!("expected {expected}, found {}", node.value.describe()),
        )
    }

    fn read(&self, name_at: At, node: &Node) -> Result<(ServiceDef, Vec<LinkRef>), Problem> {
        let service = self.name.as_str();
        let entries = match &node.value {
            Value::Map(entries) => entries,
            Value::Null => {
                let detail = format!("service {service:?} is empty; it needs at least an image");
                return Err(Problem::new(ErrorKind::MissingKey, name_at, detail));
            }
            other => {
                let found = other.describe();
                let detail =
                    format!("service {service:?} must be a mapping of keys (image, ports…), not {found}");
                return Err(Problem::new(ErrorKind::InvalidValue, node.at, detail));
            }
        };
        let mut def = ServiceDef::new(String::new());
        let mut image = None;
        let mut links = Vec::new();
        let mut restart: Option<(Restart, &Node)> = None;
        let mut autorestart: Option<(Restart, &Node)> = None;
        let mut health = None;
        for (key_node, value) in entries {
            let key = key_text(key_node).unwrap_or_default();
            let Some(handling) = keys::handling(&key) else {
                return Err(self.unknown_key(key_node, &key));
            };
            // An empty value (`ports:` with nothing after it) is the key's default.
            if value.value == Value::Null && !matches!(handling, Unsupported(_)) && key != "image" {
                continue;
            }
            match handling {
                Honoured => match key.as_str() {
                    "image" => image = Some(self.image(value)?),
                    "ports" => def.ports = self.ports(value)?,
                    "links" => links = self.links(value)?,
                    "environment" => def.environment = self.environment(value)?,
                    "target_num_containers" => def.target_num_containers = self.target(value)?,
                    "deployment_strategy" => def.deployment_strategy = self.strategy(value)?,
                    "tags" => def.tags = self.tags(value)?,
                    "mem_limit" => def.mem_limit_mb = self.mem_limit(value)?,
                    "cpu_shares" => def.cpu_shares = Some(self.cpu_shares(value)?),
                    "command" => def.command = Some(self.words(value, "command")?),
                    "entrypoint" => def.entrypoint = Some(self.words(value, "entrypoint")?),
                    "restart" => restart = Some((self.restart(value, "restart", values::restart)?, value)),
                    "autorestart" => {
                        autorestart = Some((self.restart(value, "autorestart", values::autorestart)?, value))
                    }
                    "health_check" => health = Some((self.health_check(value)?, value)),
                    // A key marked honoured in the table but not handled here; the table test
                    // (`every_key_in_the_table_is_handled`) keeps this unreachable.
                    _ => return Err(self.unknown_key(key_node, &key)),
                },
                Platform(shape) => {
                    keys::check_shape(&value.value, shape).map_err(|r| self.invalid(value, &key, r))?;
                }
                Runtime(shape) => {
                    keys::check_shape(&value.value, shape).map_err(|r| self.invalid(value, &key, r))?;
                    if key == "volumes" {
                        self.host_mounts(value)?;
                    }
                    def.runtime_options.insert(key, keys::to_json(value));
                }
                Privileged(shape) => {
                    keys::check_shape(&value.value, shape).map_err(|r| self.invalid(value, &key, r))?;
                    if keys::asks_privilege(&value.value) && !self.policy.privileged {
                        return Err(self.refused(value, &key));
                    }
                    def.runtime_options.insert(key, keys::to_json(value));
                }
                Unsupported(why) => {
                    let detail = format!("service {service:?}: {key} is not supported: {why}");
                    return Err(Problem::new(ErrorKind::UnsupportedKey, key_node.at, detail));
                }
            }
        }
        def.image = image.ok_or_else(|| {
            let detail = format!("service {service:?} has no image; image is the one required key");
            Problem::new(ErrorKind::MissingKey, name_at, detail)
        })?;
        def.restart = self.one_restart_policy(restart, autorestart)?;
        def.health_check = self.health_port(health, &def.ports)?;
        Ok((def, links))
    }

    /// A privileged option without the policy that allows it.
    fn refused(&self, node: &Node, key: &str) -> Problem {
        let value = keys::to_json(node).to_string();
        let value: String = value.chars().take(60).collect();
        self.problem(
            ErrorKind::UnsupportedKey,
            node.at,
            key,
            format!(
                "{value} reaches outside the container (the node's devices, processes, \
                 capabilities or files) and is refused on a shared platform; an admin allows it \
                 for a user with --privileged-users"
            ),
        )
    }

    /// `volumes` entries that mount a path of the node (`/srv:/data`) are privileged; named
    /// volumes (`data:/data`) and container paths (`/data`) are not.
    fn host_mounts(&self, node: &Node) -> Result<(), Problem> {
        if self.policy.privileged {
            return Ok(());
        }
        for item in self.items(node) {
            let text = item.value.scalar_text().unwrap_or_default();
            let source = text.split(':').next().unwrap_or_default();
            if text.contains(':')
                && (source.starts_with('/') || source.starts_with('.') || source.starts_with('~'))
            {
                return Err(self.refused(item, "volumes"));
            }
        }
        Ok(())
    }

    fn unknown_key(&self, key_node: &Node, key: &str) -> Problem {
        let hint = match values::closest(key, keys::names()) {
            Some(known) => format!(" (did you mean {known:?}?)"),
            None => "; docs/stackfile.md lists the keys a service may have".to_owned(),
        };
        let detail = format!("unknown key {key:?} in service {:?}{hint}", self.name.as_str());
        Problem::new(ErrorKind::UnknownKey, key_node.at, detail)
    }

    fn image(&self, node: &Node) -> Result<String, Problem> {
        let Value::Str(image) = &node.value else {
            return Err(self.wrong_type(node, "image", "an image name such as \"redis:7\""));
        };
        if image.is_empty() {
            return Err(self.invalid(node, "image", "the image name is empty"));
        }
        if image.len() > MAX_IMAGE_LEN || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(self.invalid(node, "image", format!("{image:?} is not an image name")));
        }
        values::image_reference(image).map_err(|r| self.invalid(node, "image", r))?;
        Ok(image.clone())
    }

    /// A list of entries, or one entry on its own.
    fn items<'n>(&self, node: &'n Node) -> &'n [Node] {
        match &node.value {
            Value::Seq(items) => items,
            _ => std::slice::from_ref(node),
        }
    }

    fn ports(&self, node: &Node) -> Result<Vec<PortSpec>, Problem> {
        let invalid = |at, reason: String| self.problem(ErrorKind::InvalidPort, at, "ports", reason);
        let mut ports: Vec<PortSpec> = Vec::new();
        for item in self.items(node) {
            let port = match &item.value {
                Value::Int(n) => {
                    let container_port = values::port_integer(*n).map_err(|r| invalid(item.at, r))?;
                    PortSpec {
                        container_port,
                        host_port: None,
                        protocol: Protocol::Tcp,
                    }
                }
                Value::Str(text) => values::port_spec(text).map_err(|r| invalid(item.at, r))?,
                other => {
                    return Err(invalid(
                        item.at,
                        format!("found {}; {PORT_FORMS}", other.describe()),
                    ));
                }
            };
            let proto = port.protocol.as_str();
            if ports
                .iter()
                .any(|p| (p.container_port, p.protocol) == (port.container_port, port.protocol))
            {
                let reason = format!(
                    "container port {}/{proto} is published twice",
                    port.container_port
                );
                return Err(invalid(item.at, reason));
            }
            if let Some(host) = port.host_port
                && ports
                    .iter()
                    .any(|p| (p.host_port, p.protocol) == (Some(host), port.protocol))
            {
                return Err(invalid(
                    item.at,
                    format!("host port {host}/{proto} is used twice"),
                ));
            }
            ports.push(port);
        }
        Ok(ports)
    }

    /// `service` or Tutum's `service:alias` (the alias is dropped: DNS names are the service
    /// names). Targets are checked against the Stackfile's services by the caller.
    fn links(&self, node: &Node) -> Result<Vec<LinkRef>, Problem> {
        let mut links: Vec<LinkRef> = Vec::new();
        for item in self.items(node) {
            let Value::Str(text) = &item.value else {
                return Err(self.wrong_type(item, "links", "a service name such as \"redis\""));
            };
            let target = match text.split_once(':') {
                Some((_, "")) | Some(("", _)) => {
                    let reason = format!("{text:?} is not a link; write \"service\" or \"service:alias\"");
                    return Err(self.invalid(item, "links", reason));
                }
                Some((target, alias)) => {
                    // Docker's alias pattern: [a-zA-Z0-9][a-zA-Z0-9_.-]*
                    let alias_ok = alias.len() <= 255
                        && alias.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                        && alias
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
                    if !alias_ok {
                        let reason = format!(
                            "{text:?} is not a link; write \"service\" or \"service:alias\", the alias letters, digits, '_', '.' and '-'"
                        );
                        return Err(self.invalid(item, "links", reason));
                    }
                    target
                }
                None => text.as_str(),
            };
            if target.contains('.') {
                let reason = format!(
                    "{target:?} names a service of another stack; links name services of this \
                     Stackfile, and other stacks are reached through DNS \
                     (<service>.<stack>.<user>.svc.<zone>)"
                );
                return Err(self.problem(ErrorKind::UnknownLink, item.at, "links", reason));
            }
            let label = Label::parse("link", target).map_err(|e| {
                let reason = format!("{e}{}", label_hint(target));
                self.problem(ErrorKind::InvalidName, item.at, "links", reason)
            })?;
            if &label == self.name {
                return Err(self.invalid(item, "links", "a service cannot link to itself"));
            }
            if !links.iter().any(|(l, _)| *l == label) {
                links.push((label, item.at));
            }
        }
        Ok(links)
    }

    /// `["K=V", "K"]` or `{K: V}`; `K` alone and `K:` with no value mean an empty value.
    fn environment(&self, node: &Node) -> Result<BTreeMap<String, String>, Problem> {
        let mut env = BTreeMap::new();
        match &node.value {
            Value::Seq(items) => {
                for item in items {
                    let Value::Str(text) = &item.value else {
                        return Err(self.wrong_type(item, "environment", "\"NAME=value\""));
                    };
                    let (name, value) = text.split_once('=').unwrap_or((text, ""));
                    self.env_entry(item, name, value)?;
                    if env.insert(name.to_owned(), value.to_owned()).is_some() {
                        let reason = format!("variable {name:?} is set twice");
                        return Err(self.problem(ErrorKind::DuplicateKey, item.at, "environment", reason));
                    }
                }
            }
            Value::Map(entries) => {
                for (key, value) in entries {
                    let name = key_text(key).unwrap_or_default();
                    let text = match &value.value {
                        Value::Null => String::new(),
                        other => other.scalar_text().ok_or_else(|| {
                            self.wrong_type(value, "environment", "a string, number or true/false")
                        })?,
                    };
                    self.env_entry(key, &name, &text)?;
                    env.insert(name, text);
                }
            }
            _ => return Err(self.wrong_type(node, "environment", "a list of \"NAME=value\" or a mapping")),
        }
        Ok(env)
    }

    fn env_entry(&self, node: &Node, name: &str, value: &str) -> Result<(), Problem> {
        if name.is_empty()
            || name
                .chars()
                .any(|c| c == '=' || c.is_whitespace() || c.is_control())
        {
            let reason = format!("{name:?} is not a variable name");
            return Err(self.invalid(node, "environment", reason));
        }
        if value.contains('\0') {
            return Err(self.invalid(
                node,
                "environment",
                format!("the value of {name:?} contains a NUL"),
            ));
        }
        Ok(())
    }

    /// A non-negative integer, also accepted as a string of digits (`"3"`).
    fn integer(&self, node: &Node, key: &str) -> Result<i128, Problem> {
        match &node.value {
            Value::Int(n) => Ok(*n),
            Value::Str(s) if !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) => s
                .parse()
                .map_err(|_| self.wrong_type(node, key, "a whole number")),
            _ => Err(self.wrong_type(node, key, "a whole number")),
        }
    }

    fn target(&self, node: &Node) -> Result<u32, Problem> {
        let n = self.integer(node, "target_num_containers")?;
        u32::try_from(n)
            .ok()
            .filter(|&n| n <= MAX_TARGET_NUM_CONTAINERS)
            .ok_or_else(|| {
                let reason = format!("{n} is not between 0 and {MAX_TARGET_NUM_CONTAINERS}");
                self.invalid(node, "target_num_containers", reason)
            })
    }

    fn strategy(&self, node: &Node) -> Result<Strategy, Problem> {
        let expected = "emptiest_node, high_availability or every_node";
        let Value::Str(text) = &node.value else {
            return Err(self.wrong_type(node, "deployment_strategy", expected));
        };
        match text.to_ascii_lowercase().as_str() {
            "emptiest_node" => Ok(Strategy::EmptiestNode),
            "high_availability" => Ok(Strategy::HighAvailability),
            "every_node" => Ok(Strategy::EveryNode),
            _ => Err(self.invalid(
                node,
                "deployment_strategy",
                format!("{text:?} is not one of {expected}"),
            )),
        }
    }

    fn tags(&self, node: &Node) -> Result<Vec<Label>, Problem> {
        let mut tags = Vec::new();
        for item in self.items(node) {
            let text = match &item.value {
                Value::Str(_) | Value::Int(_) => item.value.scalar_text().unwrap_or_default(),
                _ => return Err(self.wrong_type(item, "tags", "a tag such as \"production\"")),
            };
            let tag = Label::parse("tag", &text).map_err(|e| {
                let reason = format!("{e}{}", label_hint(&text));
                self.problem(ErrorKind::InvalidName, item.at, "tags", reason)
            })?;
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        Ok(tags)
    }

    fn mem_limit(&self, node: &Node) -> Result<Option<u64>, Problem> {
        let bytes = match &node.value {
            Value::Int(n) => u64::try_from(*n).map_err(|_| {
                self.invalid(
                    node,
                    "mem_limit",
                    format!("{n} is not a memory size; {SIZE_FORMS}"),
                )
            })?,
            Value::Str(text) => values::memory_bytes(text).map_err(|r| self.invalid(node, "mem_limit", r))?,
            _ => return Err(self.wrong_type(node, "mem_limit", "a memory size such as \"512m\"")),
        };
        let megabytes = values::megabytes(bytes);
        let max = self.policy.max_memory_mb;
        if megabytes.is_some_and(|mb| mb > max) {
            let reason = format!("{bytes} bytes is more than a container may have here ({max} MiB)");
            return Err(self.invalid(node, "mem_limit", reason));
        }
        Ok(megabytes)
    }

    fn cpu_shares(&self, node: &Node) -> Result<u32, Problem> {
        let n = self.integer(node, "cpu_shares")?;
        match u32::try_from(n) {
            Ok(shares) if CPU_SHARES.contains(&n) => Ok(shares),
            _ => {
                let (low, high) = (CPU_SHARES.start(), CPU_SHARES.end());
                Err(self.invalid(node, "cpu_shares", format!("{n} is not between {low} and {high}")))
            }
        }
    }

    /// `command`/`entrypoint`: a list of words, or a string split like a shell splits words.
    fn words(&self, node: &Node, key: &str) -> Result<Vec<String>, Problem> {
        match &node.value {
            Value::Str(text) => values::shell_words(text).map_err(|r| self.invalid(node, key, r)),
            Value::Seq(items) => items
                .iter()
                .map(|item| match &item.value {
                    Value::Str(_) | Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                        Ok(item.value.scalar_text().unwrap_or_default())
                    }
                    _ => Err(self.wrong_type(item, key, "a string")),
                })
                .collect(),
            _ => Err(self.wrong_type(node, key, "a string or a list of strings")),
        }
    }

    fn restart(
        &self,
        node: &Node,
        key: &str,
        parse: fn(&str) -> Result<Restart, String>,
    ) -> Result<Restart, Problem> {
        match &node.value {
            Value::Str(text) => parse(text).map_err(|r| self.invalid(node, key, r)),
            // JSON has no unquoted `no`; `false` means the same.
            Value::Bool(false) => Ok(Restart::No),
            _ => Err(self.wrong_type(node, key, "a restart policy")),
        }
    }

    /// `restart` and Tutum's `autorestart` say the same thing; both may be given if they agree.
    fn one_restart_policy(
        &self,
        restart: Option<(Restart, &Node)>,
        autorestart: Option<(Restart, &Node)>,
    ) -> Result<Restart, Problem> {
        match (restart, autorestart) {
            (Some((r, r_node)), Some((a, a_node)))
                if std::mem::discriminant(&r) != std::mem::discriminant(&a) =>
            {
                let (r_text, a_text) = (r_node.value.scalar_text(), a_node.value.scalar_text());
                let (r_text, a_text) = (r_text.unwrap_or_default(), a_text.unwrap_or_default());
                let reason =
                    format!("{a_text:?} contradicts restart {r_text:?}; give only one of the two keys");
                Err(self.invalid(a_node, "autorestart", reason))
            }
            (Some((r, _)), _) | (None, Some((r, _))) => Ok(r),
            (None, None) => Ok(Restart::No),
        }
    }
}
