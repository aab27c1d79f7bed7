//! lentera-lamp: the lamp controller. It decides on/off for every lamp and publishes
//! `on`/`off` to `lentera/{device}/lamp/set` (QoS 1, not retained).
//!
//! Inputs, over MQTT (clean session): `telemetry` (the `lux` metric), `lamp/mode` (the
//! operator's retained override) and `lamp/state` (what the board reports). A device is a
//! lamp when its id matches `lamp.lamp_pattern` (default `lamp*`) or it publishes
//! `lamp/state`.
//!
//! Layout, pure core first:
//! - [`sun`]: the sun's elevation (NOAA approximation), for lamps without a light reading.
//! - [`glob`]: the lamp pattern (`*` wildcard).
//! - [`policy`]: one lamp's decision — override, lux hysteresis, sun fallback — and
//!   when a command (or a re-send) is due.
//! - [`controller`]: all lamps; MQTT messages and ticks in, due commands out.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics` and `GET /lamps`.
//! - [`startup`]: the async shell — MQTT session, tick, publishing, shutdown.
//! - [`settings`]: `[lamp]` and the shared sections.

pub mod admin;
pub mod controller;
pub mod glob;
pub mod policy;
pub mod settings;
pub mod startup;
pub mod sun;

pub use settings::Settings;
