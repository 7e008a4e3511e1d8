//! Each node's assignments (design §4): what placement wants its agent to run, with
//! Consul-style blocking queries (`?index=N&wait=30s`).

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::routing::get;
use serde::Deserialize;

use super::error::ApiError;
use super::types::AssignmentList;
use super::{AppState, Routes, query, render};
use crate::control::Caller;
use crate::model::Label;

/// Longest a blocking assignment query may wait.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// Routes that may wait up to [`MAX_WAIT`], outside the API's request timeout.
pub fn routes() -> Routes {
    Routes::new().route("/v1/nodes/{node}/assignments", get(assignments))
}

/// `?index=N&wait=30s` of a blocking query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BlockingParams {
    #[serde(default)]
    index: u64,
    #[serde(default, deserialize_with = "wait")]
    wait: Duration,
}

fn wait<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    query::duration(&text, MAX_WAIT).map_err(serde::de::Error::custom)
}

/// `GET /v1/nodes/{node}/assignments?index=&wait=`: what the node must run. With an index,
/// answers as soon as the node's assignments change past it, when `wait` runs out, or when
/// the server shuts down.
async fn assignments(
    State(app): State<AppState>,
    caller: Caller,
    Path(node): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<AssignmentList>, ApiError> {
    let node = Label::parse("node", &node)?;
    let params: BlockingParams = query::parse(raw.as_deref())?;
    let done = app
        .control
        .assignments(caller, node, params.index, params.wait)
        .await?;
    Ok(Json(AssignmentList {
        node: done.value.node.to_string(),
        index: done.value.index,
        assignments: done
            .value
            .work
            .iter()
            .map(|w| render::work(w, &app.apex))
            .collect(),
        dns_ttl: app.dns_ttl,
        serial: done.serial,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_parameters() {
        let parse = |q| query::parse::<BlockingParams>(Some(q)).map(|p| (p.index, p.wait));
        assert_eq!(parse("").ok(), Some((0, Duration::ZERO)));
        assert_eq!(parse("index=7&wait=30s").ok(), Some((7, Duration::from_secs(30))));
        assert_eq!(
            parse("wait=1e20").ok(),
            Some((0, MAX_WAIT)),
            "capped, no overflow"
        );
        for bad in ["wait=-1s", "wait=soon", "index=-1", "colour=blue", "wait=NaN"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
