//! The REST API under `/api/v1`: shared state and routes; one file per resource.

pub mod devices;
pub mod error;
pub mod lamps;
pub mod params;
pub mod readings;
pub mod rejected;

use actix_web::web;
use lentera_protocol::Topics;
use sqlx::PgPool;

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
}

impl AppState {
    fn db_error(&self, e: sqlx::Error) -> ApiError {
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

/// `/api/v1/...` routes, plus JSON errors for malformed query strings and bodies.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::QueryConfig::default()
            .error_handler(|e, _| ApiError::bad_request("invalid_query", e.to_string()).into()),
    )
    .service(
        web::scope("/api/v1")
            // Inside the scope: a scope owns every path under its prefix.
            .route("/openapi.json", web::get().to(crate::dashboard::openapi))
            .route("/devices", web::get().to(devices::list))
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
