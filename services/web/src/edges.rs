//! What every request gets whatever route it hits (issue 13's "loose edges"):
//!
//! - [`json_errors`]: every 4xx/5xx body is the API's JSON error shape, including the
//!   ones actix writes itself (405 for a wrong method, 413 from an extractor, a failed
//!   WebSocket handshake); a body that is JSON already is left alone.
//! - [`body_deadline`]: a request body must arrive whole within `web.body_timeout_secs`,
//!   or the request fails with 408 `body_timeout` (a client trickling bytes would
//!   otherwise hold a worker slot forever). Headers have their own timeout, set on the
//!   server (`web.header_timeout_secs`). WebSocket upgrades are exempt: their "body" is
//!   the live connection, which the heartbeat polices.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::{StatusCode, header};
use actix_web::middleware::ErrorHandlerResponse;
use actix_web::{HttpMessage, HttpResponse};
use futures_util::StreamExt;
use serde_json::json;

/// Marks a request whose body ran out of time, so [`json_errors`] can answer 408
/// whatever the extractor made of the failed read.
#[derive(Clone, Default)]
pub struct BodyTimedOut(Arc<AtomicBool>);

/// Replaces a request's payload with one that fails at `deadline` after the request
/// started. Call from `wrap_fn` before the handler.
pub fn body_deadline(req: &mut ServiceRequest, limit: Duration) {
    if req.headers().contains_key(header::UPGRADE) {
        return;
    }
    let flag = BodyTimedOut::default();
    req.extensions_mut().insert(flag.clone());
    let deadline = tokio::time::Instant::now() + limit;
    let inner = req.take_payload();
    let stream = futures_util::stream::unfold(
        (inner, flag, false),
        move |(mut inner, flag, failed)| async move {
            if failed {
                return None;
            }
            match tokio::time::timeout_at(deadline, inner.next()).await {
                Ok(Some(item)) => {
                    let failed = item.is_err();
                    Some((item, (inner, flag, failed)))
                }
                Ok(None) => None,
                Err(_) => {
                    flag.0.store(true, Ordering::Relaxed);
                    let e = PayloadError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "request body not received in time",
                    ));
                    Some((Err(e), (inner, flag, true)))
                }
            }
        },
    );
    let boxed: std::pin::Pin<Box<dyn futures_util::Stream<Item = _>>> = Box::pin(stream);
    req.set_payload(Payload::from(boxed));
}

/// The stable code for a status actix answered on its own.
fn code_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "body_timeout",
        411 => "length_required",
        413 => "body_too_large",
        415 => "unsupported_media_type",
        429 => "rate_limited",
        431 => "headers_too_large",
        503 => "unavailable",
        s if s >= 500 => "internal",
        _ => "error",
    }
}

/// `ErrorHandlers` default handler: rewrites a non-JSON error body as JSON (and a body
/// read that ran out of time as 408), keeping headers such as `Allow` and `Retry-After`.
pub fn json_errors<B: MessageBody + 'static>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let timed_out = res
        .request()
        .extensions()
        .get::<BodyTimedOut>()
        .is_some_and(|f| f.0.load(Ordering::Relaxed));
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json && !timed_out {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = if timed_out {
        StatusCode::REQUEST_TIMEOUT
    } else {
        res.status()
    };
    let detail = if timed_out {
        "the request body did not arrive in time".to_owned()
    } else if status.is_server_error() {
        // Server-side error text is for the log, not the client.
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        res.response()
            .error()
            .map(|e| e.to_string())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned())
    };
    let (req, old) = res.into_parts();
    let mut new = HttpResponse::build(status);
    for (k, v) in old.headers() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            new.append_header((k.clone(), v.clone()));
        }
    }
    let new = new.json(json!({"error": code_for(status), "detail": detail}));
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, new).map_into_right_body(),
    ))
}
