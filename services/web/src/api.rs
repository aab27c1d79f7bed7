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
            .route("/openapi.json", web::get().to(crate::dashboard::openapi))
            .service(
                web::resource("/session")
                    .get(session::whoami)
                    .post(session::login)
                    .delete(session::logout),
            )
            .service(
                web::resource("/devices")
                    .get(devices::list)
                    .post(admin::add),
            )
            .service(
                web::resource("/devices/{device}")
                    .patch(admin::patch)
                    .delete(admin::remove),
            )
            .route("/devices/{device}/token", web::post().to(admin::rotate))
            .route("/registry", web::get().to(admin::list))
            .route(
                "/devices/{device}/readings",
                web::get().to(readings::history),
            )
            .route("/devices/{device}/rejected", web::get().to(rejected::list))
            .route("/lamps", web::get().to(lamps::list))
            .route("/lamps/{device}/events", web::get().to(lamps::events))
            .route("/lamps/{device}/mode", web::put().to(lamps::set_mode)),
    );
}
