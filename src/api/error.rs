//! The one error type of the HTTP API and its JSON shape:
//! `{"error":{"code":"stale_generation","message":"…"}}`.
//!
//! Codes are stable and documented in `docs/api.md`; messages name the field, the value and
//! the rule. Internal causes (storage failures) are logged and described without detail.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::control::ControlError;
use crate::model::InvalidLabel;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Detail {
                code: self.code,
                message: &self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            // Every 503 is worth retrying, soon.
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

impl From<InvalidLabel> for ApiError {
    fn from(e: InvalidLabel) -> Self {
        Self::bad_request("invalid_name", e.to_string())
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let message = e.to_string();
        match e {
            ControlError::NotFound { .. } => Self::new(StatusCode::NOT_FOUND, "not_found", message),
            ControlError::StaleGeneration { .. } => {
                Self::new(StatusCode::CONFLICT, "stale_generation", message)
            }
            ControlError::Invalid { .. } => Self::bad_request("invalid_value", message),
            ControlError::Unauthorized => Self::unauthorized(message),
            ControlError::Forbidden(_) => Self::forbidden(message),
            ControlError::ReportRefused { code, .. } => Self::new(StatusCode::FORBIDDEN, code, message),
            ControlError::Storage(_) | ControlError::Unreadable | ControlError::Internal => {
                tracing::error!(error = %message, "request failed in storage");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "storage_failed",
                    "the change could not be stored and was not applied; retry, and check the server log",
                )
            }
            ControlError::NoRandomness(_) => {
                tracing::error!(error = %message, "no randomness for a token");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "no_randomness", message)
            }
            ControlError::Stopped => Self::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message),
            ControlError::Unavailable(_) => {
                tracing::warn!(error = %message, "request refused: the shared store is unavailable");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", message)
            }
            ControlError::NotLeader => Self::new(StatusCode::SERVICE_UNAVAILABLE, "not_leader", message),
            ControlError::QuotaExceeded { .. } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "quota_exceeded", message)
            }
            ControlError::Unplaceable { code, .. } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
            }
        }
    }
}
