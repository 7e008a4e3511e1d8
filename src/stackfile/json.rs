//! The JSON reader: serde_json into the shared tree, with the budgets serde_json lacks.
//!
//! serde_json has no spans, but it attaches the current line to any error a visitor raises.
//! Every node (keys included) gets a number in visiting order; to find the line of node `n`
//! the body is read a second time with a visitor that fails on purpose when it reaches node
//! `n`, and serde_json's error says where that was. This happens only on the error path, and
//! the second read is bounded by the same limits as the first.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess};

use super::document::{At, Node, OVER_LIMITS, Source, ValueVisitor};
use super::error::{ErrorKind, StackfileError};
use super::{MAX_DEPTH, MAX_NODES};

/// State shared by every node of one JSON read.
struct JsonCtx {
    next_id: Cell<u32>,
    /// Fail on purpose at this node (the locating read).
    target: Option<u32>,
    depth: Cell<usize>,
    /// Set when a budget stopped the read, so the error is `too_large`, not `invalid_json`.
    over_budget: Cell<Option<JsonLimit>>,
}

/// The budgets the JSON reader enforces itself (serde_json only limits recursion, at 128).
#[derive(Debug, Clone, Copy)]
enum JsonLimit {
    Depth,
    Values,
}

impl fmt::Display for JsonLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonLimit::Depth => write!(f, "it nests more than {MAX_DEPTH} levels deep"),
            JsonLimit::Values => write!(f, "it has more than {MAX_NODES} values"),
        }
    }
}

impl JsonCtx {
    fn new(target: Option<u32>) -> Self {
        JsonCtx {
            next_id: Cell::new(0),
            target,
            depth: Cell::new(0),
            over_budget: Cell::new(None),
        }
    }

    fn over<E: de::Error>(&self, limit: JsonLimit) -> E {
        self.over_budget.set(Some(limit));
        E::custom(limit)
    }
}

const LOCATED: &str = "located";

pub(super) fn read_json(text: &str) -> Result<Node, StackfileError> {
    let ctx = JsonCtx::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let root = JsonSeed { ctx: &ctx }
        .deserialize(&mut de)
        .and_then(|root| de.end().map(|()| root));
    root.map_err(|e| {
        let line = Some(e.line() as u64).filter(|&l| l > 0);
        let column = Some(e.column() as u64).filter(|&c| c > 0);
        if let Some(why) = ctx.over_budget.get() {
            let detail = format!("{OVER_LIMITS}: {why}");
            return StackfileError::new(ErrorKind::TooLarge, line, None, &detail);
        }
        let text = e.to_string();
        let text = match (line, column) {
            (Some(l), Some(c)) => text
                .strip_suffix(&format!(" at line {l} column {c}"))
                .unwrap_or(&text),
            _ => &text,
        };
        StackfileError::new(
            ErrorKind::InvalidJson,
            line,
            column,
            &format!("invalid JSON: {text}"),
        )
    })
}

/// The line of the JSON node numbered `id`: read again, stop there, ask serde_json where.
pub(super) fn json_line(text: &str, id: u32) -> Option<u64> {
    let ctx = JsonCtx::new(Some(id));
    let mut de = serde_json::Deserializer::from_str(text);
    match (JsonSeed { ctx: &ctx }).deserialize(&mut de) {
        Err(e) if e.to_string().starts_with(LOCATED) => Some(e.line() as u64).filter(|&l| l > 0),
        _ => None,
    }
}

#[derive(Clone, Copy)]
struct JsonSeed<'c> {
    ctx: &'c JsonCtx,
}

impl<'de> DeserializeSeed<'de> for JsonSeed<'_> {
    type Value = Node;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        let id = self.ctx.next_id.get();
        if id as usize >= MAX_NODES {
            return Err(self.ctx.over(JsonLimit::Values));
        }
        self.ctx.next_id.set(id + 1);
        let value = d.deserialize_any(ValueVisitor {
            source: JsonSource { ctx: self.ctx, id },
        })?;
        Ok(Node {
            value,
            at: At { line: 0, id },
        })
    }
}

#[derive(Clone, Copy)]
struct JsonSource<'c> {
    ctx: &'c JsonCtx,
    id: u32,
}

impl<'de> Source<'de> for JsonSource<'_> {
    fn check<E: de::Error>(self) -> Result<(), E> {
        if self.ctx.target == Some(self.id) {
            Err(E::custom(LOCATED))
        } else {
            Ok(())
        }
    }

    fn enter<E: de::Error>(self) -> Result<(), E> {
        let depth = self.ctx.depth.get() + 1;
        if depth > MAX_DEPTH {
            return Err(self.ctx.over(JsonLimit::Depth));
        }
        self.ctx.depth.set(depth);
        Ok(())
    }

    fn leave(self) {
        self.ctx.depth.set(self.ctx.depth.get() - 1);
    }

    fn element<A: SeqAccess<'de>>(self, seq: &mut A) -> Result<Option<Node>, A::Error> {
        seq.next_element_seed(JsonSeed { ctx: self.ctx })
    }

    fn entry<A: MapAccess<'de>>(self, map: &mut A) -> Result<Option<(Node, Node)>, A::Error> {
        let Some(key) = map.next_key_seed(JsonSeed { ctx: self.ctx })? else {
            return Ok(None);
        };
        Ok(Some((key, map.next_value_seed(JsonSeed { ctx: self.ctx })?)))
    }
}
