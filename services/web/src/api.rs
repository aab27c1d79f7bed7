//! The REST API under `/api/v1`: shared state and routes; one file per resource.

pub mod admin;
pub mod devices;
pub mod error;
pub mod lamps;
pub mod params;
pub mod readings;
pub mod rejected;
pub mod session;

use std::sync::Arc;

use actix_web::web;
use lentera_protocol::Topics;
use sqlx::PgPool;

use crate::access::Access;

use self::error::ApiError;
use self::params::Limits;

/// What every handler needs; cheap to clone (pool and client are handles).
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub mqtt: lentera_mqtt::Client,
    pub topics: Topics,
    pub limits: Limits,
    /// `Retry-After` seconds on 503s.
    pub retry_after: u64,
    pub access: Arc<Access>,
    /// Where boards reach the platform, for the config snippet of a new token.
    pub board: admin::BoardEndpoints,
}

impl AppState {
    pub(crate) fn db_error(&self, e: sqlx::Error) -> ApiError {
        ApiError::database(e, self.retry_after)
    }

    /// 404 `unknown_device` unless the device has ever been seen, so a typo in a device
    /// id is reported as such instead of looking like a device with no data.
    async fn require_device(&self, device: &str) -> Result<(), ApiError> {
        match lentera_db::devices::exists(&self.pool, device).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ApiError::not_found(
                "unknown_device",
                format!("no device {device:?} has been seen"),
            )),
            Err(e) => Err(self.db_error(e)),
        }
    }
}

/// Largest request body the API reads (lamp modes, logins, device admin are tiny).
pub const MAX_BODY: usize = 16 * 1024;

/// `/api/v1/...` routes, plus JSON errors for malformed query strings and bodies.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::QueryConfig::default()
            .error_handler(|e, _| ApiError::bad_request("invalid_query", e.to_string()).into()),
    )
    .app_data(web::PayloadConfig::new(MAX_BODY))
    .app_data(
        web::JsonConfig::default()
            .limit(MAX_BODY)
            .error_handler(|e, _| {
                use actix_web::error::JsonPayloadError as J;
                match e {
                    J::Overflow { .. } | J::OverflowKnownLength { .. } => ApiError::new(
                        actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        format!("the body may be at most {MAX_BODY} bytes"),
                    ),
                    J::ContentType => ApiError::new(
                        actix_web::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "unsupported_media_type",
                        "send Content-Type: application/json",
                    ),
                    e => ApiError::bad_request("invalid_body", e.to_string()),
                }
                .into()
            }),
    )
    .app_data(
        web::PathConfig::default()
            .error_handler(|e, _| ApiError::bad_request("invalid_path", e.to_string()).into()),
    )
    .service(
        web::scope("/api/v1")
            // Inside the scope: a scope owns every path under its prefix.
            .service(res("/openapi.json").get(crate::dashboard::openapi))
            .service(
                res("/session")
                    .get(session::whoami)
                    .post(session::login)
                    .delete(session::logout),
            )
            .service(res("/devices").get(devices::list).post(admin::add))
            .service(
                res("/devices/{device}")
                    .patch(admin::patch)
                    .delete(admin::remove),
            )
            .service(res("/devices/{device}/token").post(admin::rotate))
            .service(res("/registry").get(admin::list))
            .service(res("/devices/{device}/readings").get(readings::history))
            .service(res("/devices/{device}/rejected").get(rejected::list))
            .service(res("/lamps").get(lamps::list))
            .service(res("/lamps/{device}/events").get(lamps::events))
            .service(res("/lamps/{device}/mode").put(lamps::set_mode)),
    );
}

/// A resource whose wrong methods get 405 JSON (a resource without its own default
/// would fall back to the app's 404).
pub fn res(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

async fn method_not_allowed(req: actix_web::HttpRequest) -> actix_web::HttpResponse {
    use actix_web::ResponseError;
    ApiError::new(
        actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.path()),
    )
    .error_response()
}
