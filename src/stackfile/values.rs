//! The small grammars inside Stackfile values: port specs, memory sizes, shell-style command
//! words and restart policies, plus the "did you mean" suggestion for misspelt keys.
//!
//! Each function returns the reason a value was refused, written to follow
//! `service "web", ports: ` in the final message; the caller adds the service, key and line.

use crate::model::{PortSpec, Protocol};

use super::Restart;

/// What a port entry may look like, for error messages.
pub(super) const PORT_FORMS: &str = "a port is \"CONTAINER\" or \"HOST:CONTAINER\", optionally \
     followed by \"/tcp\" or \"/udp\": \"80\", \"80:80\", \"8053:53/udp\", \"53/udp\"";

/// `"80"`, `"80:80"`, `"8053:53/udp"`, `"53/udp"`.
pub(super) fn port_spec(text: &str) -> Result<PortSpec, String> {
    let (ports, protocol) = match text.rsplit_once('/') {
        Some((ports, protocol)) => (ports, parse_protocol(text, protocol)?),
        None => (text, Protocol::Tcp),
    };
    let parts: Vec<&str> = ports.split(':').collect();
    let (host, container) = match parts.as_slice() {
        [container] => (None, *container),
        [host, container] => (Some(*host), *container),
        [_, _, _] => {
            return Err(format!(
                "{text:?} binds to one address of the node, which is not supported; publish \
                 \"HOST:CONTAINER\" and the port listens on the node's address"
            ));
        }
        _ => return Err(format!("{text:?} is not a port; {PORT_FORMS}")),
    };
    let container_port = port_number(text, container, "container port")?;
    let host_port = host.map(|h| port_number(text, h, "host port")).transpose()?;
    Ok(PortSpec {
        container_port,
        host_port,
        protocol,
    })
}

fn parse_protocol(text: &str, protocol: &str) -> Result<Protocol, String> {
    match protocol.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        _ => Err(format!(
            "{text:?} has protocol {protocol:?}; the protocols are tcp and udp"
        )),
    }
}

fn port_number(text: &str, part: &str, what: &str) -> Result<u16, String> {
    if part.is_empty() {
        return Err(format!("{text:?} has no {what}; {PORT_FORMS}"));
    }
    if part.contains('-') && part.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        return Err(format!(
            "{text:?} is a port range, which is not supported; list each port"
        ));
    }
    if !part.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{text:?} is not a port; {PORT_FORMS}"));
    }
    // At most 5 significant digits fit; more (after leading zeros) is out of range anyway.
    let number = part.trim_start_matches('0');
    let value = if number.len() > 5 {
        u32::MAX
    } else {
        number.parse::<u32>().unwrap_or(0)
    };
    in_port_range(value.into()).map_err(|range| format!("{text:?}: {what} {part} is {range}"))
}

/// A port given as a number (`ports: [80]`).
pub(super) fn port_integer(value: i128) -> Result<u16, String> {
    in_port_range(value).map_err(|range| format!("port {value} is {range}"))
}

fn in_port_range(value: i128) -> Result<u16, &'static str> {
    match u16::try_from(value) {
        Ok(0) => Err("not a port: ports are 1-65535"),
        Ok(port) => Ok(port),
        Err(_) => Err("out of range: ports are 1-65535"),
    }
}

/// What a memory size may look like, for error messages.
pub(super) const SIZE_FORMS: &str = "write a number of bytes (268435456) or a number with a unit \
     b, k, m, g or t, as Docker does (\"100k\", \"512m\", \"1g\", \"1.5g\")";

