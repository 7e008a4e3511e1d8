//! Prometheus HTTP service discovery (`http_sd_configs`): every published port of every
//! container that answers in DNS, one target group each, labelled with whose it is and where
//! it runs. Scoped by the token like the stacks: a user sees their own containers, the admin
//! everyone's.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::routing::get;
use serde::Deserialize;

use super::error::ApiError;
use super::types::TargetGroup;
use super::{AppState, Routes, query};
use crate::control::{Caller, EndpointFilter};
use crate::model::Label;

pub fn routes() -> Routes {
    Routes::new().route("/v1/sd/prometheus", get(targets))
}

/// Exact-match filters, so one scrape job can take one container port (`?port=9100`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    user: Option<String>,
    stack: Option<String>,
    service: Option<String>,
    port: Option<u16>,
}

/// `GET /v1/sd/prometheus`.
async fn targets(
    State(app): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Json<Vec<TargetGroup>>, ApiError> {
    let params: Params = query::parse(raw.as_deref())?;
    if params.port == Some(0) {
        return Err(ApiError::bad_request(
            "invalid_value",
            "query parameter port=\"0\": a container port is 1 to 65535",
        ));
    }
    let label = |what, value: Option<String>| value.map(|v| Label::parse(what, &v)).transpose();
    let filter = EndpointFilter {
        user: label("user", params.user)?,
        stack: label("stack", params.stack)?,
        service: label("service", params.service)?,
        container_port: params.port,
    };
    let endpoints = app.control.endpoints(caller, filter).await?.value;
    Ok(Json(
        endpoints
            .into_iter()
            .map(|e| TargetGroup {
                targets: vec![SocketAddr::new(e.address, e.port).to_string()],
                labels: BTreeMap::from([
                    ("user".to_owned(), e.container.user.to_string()),
                    ("stack".to_owned(), e.container.stack.to_string()),
                    ("service".to_owned(), e.service.to_string()),
                    ("container".to_owned(), e.container.name.to_string()),
                    ("node".to_owned(), e.node.to_string()),
                    (
                        "__meta_stackdns_container_port".to_owned(),
                        e.container_port.to_string(),
                    ),
                    (
                        "__meta_stackdns_protocol".to_owned(),
                        e.protocol.as_str().to_owned(),
                    ),
                    (
                        "__meta_stackdns_fqdn".to_owned(),
                        crate::scheme::container_fqdn(&e.container, &app.apex),
                    ),
                ]),
            })
            .collect(),
    ))
}
