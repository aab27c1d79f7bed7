//! The one error type of the REST API: `{"error":"<stable_code>","detail":"…"}`.
//!
//! Codes are part of the API (clients and tests match on them); details are for people.
//! Database error text never reaches a client: it is logged, and the client gets a code.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    /// Seconds for `Retry-After` on 503s and 429s.
    pub retry_after: Option<u64>,
    /// Adds `WWW-Authenticate: Bearer` (401s).
    pub challenge: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
            challenge: false,
        }
    }

    /// 401: no valid session or token. One answer whatever was wrong with it.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self {
            challenge: true,
            ..Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
        }
    }

    /// 403: known, but not allowed this.
    pub fn forbidden(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, detail)
    }

    /// 429 with `Retry-After`.
    pub fn rate_limited(detail: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", detail)
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, detail)
    }

    pub fn unavailable(code: &'static str, detail: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
        }
    }

    /// Maps a database failure: unreachable or saturated → 503 (try again), anything
    /// else → 500 (a bug to look at in the logs).
    pub fn database(e: sqlx::Error, retry_after: u64) -> Self {
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => {
                tracing::warn!(error = %e, "database unavailable");
                Self::unavailable(
                    "database_unavailable",
                    "the database is not reachable; try again shortly",
                    retry_after,
                )
            }
            e => {
                tracing::error!(error = %e, "database query failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the query failed; see the server log",
                )
            }
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after {
            resp.insert_header(("Retry-After", secs.to_string()));
        }
        if self.challenge {
            resp.insert_header(("WWW-Authenticate", r#"Bearer realm="lentera""#));
        }
        resp.json(json!({"error": self.code, "detail": self.detail}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    #[test]
    fn renders_code_detail_and_retry_after() {
        let resp = ApiError::unavailable("broker_unavailable", "down", 7).error_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers().get("Retry-After").unwrap(), "7");
        let body = resp.into_body().try_into_bytes().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, json!({"error": "broker_unavailable", "detail": "down"}));
    }

    #[test]
    fn pool_timeouts_are_503_and_other_db_errors_500() {
        assert_eq!(
            ApiError::database(sqlx::Error::PoolTimedOut, 5).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            ApiError::database(sqlx::Error::RowNotFound, 5).status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
