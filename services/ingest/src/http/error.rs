//! Every HTTP error a board can trigger, with its status and stable code.
//!
//! Bodies are always `{"error":"<code>","detail":…}`; `detail` is a string, except for
//! `invalid_reading` (which reading, and why), `batch_too_large` (the limit),
//! `device_mismatch` (which reading) and `rate_limited` (when to come back).
//! [`json_errors`] turns the error answers actix makes itself (a 405 of the admin
//! routes, say) into the same shape.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use lentera_mqtt::PublishError;
use lentera_protocol::ReadingError;
use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("content type must be application/json (or application/senml+json for readings)")]
    UnsupportedMediaType,
    #[error("body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("a batch may hold at most {max} readings, got {got}")]
    BatchTooLarge { max: usize, got: usize },
    #[error("the batch is empty")]
    EmptyBatch,
    #[error("reading {index} is invalid: {error}")]
    InvalidReading { index: usize, error: ReadingError },
    /// `POST /sensor` without a numeric `suhu`.
    #[error("\"suhu\" must be a number")]
    InvalidSuhu,
    #[error("{0}")]
    Publish(#[from] PublishError),
    #[error("the request body could not be read: {0}")]
    BodyRead(String),
    #[error("the request body did not arrive within {ms} ms")]
    BodyTimeout { ms: u64 },
    /// No token, or one that admits no device (unknown device, wrong token, disabled:
    /// deliberately one answer, so a stranger learns nothing about which ids exist).
    #[error("a valid device token is required (Authorization: Bearer <token>)")]
    Unauthorized,
    /// The registry has never been loaded (PostgreSQL down since start, no cache file).
    #[error("the device registry is not available yet")]
    RegistryUnavailable,
    /// A valid token, with a reading for another device.
    #[error("reading {index} is for device {named:?}, but the token is {device:?}'s")]
    DeviceMismatch {
        index: usize,
        named: String,
        device: String,
    },
    #[error("this device is over its message rate; retry in {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error("too many open connections from this address")]
    TooManyConnections,
    #[error("no such resource")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
}

impl ApiError {
    /// The stable code; also the label of the rejection counter.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::BatchTooLarge { .. } => "batch_too_large",
            ApiError::EmptyBatch => "empty_batch",
            ApiError::InvalidReading { .. } => "invalid_reading",
            ApiError::InvalidSuhu => "invalid_suhu",
            ApiError::Publish(e) => crate::publish::Publisher::error_code(e),
            ApiError::BodyRead(_) => "body_read_failed",
            ApiError::BodyTimeout { .. } => "body_timeout",
            ApiError::Unauthorized => "unauthorized",
            ApiError::RegistryUnavailable => "registry_unavailable",
            ApiError::DeviceMismatch { .. } => "device_mismatch",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::TooManyConnections => "too_many_connections",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
        }
    }

    fn detail(&self) -> Value {
        match self {
            ApiError::InvalidReading { index, error } => json!({
                "index": index,
                "code": error.code(),
                "message": error.to_string(),
            }),
            ApiError::DeviceMismatch { index, .. } => json!({
                "index": index,
                "message": self.to_string(),
            }),
            ApiError::RateLimited { retry_after } => json!({
                "retry_after": retry_after,
                "message": self.to_string(),
            }),
            ApiError::BatchTooLarge { max, got } => json!({
                "max": max,
                "got": got,
                "message": self.to_string(),
            }),
            _ => Value::String(self.to_string()),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_)
            | ApiError::EmptyBatch
            | ApiError::InvalidReading { .. }
            | ApiError::InvalidSuhu
            | ApiError::BodyRead(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge { .. } | ApiError::BatchTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::Publish(PublishError::Overloaded) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Publish(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::RegistryUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::DeviceMismatch { .. } => StatusCode::FORBIDDEN,
            ApiError::RateLimited { .. } | ApiError::TooManyConnections => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        // Both broker trouble and overload are transient: tell well-behaved clients when
        // to come back instead of letting them hammer a struggling pipeline.
        match self {
            ApiError::Publish(_) | ApiError::RegistryUnavailable => {
                res.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
            }
            ApiError::RateLimited { retry_after } => {
                res.insert_header((header::RETRY_AFTER, retry_after.to_string()));
            }
            ApiError::Unauthorized => {
                res.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
            }
            // The rest of a stalled body, or a connection over its address's cap, is not
            // worth keeping: close it once answered.
            ApiError::BodyTimeout { .. } | ApiError::TooManyConnections => {
                res.force_close();
            }
            _ => {}
        }
        res.json(json!({"error": self.code(), "detail": self.detail()}))
    }
}

/// An error answer actix produced itself (no JSON body) rewritten as
/// `{"error":"<code>","detail":…}`, the code from the status (`method_not_allowed`).
pub fn json_errors<B: actix_web::body::MessageBody + 'static>(
    res: actix_web::dev::ServiceResponse<B>,
) -> actix_web::Result<actix_web::middleware::ErrorHandlerResponse<B>> {
    use actix_web::middleware::ErrorHandlerResponse;
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let reason = status.canonical_reason().unwrap_or("error");
    let code = reason.to_ascii_lowercase().replace([' ', '-'], "_");
    let (req, _) = res.into_parts();
    let new = HttpResponse::build(status).json(json!({"error": code, "detail": reason}));
    Ok(ErrorHandlerResponse::Response(
        actix_web::dev::ServiceResponse::new(req, new).map_into_right_body(),
    ))
}

#[cfg(test)]
mod tests {
    use actix_web::middleware::ErrorHandlers;
    use actix_web::{App, test, web};

    use super::*;

    #[actix_web::test]
    async fn bare_error_answers_become_json_and_ours_stay_as_they_are() {
        let app = test::init_service(
            App::new()
                .wrap(ErrorHandlers::new().default_handler(json_errors))
                .route(
                    "/bare",
                    web::to(|| async { HttpResponse::MethodNotAllowed().finish() }),
                )
                .route(
                    "/ours",
                    web::to(|| async { ApiError::Unauthorized.error_response() }),
                ),
        )
        .await;
        let res =
            test::call_service(&app, test::TestRequest::get().uri("/bare").to_request()).await;
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        let body: Value = test::read_body_json(res).await;
        assert_eq!(body["error"], "method_not_allowed");
        let res =
            test::call_service(&app, test::TestRequest::get().uri("/ours").to_request()).await;
        assert_eq!(
            res.headers().get(header::WWW_AUTHENTICATE).unwrap(),
            "Bearer"
        );
        let body: Value = test::read_body_json(res).await;
        assert_eq!(body["error"], "unauthorized");
    }
}
