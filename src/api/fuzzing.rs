//! Entry points for the fuzz targets in `fuzz/`: a request body or query string through the
//! same decoding and validation its handler applies, without a server. Not part of the API.
//!
//! Each returns whether the input was accepted; what matters to the fuzzer is that none of
//! them panics, whatever the bytes.

use super::types::{ContainerListRequest, ContainerRequest, LimitsRequest, NodeRequest, ScaleRequest};
use super::{assignments, decode_json, nodes, query, stacks};

/// `PUT /v1/nodes/{node}`.
pub fn node(body: &[u8]) -> bool {
    decode_json::<NodeRequest>(body)
        .and_then(nodes::node_spec)
        .is_ok()
}

/// `PUT /v1/nodes/{node}/containers/{user}/{stack}/{container}`.
pub fn container(body: &[u8]) -> bool {
    decode_json::<ContainerRequest>(body)
        .and_then(|r| {
            nodes::report(
                &r.service,
                r.address.as_deref(),
                r.ports,
                r.generation,
                r.ready,
                r.detail,
            )
        })
        .is_ok()
}

/// `PUT /v1/nodes/{node}/containers`.
pub fn container_list(body: &[u8]) -> bool {
    decode_json::<ContainerListRequest>(body)
        .and_then(nodes::list_reports)
        .is_ok()
}

/// `PATCH /v1/stacks/{user}/{stack}/services/{service}`.
pub fn scale(body: &[u8]) -> bool {
    decode_json::<ScaleRequest>(body).is_ok()
}

/// `PUT /v1/users/{user}/limits`.
pub fn limits(body: &[u8]) -> bool {
    decode_json::<LimitsRequest>(body).is_ok()
}

/// `PUT /v1/stacks/{user}/{stack}`: a Stackfile, under a policy that allows everything.
pub fn stackfile(body: &[u8], content_type: Option<&str>) -> bool {
    let policy = crate::stackfile::Policy {
        privileged: true,
        max_memory_mb: crate::stackfile::DEFAULT_MAX_MEMORY_MB,
    };
    crate::stackfile::parse_with(body, content_type, &policy).is_ok()
}

/// The query strings: a container stop, a blocking assignment query, a dry run.
pub fn query_string(raw: &str) -> bool {
    let stop = query::parse::<nodes::StopParams>(Some(raw))
        .and_then(|p| nodes::check_detail(p.detail.as_deref()))
        .is_ok();
    let blocking = query::parse::<assignments::BlockingParams>(Some(raw)).is_ok();
    let dry_run = query::parse::<stacks::DryRun>(Some(raw)).is_ok();
    stop || blocking || dry_run
}

/// A path segment that must be a label (node, user, stack, container, service).
pub fn label(segment: &str) -> bool {
    crate::model::Label::parse("name", segment).is_ok()
}