/// Docker's memory sizes: `268435456`, `100k`, `512m`, `256M`, `1g`, `1.5g`, `512mb`, `1GiB`.
/// Units are binary (k = 1024), as in `docker run --memory`.
pub(super) fn memory_bytes(text: &str) -> Result<u64, String> {
    let garbage = || format!("{text:?} is not a memory size; {SIZE_FORMS}");
    let lower = text.to_ascii_lowercase();
    let number_end = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(number_end);
    let unit = unit.strip_prefix(' ').unwrap_or(unit);
    let shift = match unit {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(garbage()),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let fraction_ok = fraction.len() <= 9 && digits_only(fraction) && !(number.ends_with('.'));
    if whole.is_empty() || whole.len() > 20 || !digits_only(whole) || !fraction_ok {
        return Err(garbage());
    }
    let whole: u128 = whole.parse().map_err(|_| garbage())?;
    let fraction_value: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().map_err(|_| garbage())?
    };
    let scale = 10u128.pow(fraction.len() as u32);
    let bytes = (whole << shift) + ((fraction_value << shift) / scale);
    u64::try_from(bytes).map_err(|_| format!("{text:?} is larger than any machine's memory"))
}

/// Megabytes for placement: rounded up, so a limit is never under-reserved. 0 means no limit,
/// as with `docker run --memory 0`.
pub(super) fn megabytes(bytes: u64) -> Option<u64> {
    const MIB: u64 = 1 << 20;
    (bytes > 0).then(|| bytes.div_ceil(MIB))
}

/// Splits a command string into words the way a POSIX shell splits words, as Docker Compose
/// does (`shlex.split`): blanks separate words, `'…'` is literal, `"…"` is literal except for
/// `\"`, `\\`, `\$` and `` \` ``, and a backslash outside quotes escapes the next character.
/// Nothing is expanded: `$HOME`, `*`, `&&` and `#` are ordinary characters. A program that
/// needs a shell says so: `command: ["sh", "-c", "…"]`.
pub(super) fn shell_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(format!("{text:?} has a ' that is not closed")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(format!("{text:?} has a \" that is not closed")),
                        },
                        Some(c) => word.push(c),
                        None => return Err(format!("{text:?} has a \" that is not closed")),
                    }
                }
            }
            '\\' => match chars.next() {
                // A line continuation joins lines; it does not start a word.
                Some('\n') => {}
                Some(c) => {
                    in_word = true;
                    word.push(c);
                }
                None => return Err(format!("{text:?} ends with a backslash")),
            },
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// `restart`: `no`, `on-failure`, `on-failure:N`, `always`; and `unless-stopped`, which on a
/// platform is `always` (only the platform ever stops a container).
pub(super) fn restart(text: &str) -> Result<Restart, String> {
    let lower = text.to_ascii_lowercase();
    match lower.as_str() {
        "no" => return Ok(Restart::No),
        "on-failure" => return Ok(Restart::OnFailure { max_retries: None }),
        "always" | "unless-stopped" => return Ok(Restart::Always),
        _ => {}
    }
    if let Some(count) = lower.strip_prefix("on-failure:")
        && let Ok(n) = count.parse::<u32>()
    {
        return Ok(Restart::OnFailure { max_retries: Some(n) });
    }
    Err(format!(
        "{text:?} is not a restart policy; use \"no\", \"on-failure\", \"on-failure:N\" or \"always\""
    ))
}

