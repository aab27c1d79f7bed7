//! `lentera-simulator`: demo boards for a fresh stack.
//!
//! Not part of the platform: it stands in for the village's boards so that
//! `docker compose up` shows a live dashboard at once. It uses every way in:
//!
//! - the first greenhouse talks the raw TCP line protocol to ingest (like an ESP8266),
//! - the other greenhouses publish JSON straight to the broker,
//! - each lamp publishes its light level over a compressed day (so dusk comes every few
//!   minutes), obeys `lamp/set` and reports `lamp/state`, as a real lamp board does.

mod boards;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct Settings {
    telemetry: lentera_bootstrap::TelemetrySettings,
    mqtt: lentera_mqtt::MqttSettings,
    simulator: boards::SimSettings,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: Settings = lentera_bootstrap::load()?;
    let _guard = lentera_bootstrap::telemetry::init("simulator", &settings.telemetry)?;
    tokio::select! {
        r = boards::run(settings.mqtt, settings.simulator) => r,
        _ = lentera_bootstrap::shutdown::signal() => Ok(()),
    }
}
