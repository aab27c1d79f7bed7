//! `lentera-ingest`: the device-facing entry of Lentera.
//!
//! Boards that cannot speak MQTT send readings over HTTP or a raw TCP line protocol;
//! ingest validates them with `lentera_protocol::Reading`, publishes each one's canonical
//! payload to `{prefix}/{device}/telemetry` with QoS 1, and answers the board only after
//! the broker's PUBACK. In the other direction it relays `{prefix}/{device}/lamp/set`
//! commands to boards bound over TCP as `led-on` / `led-off` lines.
//!
//! # Layout
//! - `main.rs`: wiring only (settings → telemetry → [`startup::run`]).
//! - [`settings`]: `[ingest]` settings and defaults.
//! - [`startup`]: builds the app on bound listeners, runs it, drains it on shutdown.
//! - [`publish`]: readings → acknowledged MQTT messages.
//! - [`stamps`]: the one stamper giving readings without `ts` unique receive times.
//! - [`in_doubt`]: receive times of readings answered with a retryable error while the
//!   broker may have them, given again to the board's retry (pure, unit-tested).
//! - [`status`]: retained `online`/`offline` of TCP boards, published until acknowledged,
//!   and the retained bound set that corrects them after a crash.
//! - [`stats`]: Prometheus counters (accepted readings, rejections by code).
//! - [`identity`]: which device a door admits (the registry, or open mode) and the
//!   per-device quota; [`peers`]: open connections per source address.
//! - [`http`]: `POST /api/v1/readings`, the seed's `POST /sensor`, admin endpoints.
//! - [`tcp`]: the accept loop; [`tcp::line`] the pure grammar, [`tcp::conn`] one
//!   connection, [`tcp::relay`] the lamp-command registry.

pub mod http;
pub mod identity;
pub mod in_doubt;
pub mod peers;
pub mod publish;
pub mod settings;
pub mod stamps;
pub mod startup;
pub mod stats;
pub mod status;
pub mod tcp;

pub use settings::{IngestSettings, Settings};
