//! From body bytes to a positioned tree: format detection, the tree both readers build, and
//! turning a node's position back into a line number for error messages.
//!
//! Both formats produce the same [`Node`] tree, so the Stackfile rules in `service.rs` are
//! written once. Positions work differently per format: `yaml.rs` gets every node's line from
//! serde-saphyr directly; `json.rs` numbers the nodes and recovers a line from serde_json only
//! when an error needs one.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use super::MAX_BODY_BYTES;
use super::error::{ErrorKind, StackfileError};
use super::json::{json_line, read_json};
use super::yaml::read_yaml;

/// The start of every budget message.
pub(super) const OVER_LIMITS: &str = "the Stackfile is over the parser's limits";

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

/// Where a node came from: its line (YAML), or its visiting order (JSON, resolved on demand).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct At {
    /// 1-based; 0 when unknown (JSON before resolution).
    pub line: u64,
    /// Pre-order number of the node in a JSON body, keys included.
    pub id: u32,
}

/// One YAML/JSON value with its position.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Node {
    pub value: Value,
    pub at: At,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in document order; keys are nodes so that they have positions too.
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// How the value is called in messages: "found a list".
    pub(super) fn describe(&self) -> &'static str {
        match self {
            Value::Null => "an empty value",
            Value::Bool(_) => "true/false",
            Value::Int(_) => "a number",
            Value::Float(_) => "a fractional number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// A scalar as text, the way environment values and keys are written: numbers in decimal,
    /// booleans as `true`/`false`. `None` for null and collections.
    pub(super) fn scalar_text(&self) -> Option<String> {
        match self {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Null | Value::Seq(_) | Value::Map(_) => None,
        }
    }
}

/// A rule broken at a node: the error before its position is turned into a line.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Problem {
    pub kind: ErrorKind,
    pub at: At,
    pub detail: String,
}

impl Problem {
    pub(super) fn new(kind: ErrorKind, at: At, detail: impl Into<String>) -> Self {
        Problem {
            kind,
            at,
            detail: detail.into(),
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

/// The text of a key, if it is a scalar. Numbers and booleans as written in decimal / `true`.
pub(super) fn key_text(key: &Node) -> Option<String> {
    key.value.scalar_text()
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

// ---------------------------------------------------------------------------------------------
// The visitor both readers share

/// What differs between the readers: how children are read, and the JSON-only checks.
pub(super) trait Source<'de>: Copy {
    /// Called first in every visit: the locating read fails here when it reaches its node.
    fn check<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    /// Entering a list or mapping (depth budget).
    fn enter<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn leave(self) {}
    fn element<A: SeqAccess<'de>>(self, seq: &mut A) -> Result<Option<Node>, A::Error>;
    fn entry<A: MapAccess<'de>>(self, map: &mut A) -> Result<Option<(Node, Node)>, A::Error>;
}

pub(super) struct ValueVisitor<S> {
    pub source: S,
}

impl<'de, S: Source<'de>> Visitor<'de> for ValueVisitor<S> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, number, boolean, null, list or mapping")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.source.check()?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.source.check()?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.source.check()?;
        Ok(Value::Int(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.source.check()?;
        Ok(Value::Int(v.into()))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        self.source.check()?;
        Ok(Value::Int(v))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        self.source.check()?;
        i128::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::custom("integer too large"))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.source.check()?;
        Ok(Value::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.source.check()?;
        Ok(Value::Str(v.to_owned()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.source.check()?;
        self.source.enter()?;
        let mut items = Vec::new();
        while let Some(item) = self.source.element(&mut seq)? {
            items.push(item);
        }
        self.source.leave();
        Ok(Value::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.source.check()?;
        self.source.enter()?;
        let mut entries = Vec::new();
        while let Some(entry) = self.source.entry(&mut map)? {
            entries.push(entry);
        }
        self.source.leave();
        Ok(Value::Map(entries))
    }
}
