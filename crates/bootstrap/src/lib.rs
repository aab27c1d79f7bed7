//! What every Lentera service does the same way at start-up and around the edges.
//!
//! - [`settings`]: layered configuration with the `config` crate — serde defaults, then an
//!   optional TOML file (`LENTERA_CONFIG`, else `lentera.toml` if present), then
//!   `LENTERA_…` environment variables (`__` separates sections: `LENTERA_MQTT__HOST`).
//! - [`telemetry`]: `tracing` logs (human or JSON) and, when an endpoint is configured,
//!   OpenTelemetry traces over OTLP/gRPC.
//! - [`observe`]: the `/healthz`, `/readyz` and `/metrics` endpoints every service serves,
//!   backed by readiness checks the service flips and a small Prometheus registry.
//! - [`shutdown`]: SIGTERM / Ctrl-C as a future, so `run` functions can take it as a value.
//! - [`ready_file`]: the bound addresses written to a file, so tests and scripts can bind
//!   port 0 and learn where the service listens.

pub mod observe;
pub mod ready_file;
pub mod settings;
pub mod shutdown;
pub mod telemetry;

pub use observe::{Check, Counter, Gauge, Observability};
pub use settings::load;
pub use telemetry::TelemetrySettings;
