//! The API's typed errors and how each becomes an HTTP answer: a status
//! code and a JSON body `{"error": kind, "message": text}`. A caller's
//! mistake is a 4xx that says what to fix; only our own failures are 5xx.
//!
//! The text of an internal failure (Redis, DuckDB, the catalog, object
//! store paths, buckets, endpoints) never reaches the caller: a 500 or 503
//! body says what the caller can do and gives the request id, and the
//! detail goes to the log under that id.

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
    /// The path exists, not with this method.
    #[error("this method is not allowed here; see /openapi.json")]
    MethodNotAllowed,
    /// Not ready yet (a report still running).
    #[error("{0}")]
    Conflict(String),
    /// This caller's quota is used up (429 with `Retry-After`).
    #[error("{message}")]
    TooMany {
        /// What is used up, for the caller.
        message: String,
        /// Seconds to wait.
        retry_after_secs: u64,
    },
    /// The server is full for everyone (503 with `Retry-After`; the
    /// message is the caller's).
    #[error("{message}")]
    Busy {
        /// What is full, for the caller.
        message: String,
        /// Seconds to wait.
        retry_after_secs: u64,
    },
    /// A dependency is down and no stale answer is at hand (the detail is
    /// logged, not answered).
    #[error("{0}")]
    Unavailable(String),
    /// Our own failure (the detail is logged, not answered).
    #[error("{0}")]
    Internal(String),
}

tokio::task_local! {
    /// The id of the request being served (set by the server's middleware).
    pub static REQUEST_ID: u64;
}

/// The id of the request this task serves, if any.
pub fn request_id() -> Option<u64> {
    REQUEST_ID.try_with(|id| *id).ok()
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// `unauthorized`, `forbidden`, `bad_request`, `not_found`,
    /// `method_not_allowed`, `conflict`, `too_many_requests`, `unavailable` or `internal`.
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
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::TooMany { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            ApiError::Busy { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<notiflow_reports::ReportError> for ApiError {
    fn from(e: notiflow_reports::ReportError) -> Self {
        if e.is_input() {
            ApiError::BadRequest(e.to_string())
        } else if e.is_issued() {
            ApiError::Conflict(e.to_string())
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

impl ApiError {
    /// What the caller is told: the message of a caller's error; for our
    /// own failures a fixed text with the request id (the detail is logged).
    fn public_message(&self) -> String {
        let id = request_id().map_or_else(|| "-".to_string(), |i| i.to_string());
        match self {
            ApiError::Internal(detail) => {
                tracing::error!(request_id = %id, error = %detail, "request failed");
                format!("internal error; the server log has the details under request id {id}")
            }
            ApiError::Unavailable(detail) => {
                tracing::warn!(request_id = %id, error = %detail, "dependency unavailable");
                format!(
                    "a service this answer needs is unavailable and no earlier answer is \
                     known; retry shortly (request id {id})"
                )
            }
            other => other.to_string(),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::TooMany {
                retry_after_secs, ..
            }
            | ApiError::Busy {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            ApiError::Unavailable(_) => Some(2),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = self.parts();
        let mut resp = (
            status,
            Json(ErrorBody {
                error: kind.to_string(),
                message: self.public_message(),
            }),
        )
            .into_response();
        let h = resp.headers_mut();
        if status == StatusCode::UNAUTHORIZED {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"notiflow\""),
            );
        }
        if let Some(secs) = self.retry_after() {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(e: ApiError) -> (StatusCode, Option<String>, serde_json::Value) {
        let r = REQUEST_ID.scope(42, async { e.into_response() }).await;
        let status = r.status();
        let retry = r
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        (status, retry, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn internal_details_stay_in_the_log() {
        let secret = "s3://notiflow-prod-bucket/warehouse at http://10.0.0.7:9000: sqlx error";
        for e in [
            ApiError::Internal(secret.into()),
            ApiError::Unavailable(secret.into()),
        ] {
            let (status, _, v) = body(e).await;
            assert!(status.is_server_error());
            let msg = v["message"].as_str().unwrap();
            assert!(!msg.contains("s3://") && !msg.contains("10.0.0.7"), "{msg}");
            assert!(msg.contains("request id 42"), "{msg}");
        }
        let (status, _, v) = body(ApiError::bad("`from` is wrong")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            v["message"], "`from` is wrong",
            "a caller's error says what to fix"
        );
    }

    #[tokio::test]
    async fn quotas_say_when_to_retry() {
        let (status, retry, v) = body(ApiError::TooMany {
            message: "this key holds its maximum of 3 live streams".into(),
            retry_after_secs: 5,
        })
        .await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(retry.as_deref(), Some("5"));
        assert_eq!(v["error"], "too_many_requests");
        assert!(v["message"].as_str().unwrap().contains("3 live streams"));
    }
}
