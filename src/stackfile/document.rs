//! The positioned tree both readers build, and the serde visitor they share.
//!
//! Both formats produce the same [`Node`] tree, so the Stackfile rules in `service.rs` are
//! written once. Positions work differently per format: `yaml.rs` gets every node's line from
//! serde-saphyr directly; `json.rs` numbers the nodes and recovers a line from serde_json only
//! when an error needs one. `read.rs` chooses the reader; this module knows neither.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use super::error::ErrorKind;

/// The start of every budget message.
pub(super) const OVER_LIMITS: &str = "the Stackfile is over the parser's limits";

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

/// The text of a key, if it is a scalar. Numbers and booleans as written in decimal / `true`.
pub(super) fn key_text(key: &Node) -> Option<String> {
    key.value.scalar_text()
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
