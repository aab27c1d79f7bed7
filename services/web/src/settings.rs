//! `lentera-web` settings: the shared sections plus `[web]`.

use lentera_auth::AuthSettings;
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
    /// `[auth]`: `open = true` turns every login off (demo only; warned at every start).
    pub auth: AuthSettings,
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
    /// Live messages queued per device for one WebSocket client: a flooding device loses
    /// its own oldest messages past this, never another device's.
    pub ws_device_backlog: usize,
    /// `true`: history, device lists, dead letters and `/ws` need no login (a village
    /// notice board). Lamp overrides and device admin always need an operator.
    pub public_read: bool,
    /// Lifetime of a dashboard login session, hours.
    pub session_hours: u64,
    /// Login attempts per second sustained, per operator name and per client address.
    pub login_rate_per_sec: f64,
    /// Login attempts at once, per operator name.
    pub login_burst_per_name: u32,
    /// Login attempts at once, per client address.
    pub login_burst_per_ip: u32,
    /// `true` behind a reverse proxy that sets `X-Forwarded-For` (Caddy in `deploy/`):
    /// login attempts are then counted per forwarded client address. Leave `false` when
    /// clients reach web directly, or they could pick their own address.
    pub trust_forwarded: bool,
    /// Seconds a client has to send a request's headers.
    pub header_timeout_secs: u64,
    /// Seconds a client has to send a request's whole body (not `/ws`).
    pub body_timeout_secs: u64,
    /// Host boards should talk to, in the config snippet shown for a new device token;
    /// `None` = the host name the operator's browser used.
    pub board_host: Option<String>,
    /// Ports in that snippet: ingest HTTP, ingest TCP, broker MQTT.
    pub board_http_port: u16,
    pub board_tcp_port: u16,
    pub board_mqtt_port: u16,
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
            ws_device_backlog: 64,
            public_read: false,
            session_hours: 24,
            login_rate_per_sec: 0.2,
            login_burst_per_name: 5,
            login_burst_per_ip: 20,
            trust_forwarded: false,
            header_timeout_secs: 5,
            body_timeout_secs: 10,
            board_host: None,
            board_http_port: 8080,
            board_tcp_port: 2004,
            board_mqtt_port: 1883,
        }
    }
}