/// Tutum's `autorestart`: `OFF`, `ON_FAILURE`, `ALWAYS` (any case).
pub(super) fn autorestart(text: &str) -> Result<Restart, String> {
    match text.to_ascii_lowercase().as_str() {
        "off" => Ok(Restart::No),
        "on_failure" => Ok(Restart::OnFailure { max_retries: None }),
        "always" => Ok(Restart::Always),
        _ => Err(format!(
            "{text:?} is not an autorestart policy; use OFF, ON_FAILURE or ALWAYS"
        )),
    }
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a typo.
pub(super) fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    let limit = (word.chars().count() / 3).clamp(1, 3);
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(&word, candidate), candidate))
        .filter(|&(distance, _)| distance <= limit)
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(container_port: u16, host_port: Option<u16>, protocol: Protocol) -> PortSpec {
        PortSpec {
            container_port,
            host_port,
            protocol,
        }
    }

    #[test]
    fn port_forms() {
        assert_eq!(port_spec("80"), Ok(spec(80, None, Protocol::Tcp)));
        assert_eq!(port_spec("80:80"), Ok(spec(80, Some(80), Protocol::Tcp)));
        assert_eq!(port_spec("8053:53/udp"), Ok(spec(53, Some(8053), Protocol::Udp)));
        assert_eq!(port_spec("53/udp"), Ok(spec(53, None, Protocol::Udp)));
        assert_eq!(port_spec("443/TCP"), Ok(spec(443, None, Protocol::Tcp)));
        assert_eq!(port_spec("65535:00080"), Ok(spec(80, Some(65535), Protocol::Tcp)));
    }

    #[test]
    fn bad_ports_say_why() {
        let reason = |text| port_spec(text).expect_err(text);
        assert!(reason("0").contains("ports are 1-65535"));
        assert!(reason("70000").contains("out of range"));
        assert!(reason("99999999999999999999").contains("out of range"));
        assert!(reason("0:80").contains("host port 0"));
        assert!(reason("80:0").contains("container port 0"));
        assert!(reason("80/sctp").contains("protocols are tcp and udp"));
        assert!(reason("8000-8010").contains("range"));
        assert!(reason("127.0.0.1:80:80").contains("binds to one address"));
        assert!(reason(":80").contains("no host port"));
        assert!(reason("80:").contains("no container port"));
        assert!(reason("http").contains("is not a port"));
        assert!(reason("").contains("no container port"));
        assert!(reason("+80").contains("is not a port"));
        assert!(reason("1:2:3:4").contains("is not a port"));
        assert_eq!(
            port_integer(0),
            Err("port 0 is not a port: ports are 1-65535".to_owned())
        );
        assert!(port_integer(-1).is_err());
        assert!(port_integer(65536).is_err());
    }

    #[test]
    fn memory_forms() {
        assert_eq!(memory_bytes("268435456"), Ok(268_435_456));
        assert_eq!(memory_bytes("512m"), Ok(512 << 20));
        assert_eq!(memory_bytes("256M"), Ok(256 << 20));
        assert_eq!(memory_bytes("1g"), Ok(1 << 30));
        assert_eq!(memory_bytes("1.5g"), Ok(3 << 29));
        assert_eq!(memory_bytes("100k"), Ok(102_400));
        assert_eq!(memory_bytes("512mb"), Ok(512 << 20));
        assert_eq!(memory_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(memory_bytes("2 t"), Ok(2 << 40));
        assert_eq!(memory_bytes("64b"), Ok(64));
        for garbage in [
            "", "m", "12x", "1.5.5g", "1.g", ".5g", "-1g", "1 g b", "1e9", "lots", "1  g",
        ] {
            assert!(memory_bytes(garbage).is_err(), "{garbage:?} accepted");
        }
        assert!(
            memory_bytes("99999999999t")
                .expect_err("huge")
                .contains("larger than")
        );
        assert_eq!(megabytes(102_400), Some(1));
        assert_eq!(megabytes(512 << 20), Some(512));
        assert_eq!(megabytes((512 << 20) + 1), Some(513));
        assert_eq!(megabytes(0), None);
    }

    #[test]
    fn shell_words_split_like_compose() {
        let words = |text| shell_words(text).expect(text);
        assert_eq!(
            words("bundle exec thin -p 3000"),
            ["bundle", "exec", "thin", "-p", "3000"]
        );
        assert_eq!(words("  echo   'Hello World!'  "), ["echo", "Hello World!"]);
        assert_eq!(
            words(r#"sh -c "echo \"$HOME\" \x""#),
            ["sh", "-c", r#"echo "$HOME" \x"#]
        );
        assert_eq!(words(r"a\ b c"), ["a b", "c"]);
        assert_eq!(words("a \\\n b"), ["a", "b"]);
        assert_eq!(words("''"), [""]);
        assert_eq!(
            words("echo $HOME && ls # not a comment"),
            ["echo", "$HOME", "&&", "ls", "#", "not", "a", "comment"]
        );
        assert!(words("").is_empty());
        assert!(shell_words("echo 'oops").is_err());
        assert!(shell_words("echo \"oops").is_err());
        assert!(shell_words("echo oops\\").is_err());
    }

    #[test]
    fn restart_policies() {
        assert_eq!(restart("no"), Ok(Restart::No));
        assert_eq!(restart("always"), Ok(Restart::Always));
        assert_eq!(restart("unless-stopped"), Ok(Restart::Always));
        assert_eq!(
            restart("on-failure"),
            Ok(Restart::OnFailure { max_retries: None })
        );
        assert_eq!(
            restart("on-failure:5"),
            Ok(Restart::OnFailure { max_retries: Some(5) })
        );
        assert!(restart("on-failure:x").is_err());
        assert!(restart("sometimes").is_err());
        assert_eq!(
            autorestart("ON_FAILURE"),
            Ok(Restart::OnFailure { max_retries: None })
        );
        assert_eq!(autorestart("OFF"), Ok(Restart::No));
        assert_eq!(autorestart("always"), Ok(Restart::Always));
        assert!(autorestart("on-failure").is_err());
    }

    #[test]
    fn suggestions() {
        let keys = ["image", "ports", "links", "environment", "target_num_containers"];
        assert_eq!(closest("imagee", keys), Some("image"));
        assert_eq!(closest("port", keys), Some("ports"));
        assert_eq!(closest("enviroment", keys), Some("environment"));
        assert_eq!(
            closest("target_num_container", keys),
            Some("target_num_containers")
        );
        assert_eq!(closest("zzz", keys), None);
    }
}

/// A host name (`hostname`, `domainname`, `extra_hosts`): labels of letters, digits and
/// hyphens, none starting or ending with a hyphen, at most 63 characters each and 253 in all.
pub(super) fn hostname(text: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{:?} is not a host name: {why}", truncated(text)));
    if text.is_empty() || text.len() > 253 {
        return bad("it must be 1-253 characters");
    }
    // Docker takes `_` in host names (service names of Compose files): so does this.
    for label in text.trim_end_matches('.').split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return bad("labels are letters, digits, '_' and inner hyphens, at most 63 characters");
        }
    }
    Ok(())
}

