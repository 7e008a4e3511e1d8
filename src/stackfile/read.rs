//! From body bytes to a checked tree: the size limit, format detection, UTF-8, the reader
//! for the format (`yaml.rs` or `json.rs`), repeated keys, and errors located by line.

use std::collections::HashSet;

use super::MAX_BODY_BYTES;
use super::document::{Node, Problem, Value, key_text};
use super::error::{ErrorKind, StackfileError};
use super::json::{json_line, read_json};
use super::yaml::read_yaml;

/// Which reader a body goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Yaml,
    Json,
}

impl Format {
    /// An explicit JSON media type (`application/json`, `…+json`) means JSON and a YAML one
    /// means YAML; anything else (absent, `text/plain`, `application/octet-stream`…) is JSON
    /// if the body starts with `{`, YAML otherwise.
    pub(super) fn detect(body: &[u8], content_type: Option<&str>) -> Format {
        let media_type = content_type
            .and_then(|ct| ct.split(';').next())
            .map(|mt| mt.trim().to_ascii_lowercase())
            .unwrap_or_default();
        if media_type == "application/json" || media_type.ends_with("+json") {
            return Format::Json;
        }
        let yaml_types = [
            "application/yaml",
            "application/x-yaml",
            "text/yaml",
            "text/x-yaml",
        ];
        if yaml_types.contains(&media_type.as_str()) || media_type.ends_with("+yaml") {
            return Format::Yaml;
        }
        let body = body.strip_prefix("\u{feff}".as_bytes()).unwrap_or(body);
        match body.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => Format::Json,
            _ => Format::Yaml,
        }
    }
}

/// A body read into a tree, kept with its text so errors can be located.
pub(super) struct Document<'a> {
    text: &'a str,
    format: Format,
    pub root: Node,
}

impl<'a> Document<'a> {
    /// Reads `body` within the size, depth and node budgets, and rejects repeated keys.
    pub(super) fn load(body: &'a [u8], content_type: Option<&str>) -> Result<Self, StackfileError> {
        if body.len() > MAX_BODY_BYTES {
            let detail = format!(
                "the Stackfile is {} bytes; the limit is {MAX_BODY_BYTES} bytes (1 MiB)",
                body.len()
            );
            return Err(StackfileError::new(ErrorKind::TooLarge, None, None, &detail));
        }
        let format = Format::detect(body, content_type);
        let text = std::str::from_utf8(body).map_err(|e| not_utf8(format, body, e))?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let root = match format {
            Format::Yaml => read_yaml(text)?,
            Format::Json => read_json(text)?,
        };
        let document = Document { text, format, root };
        match first_repeated_key(&document.root) {
            Some(problem) => Err(document.error(problem)),
            None => Ok(document),
        }
    }

    /// The error for `problem`, with the line of its node.
    pub(super) fn error(&self, problem: Problem) -> StackfileError {
        let line = match self.format {
            Format::Yaml => Some(problem.at.line).filter(|&line| line > 0),
            Format::Json => json_line(self.text, problem.at.id),
        };
        StackfileError::new(problem.kind, line, None, &problem.detail)
    }
}

fn not_utf8(format: Format, body: &[u8], e: std::str::Utf8Error) -> StackfileError {
    let valid = &body[..e.valid_up_to()];
    let line = valid.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
    let kind = match format {
        Format::Yaml => ErrorKind::InvalidYaml,
        Format::Json => ErrorKind::InvalidJson,
    };
    StackfileError::new(kind, Some(line), None, "the Stackfile is not valid UTF-8 text")
}

/// YAML rejects repeated keys in the parser; JSON does not, and a key like `80` and `"80"`
/// spelled differently in YAML would also pass. One walk catches both, and also keys that are
/// not scalars (`? [a, b]: x`), which no Stackfile rule can use.
fn first_repeated_key(node: &Node) -> Option<Problem> {
    match &node.value {
        Value::Seq(items) => items.iter().find_map(first_repeated_key),
        Value::Map(entries) => {
            let mut seen = HashSet::with_capacity(entries.len());
            for (key, value) in entries {
                let Some(text) = key_text(key) else {
                    let found = key.value.describe();
                    let detail = format!("a key must be a string or a number, not {found}");
                    return Some(Problem::new(ErrorKind::InvalidValue, key.at, detail));
                };
                if !seen.insert(text) {
                    return Some(repeated_key(key));
                }
                if let Some(problem) = first_repeated_key(value) {
                    return Some(problem);
                }
            }
            None
        }
        _ => None,
    }
}

fn repeated_key(key: &Node) -> Problem {
    let text = key_text(key).unwrap_or_default();
    let detail = format!("duplicate key {text:?}: a key may appear only once in a mapping");
    Problem::new(ErrorKind::DuplicateKey, key.at, detail)
}
