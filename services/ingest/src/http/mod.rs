//! The HTTP entry: `POST /api/v1/readings`, the seed's `POST /sensor`, and the admin
//! endpoints (`/healthz`, `/readyz`, `/metrics`) from `lentera_bootstrap::Observability`.
//!
//! - [`readings`]: the platform's reading API (single object or batch).
//! - [`seed`]: compatibility with the seed's Flask server, so its `client.py` works unchanged.
//! - [`error`]: every error's status and stable code.
//! - [`auth`]: which device a request speaks for (bearer or path token), and its quota.
//!
//! Edges: a request's head must arrive within `http_header_timeout_ms` and its body
//! within `http_body_timeout_ms` (`408 body_timeout`, then close); an address over
//! `quota.max_connections_per_ip` open connections gets `429 too_many_connections` and
//! is closed; error answers actix makes itself are rewritten as JSON.
//!
//! Bodies are read by hand (not with actix's `Json` extractor) so the content-type check,
//! the size limit and malformed JSON all answer in our `{"error","detail"}` shape.

pub mod auth;
pub mod error;
pub mod readings;
pub mod seed;

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::{Server, Service};
use actix_web::http::header;
use actix_web::middleware::ErrorHandlers;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, ResponseError, web};
use futures_util::StreamExt;
use futures_util::future::{Either, FutureExt, ready};
use lentera_bootstrap::Observability;
use lentera_protocol::{DeviceId, Limits};
use serde_json::Value;

use crate::identity::Identity;
use crate::peers::{PeerLimit, Slot};
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
    /// Device identity and quota, shared with the TCP entry.
    pub identity: Identity,
    /// How long a request body may take to arrive.
    pub body_timeout: Duration,
}

/// Server-level knobs from `[ingest]` and `[quota]`.
#[derive(Clone)]
pub struct ServerLimits {
    pub workers: usize,
    pub shutdown_timeout: Duration,
    pub header_timeout: Duration,
    pub disconnect_timeout: Duration,
    pub per_ip: PeerLimit,
}

/// Stored in a connection's data by `on_connect`: its place in its address's count,
/// or `None` when the address was already at its cap (every request on it is refused).
struct Admission(#[allow(dead_code)] Option<Slot>);

/// Builds the server on an already-bound listener; it runs once polled (spawned).
pub fn server(
    listener: TcpListener,
    state: HttpState,
    obs: &Observability,
    limits: ServerLimits,
) -> std::io::Result<Server> {
    let routes = obs.routes();
    let stats = state.stats.clone();
    let per_ip = limits.per_ip.clone();
    let mut server = HttpServer::new(move || {
        let stats = stats.clone();
        App::new()
            .app_data(web::Data::new(state.clone()))
            .wrap_fn(move |req, srv| {
                let refused = req.conn_data::<Admission>().is_some_and(|a| a.0.is_none());
                if refused {
                    stats.reject("too_many_connections_per_ip");
                    let res = req.into_response(ApiError::TooManyConnections.error_response());
                    return Either::Left(ready(Ok(res)));
                }
                Either::Right(srv.call(req).map(|r| r.map(|r| r.map_into_boxed_body())))
            })
            // Outermost, so it sees every answer, the admin routes' included.
            .wrap(ErrorHandlers::new().default_handler(error::json_errors))
            .configure(routes.clone())
            .service(
                web::resource("/api/v1/readings")
                    .route(web::post().to(readings::post))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/api/v1/devices/{token}/readings")
                    .route(web::post().to(readings::post_with_token))
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
    .shutdown_timeout(limits.shutdown_timeout.as_secs())
    .client_request_timeout(limits.header_timeout)
    .client_disconnect_timeout(limits.disconnect_timeout)
    .on_connect(move |conn, data| {
        let slot = conn
            .downcast_ref::<actix_web::rt::net::TcpStream>()
            .and_then(|s| s.peer_addr().ok())
            .and_then(|peer| per_ip.try_acquire(peer.ip()));
        data.insert(Admission(slot));
    });
    if limits.workers > 0 {
        server = server.workers(limits.workers);
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
    payload: web::Payload,
    state: &HttpState,
    accepted: &[&'static str],
) -> Result<(Value, &'static str), ApiError> {
    let limit = state.body_limit;
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
    let capacity = declared.unwrap_or(1024).min(limit);
    // A body that stalls would otherwise hold its connection (and a worker's attention)
    // forever: it gets the time of `http_body_timeout_ms` in all.
    let body = tokio::time::timeout(state.body_timeout, read_body(payload, limit, capacity))
        .await
        .map_err(|_| ApiError::BodyTimeout {
            ms: state.body_timeout.as_millis() as u64,
        })??;
    let value =
        serde_json::from_slice(&body).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    Ok((value, media))
}

async fn read_body(
    mut payload: web::Payload,
    limit: usize,
    capacity: usize,
) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::with_capacity(capacity);
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BodyRead(e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
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
