//! Every HTTP error a board can trigger, with its status and stable code.
//!
//! Bodies are always `{"error":"<code>","detail":…}`; `detail` is a string, except for
//! `invalid_reading` (which reading, and why) and `batch_too_large` (the limit).

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
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        // Both broker trouble and overload are transient: tell well-behaved clients when
        // to come back instead of letting them hammer a struggling pipeline.
        if matches!(self, ApiError::Publish(_)) {
            res.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
        }
        res.json(json!({"error": self.code(), "detail": self.detail()}))
    }
}