/// An `expose` entry: `"8080"`, `"53/udp"` or a range `"8080-8085/tcp"`, ports 1-65535.
pub(super) fn exposed_port(text: &str) -> Result<(), String> {
    let (ports, proto) = text.split_once('/').unwrap_or((text, "tcp"));
    let port = |p: &str| {
        Some(p)
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u32>().ok())
            .filter(|n| (1..=65535).contains(n))
    };
    let valid = match ports.split_once('-') {
        Some((first, last)) => matches!((port(first), port(last)), (Some(a), Some(b)) if a <= b),
        None => port(ports).is_some(),
    };
    if !valid || !matches!(proto, "tcp" | "udp" | "sctp") {
        return Err(format!(
            "{:?} is not a port; write a number 1-65535 or a range like 8080-8085, optionally with /tcp, /udp or /sctp",
            truncated(text)
        ));
    }
    Ok(())
}

/// An `extra_hosts` entry: a host name and an IPv4 or IPv6 address (`[::1]` as Compose
/// writes it), or Docker's `host-gateway`.
pub(super) fn host_entry(host: &str, address: &str) -> Result<(), String> {
    hostname(host)?;
    let bare = address
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(address);
    if address != "host-gateway" && bare.parse::<std::net::IpAddr>().is_err() {
        return Err(format!(
            "{:?} is not an IPv4 or IPv6 address (in \"{host}:{address}\")",
            truncated(address)
        ));
    }
    Ok(())
}

