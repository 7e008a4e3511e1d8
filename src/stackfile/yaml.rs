//! The YAML reader: serde-saphyr with budgets, into the shared tree.
//!
//! Every node is read through serde-saphyr's [`Spanned`], which gives its line (for an alias,
//! the line where the alias is used). Parse budgets are the crate's own: nesting depth, node
//! and event counts, anchors, aliases and the events an alias may replay, which is what stops
//! an alias bomb ("billion laughs") after a few tens of thousands of values.

use serde::de::{self, Deserializer, MapAccess, SeqAccess};
use serde_saphyr::Spanned;
use serde_saphyr::budget::BudgetBreach;

use super::document::{At, Node, OVER_LIMITS, Source, Value, ValueVisitor};
use super::error::{ErrorKind, StackfileError};
use super::{MAX_BODY_BYTES, MAX_DEPTH, MAX_NODES};

/// Aliases (`*name`) may replay at most this many parse events in total: generous for anchors
/// shared between services, far below what an alias bomb needs to hurt.
const MAX_REPLAYED_EVENTS: usize = 50_000;

fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.flow_nesting_limit = MAX_DEPTH;
    budget.max_nodes = MAX_NODES;
    budget.max_events = 4 * MAX_NODES;
    // Two, so that a second document is reported as such (MultipleDocuments), not as a budget.
    budget.max_documents = 2;
    budget.max_aliases = 10_000;
    budget.max_anchors = 10_000;
    budget.max_merge_keys = 10_000;
    budget.max_recorded_anchor_events = MAX_REPLAYED_EVENTS;
    budget.max_recorded_anchor_bytes = 4 * MAX_BODY_BYTES;
    budget.max_total_scalar_bytes = 4 * MAX_BODY_BYTES;

    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = MAX_REPLAYED_EVENTS;
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    // YAML 1.2 scalars: `restart: no` and `DEBUG: yes` stay strings instead of becoming false
    // and true, and `0755` / `1_000` stay as written in environment values.
    options.strict_booleans = true;
    options.leading_zero_numbers_as_strings = true;
    options.underscored_numbers_as_strings = true;
    // `.inf`/`.nan` as an environment value is text, not a float to refuse.
    options.non_finite_float_policy = serde_saphyr::NonFiniteFloatPolicy::AsString;
    options.reject_unsupported_tags = true;
    options.emit_comments = false;
    // Messages are one line; the caller has the body if it wants to show context.
    options.with_snippet = false;
    options
}

pub(super) fn read_yaml(text: &str) -> Result<Node, StackfileError> {
    serde_saphyr::from_str_with_options::<YamlNode>(text, yaml_options())
        .map(|node| node.0)
        .map_err(|e| yaml_error(&e))
}

/// A node read through [`Spanned`], which is how serde-saphyr hands out positions.
struct YamlNode(Node);

impl<'de> de::Deserialize<'de> for YamlNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<YamlValue>::deserialize(d)?;
        let at = At {
            line: spanned.referenced.line(),
            id: 0,
        };
        Ok(YamlNode(Node {
            value: spanned.value.0,
            at,
        }))
    }
}

struct YamlValue(Value);

impl<'de> de::Deserialize<'de> for YamlValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor { source: YamlSource })
            .map(YamlValue)
    }
}

#[derive(Clone, Copy)]
struct YamlSource;

impl<'de> Source<'de> for YamlSource {
    fn element<A: SeqAccess<'de>>(self, seq: &mut A) -> Result<Option<Node>, A::Error> {
        Ok(seq.next_element::<YamlNode>()?.map(|node| node.0))
    }

    fn entry<A: MapAccess<'de>>(self, map: &mut A) -> Result<Option<(Node, Node)>, A::Error> {
        let Some(key) = map.next_key::<YamlNode>()? else {
            return Ok(None);
        };
        Ok(Some((key.0, map.next_value::<YamlNode>()?.0)))
    }
}

/// Turns serde-saphyr's error into ours: budgets become `too_large`, repeated keys
/// `duplicate_key`, everything else `invalid_yaml` with the parser's own words.
fn yaml_error(e: &serde_saphyr::Error) -> StackfileError {
    use serde_saphyr::Error as E;
    let location = e.location();
    let line = location.map(|l| l.line()).filter(|&l| l > 0);
    let column = location.map(|l| l.column()).filter(|&c| c > 0);
    let at_line = |kind, detail: &str| StackfileError::new(kind, line, None, detail);
    match innermost(e) {
        E::Budget { breach, .. } => at_line(ErrorKind::TooLarge, &budget_detail(breach)),
        E::AliasReplayLimitExceeded { .. }
        | E::AliasExpansionLimitExceeded { .. }
        | E::AliasReplayStackDepthExceeded { .. } => at_line(
            ErrorKind::TooLarge,
            &format!("{OVER_LIMITS}: aliases (*name) expand to more than {MAX_REPLAYED_EVENTS} values"),
        ),
        E::ExternalMessage { source, .. } if is_nesting_limit(source) => at_line(
            ErrorKind::TooLarge,
            &format!("{OVER_LIMITS}: it nests more than {MAX_DEPTH} levels deep"),
        ),
        E::MultipleDocuments { .. } => StackfileError::new(
            ErrorKind::InvalidYaml,
            line,
            column,
            "invalid YAML: a second document starts here (---); a Stackfile is one document",
        ),
        E::DuplicateMappingKey { key, .. } => {
            let key = key.as_deref().map(|k| format!(" {k:?}")).unwrap_or_default();
            let detail = format!("duplicate key{key}: a key may appear only once in a mapping");
            at_line(ErrorKind::DuplicateKey, &detail)
        }
        inner => {
            let text = inner.to_string();
            let text = match (line, column) {
                (Some(l), Some(c)) => text
                    .strip_suffix(&format!(" at line {l}, column {c}"))
                    .unwrap_or(&text),
                _ => &text,
            };
            let detail = format!("invalid YAML: {text}");
            StackfileError::new(ErrorKind::InvalidYaml, line, column, &detail)
        }
    }
}

/// The YAML scanner's own nesting limit (set to [`MAX_DEPTH`] for flow collections `[[[…]]]`)
/// reports itself as a syntax error; it is a budget.
fn is_nesting_limit(source: &serde_saphyr::ExternalMessageSource) -> bool {
    use serde_saphyr::granit_parser::ErrorKind as ScanErrorKind;
    matches!(source, serde_saphyr::ExternalMessageSource::Parser(scan)
        if matches!(scan.kind(), ScanErrorKind::RecursionLimitExceeded))
}

/// The error under serde-saphyr's wrappers (source snippet, alias location).
fn innermost(e: &serde_saphyr::Error) -> &serde_saphyr::Error {
    match e {
        serde_saphyr::Error::WithSnippet { error, .. } | serde_saphyr::Error::AliasError { error, .. } => {
            innermost(error)
        }
        other => other,
    }
}

fn budget_detail(breach: &BudgetBreach) -> String {
    let why = match breach {
        BudgetBreach::Depth { .. } => format!("it nests more than {MAX_DEPTH} levels deep"),
        BudgetBreach::Nodes { .. } | BudgetBreach::Events { .. } => {
            format!("it has more than {MAX_NODES} values")
        }
        BudgetBreach::ScalarBytes { .. } => "its strings are too long".to_owned(),
        BudgetBreach::MergeKeys { .. } => "it has too many merge keys (<<)".to_owned(),
        _ => "its anchors and aliases (&name, *name) expand to too many values".to_owned(),
    };
    format!("{OVER_LIMITS}: {why}")
}
