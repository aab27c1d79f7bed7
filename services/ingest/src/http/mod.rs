//! The HTTP entry: `POST /api/v1/readings`, the seed's `POST /sensor`, and the admin
//! endpoints (`/healthz`, `/readyz`, `/metrics`) from `lentera_bootstrap::Observability`.
//!
//! - [`readings`]: the platform's reading API (single object or batch).
//! - [`seed`]: compatibility with the seed's Flask server, so its `client.py` works unchanged.
//! - [`error`]: every error's status and stable code.
//!
//! Bodies are read by hand (not with actix's `Json` extractor) so the content-type check,
//! the size limit and malformed JSON all answer in our `{"error","detail"}` shape.

pub mod error;
pub mod readings;
pub mod seed;

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::http::header;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, ResponseError, web};
use futures_util::StreamExt;
use lentera_bootstrap::Observability;
use lentera_protocol::{DeviceId, Limits};
use serde_json::Value;

use crate::publish::Publisher;
use crate::stats::Stats;
use error::ApiError;

/// Our JSON media type; [`lentera_protocol::senml::CONTENT_TYPE`] is the other one.
pub const JSON: &str = "application/json";

/// What the handlers share; cloned into every actix worker.
#[derive(Clone)]
pub struct HttpState {
    pub publisher: Publisher,
    pub stats: Stats,
    pub body_limit: usize,
    pub max_batch: usize,
    pub seed_device: DeviceId,
    pub limits: std::sync::Arc<Limits>,
    /// The process's one stamper, shared with the TCP entry.
    pub stamps: crate::stamps::Stamps,
}

/// Builds the server on an already-bound listener; it runs once polled (spawned).
pub fn server(
    listener: TcpListener,
    state: HttpState,
    obs: &Observability,
    workers: usize,
    shutdown_timeout: Duration,
) -> std::io::Result<Server> {
    let routes = obs.routes();
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .configure(routes.clone())
            .service(
                web::resource("/api/v1/readings")
                    .route(web::post().to(readings::post))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/sensor")
                    .route(web::post().to(seed::post))
                    .default_service(web::to(method_not_allowed)),
            )
            .default_service(web::to(not_found))
    })
    // Shutdown is driven by our own future (tests and `shutdown::signal()`), not actix's.
    .disable_signals()
    .shutdown_timeout(shutdown_timeout.as_secs());
    if workers > 0 {
        server = server.workers(workers);
    }
    Ok(server.listen(listener)?.run())
}

async fn not_found() -> HttpResponse {
    ApiError::NotFound.error_response()
}

async fn method_not_allowed() -> HttpResponse {
    ApiError::MethodNotAllowed.error_response()
}

/// Checks the content type against `accepted` (media types without parameters), reads
/// at most `limit` bytes and parses them as JSON. Returns the body and its media type.
pub async fn read_json(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    accepted: &[&'static str],
) -> Result<(Value, &'static str), ApiError> {
    let media = media_type(req, accepted).ok_or(ApiError::UnsupportedMediaType)?;
    // An honest Content-Length lets us refuse before buffering anything.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BodyRead(e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    let value =
        serde_json::from_slice(&body).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    Ok((value, media))
}

/// The one of `accepted` the request's content type names, ignoring parameters such as
/// `charset=utf-8` and case.
fn media_type(req: &HttpRequest, accepted: &[&'static str]) -> Option<&'static str> {
    let essence = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())?
        .trim();
    accepted
        .iter()
        .copied()
        .find(|m| essence.eq_ignore_ascii_case(m))
}
