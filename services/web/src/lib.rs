//! `lentera-web`: the people-facing service — dashboard, live `/ws` stream, REST history
//! and lamp overrides, on one HTTP port (default 8000).
//!
//! Layout:
//! - [`settings`]: the `Settings` struct (`[telemetry]`, `[mqtt]`, `[database]`, `[web]`,
//!   `[auth]`).
//! - [`access`]: operators and viewers (session cookie, bearer API tokens, roles,
//!   `web.public_read`, `auth.open`).
//! - [`edges`]: JSON bodies for every error, the request body deadline.
//! - [`startup`]: builds the app from settings (binds port 0 in tests), starts the MQTT
//!   subscription and the database readiness task, and shuts everything down in order.
//! - [`hub`]: MQTT deliveries → JSON live messages → a broadcast channel (pure message
//!   building in `message_from`).
//! - [`ws`]: one task per WebSocket client: filter, heartbeat, lag notices.
//! - [`api`]: `/api/v1` REST handlers; query validation in `api::params`, the JSON error
//!   type in `api::error`. All SQL lives in `lentera-db`.
//! - [`dashboard`]: `/` (static/index.html) and `/api/v1/openapi.json` (static/openapi.json).
//!
//! Data only flows in from MQTT (live) and PostgreSQL (history); the only thing web
//! writes is the retained lamp mode it publishes for the lamp controller.

pub mod access;
pub mod api;
pub mod dashboard;
pub mod edges;
pub mod frame_guard;
pub mod hub;
pub mod settings;
pub mod startup;
pub mod ws;

pub use settings::Settings;
