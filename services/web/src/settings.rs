//! `lentera-web` settings: the shared sections plus `[web]`.

use lentera_bootstrap::TelemetrySettings;
use lentera_db::DatabaseSettings;
use lentera_mqtt::MqttSettings;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct Settings {
    pub telemetry: TelemetrySettings,
    pub mqtt: MqttSettings,
    pub database: DatabaseSettings,
    pub web: WebSettings,
    /// Where to write `{"http": "<bound addr>"}` once listening (tests bind port 0).
    pub ready_file: Option<std::path::PathBuf>,
}

/// `[web]` — env `LENTERA_WEB__<KEY>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct WebSettings {
    /// HTTP listen address (REST, `/ws`, dashboard, admin endpoints); port 0 allowed.
    pub http_addr: String,
    /// HTTP worker threads; `None` = one per CPU.
    pub workers: Option<usize>,
    /// Widest `from`..`to` a history request may ask for, so one request cannot scan years.
    pub max_window_days: i64,
    /// Rows a history or event request returns when `limit` is not given.
    pub default_limit: i64,
    /// Largest `limit` accepted.
    pub max_limit: i64,
    /// Live messages buffered per WebSocket client before it is told it lagged.
    pub broadcast_capacity: usize,
    /// Seconds between WebSocket pings.
    pub heartbeat_secs: u64,
    /// A WebSocket client silent (no pong, no message) this long is closed.
    pub client_timeout_secs: u64,
    /// Seconds between database readiness pings.
    pub db_ping_secs: u64,
    /// `Retry-After` seconds sent with 503s.
    pub retry_after_secs: u64,
}

impl Default for WebSettings {
    fn default() -> Self {
        Self {
            http_addr: "0.0.0.0:8000".into(),
            workers: None,
            max_window_days: 400,
            default_limit: 1_000,
            max_limit: 10_000,
            broadcast_capacity: 1_024,
            heartbeat_secs: 10,
            client_timeout_secs: 30,
            db_ping_secs: 5,
            retry_after_secs: 5,
        }
    }
}