/// An image reference by the OCI distribution grammar (what `docker pull` takes):
/// `[registry[:port]/]path[:tag][@algorithm:hex]`, the path lower-case components joined by
/// `/`, each `[a-z0-9]+` separated by `.`, `_`, `__` or hyphens; a tag `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub(super) fn image_reference(text: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{:?} is not an image reference: {why}", truncated(text)));
    let (name, digest) = match text.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (text, None),
    };
    if let Some(digest) = digest {
        let ok = digest.split_once(':').is_some_and(|(algorithm, hex)| {
            !algorithm.is_empty()
                && algorithm
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
                && hex.len() >= 32
                && hex.bytes().all(|b| b.is_ascii_hexdigit())
        });
        if !ok {
            return bad("a digest is algorithm:hex, as sha256:<64 hex digits>");
        }
    }
    // A tag follows the last ':' when no '/' comes after it (a ':' before a '/' is a port).
    let (name, tag) = match name.rfind(':') {
        Some(at) if !name[at..].contains('/') => (&name[..at], Some(&name[at + 1..])),
        _ => (name, None),
    };
    if let Some(tag) = tag {
        let ok = !tag.is_empty()
            && tag.len() <= 128
            && tag
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !ok {
            return bad("a tag is letters, digits, '_', '.' and '-', not starting with '.' or '-'");
        }
    }
    if name.is_empty() || name.len() > 255 {
        return bad("the name must be 1-255 characters");
    }
    let mut components: Vec<&str> = name.split('/').collect();
    // The first component is a registry when it has a '.' or a ':', or is "localhost".
    if components.len() > 1 {
        let first = components[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            let (host, port) = first.split_once(':').unwrap_or((first, "1"));
            let host_ok = hostname(host).is_ok();
            let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
            if !host_ok || !port_ok {
                return bad("the registry is a host name with an optional :port");
            }
            components.remove(0);
        }
    }
    for component in components {
        if !path_component(component) {
            return bad(
                "path components are lower-case letters and digits, separated by '.', '_', '__' or '-'",
            );
        }
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn path_component(text: &str) -> bool {
    let bytes = text.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &text[start..i];
        let ok =
            separator == "." || separator == "_" || separator == "__" || separator.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// At most 60 characters of a value, for a message that stays readable.
fn truncated(text: &str) -> String {
    if text.chars().count() <= 60 {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(57).collect();
    cut.push_str("...");
    cut
}

#[cfg(test)]
mod checks {
    use super::*;

    #[test]
    fn image_references_follow_the_distribution_grammar() {
        for good in [
            "x",
            "nginx",
            "tutum/redis:latest",
            "honeniq/quickstart-ruby:latest",
            "registry.example:5000/team/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "localhost/a_b__c.d-e--f:v1.2-rc_3",
            "stackdns-test/busybox:1",
        ] {
            assert_eq!(image_reference(good), Ok(()), "{good}");
        }
        for bad in [
            "$(id)",
            "-rf",
            "UPPER/Case",
            "a//b",
            "a:",
            "a:-x",
            "a@sha256:zz",
            "a/b_",
            "reg:0/a",
        ] {
            assert!(image_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts_ports_and_entries() {
        assert!(hostname("web-1.example").is_ok());
        assert!(hostname(&"x".repeat(600_000)).is_err());
        assert!(hostname("-a").is_err() && hostname("a..b").is_err() && hostname("").is_err());
        for bad in [
            "99999",
            "0",
            "-5",
            "abc",
            "80/icmp",
            "+80",
            "9000-8000",
            "1-70000",
        ] {
            assert!(exposed_port(bad).is_err(), "{bad}");
        }
        for good in ["8080", "53/udp", "8080/tcp", "8080-8085/tcp", "9/sctp"] {
            assert!(exposed_port(good).is_ok(), "{good}");
        }
        assert!(host_entry("db", "10.0.0.5").is_ok() && host_entry("db", "::1").is_ok());
        assert!(
            host_entry("h", "[::1]").is_ok() && host_entry("host.docker.internal", "host-gateway").is_ok()
        );
        assert!(hostname("my_service").is_ok(), "Docker takes underscores");
        assert!(host_entry("bad", "").is_err() && host_entry("", "::").is_err());
    }
}
