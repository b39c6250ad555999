//! The API's typed errors and how each becomes an HTTP answer: a status
//! code and a JSON body `{"error": kind, "message": text}`. A caller's
//! mistake is a 4xx that says what to fix; only our own failures are 5xx.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// What went wrong with a request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No credentials, or credentials we do not know.
    #[error("{0}")]
    Unauthorized(String),
    /// Known caller, wrong role or client.
    #[error("{0}")]
    Forbidden(String),
    /// A parameter or body the caller can fix.
    #[error("{0}")]
    BadRequest(String),
    /// No such thing (report run, file).
    #[error("{0}")]
    NotFound(String),
    /// Not ready yet (a report still running).
    #[error("{0}")]
    Conflict(String),
    /// A dependency is down and no stale answer is at hand.
    #[error("{0}")]
    Unavailable(String),
    /// Our own failure.
    #[error("{0}")]
    Internal(String),
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// `unauthorized`, `forbidden`, `bad_request`, `not_found`, `conflict`, `unavailable` or `internal`.
    pub error: String,
    /// What happened, for a person.
    pub message: String,
}

impl ApiError {
    /// 400 with `msg`.
    pub fn bad(msg: impl Into<String>) -> Self {
        ApiError::BadRequest(msg.into())
    }

    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<notiflow_reports::ReportError> for ApiError {
    fn from(e: notiflow_reports::ReportError) -> Self {
        if e.is_input() {
            ApiError::BadRequest(e.to_string())
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = self.parts();
        if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        let mut resp = (
            status,
            Json(ErrorBody {
                error: kind.to_string(),
                message: self.to_string(),
            }),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"notiflow\""),
            );
        }
        resp
    }
}
