//! The lamp controller's settings: `[telemetry]`, `[mqtt]`, `[lamp]`, `ready_file`.

use std::path::PathBuf;
use std::time::Duration;

use lentera_bootstrap::TelemetrySettings;
use lentera_mqtt::MqttSettings;
use serde::Deserialize;

use crate::policy::PolicyConfig;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct Settings {
    pub telemetry: TelemetrySettings,
    pub mqtt: MqttSettings,
    pub lamp: LampSettings,
    /// Where to write `{"admin": "<addr>"}` once the admin port is bound.
    pub ready_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LampSettings {
    /// `/healthz`, `/readyz`, `/metrics` and `/lamps`.
    pub admin_addr: String,
    /// Devices whose id matches this glob (`*` = any run of characters) are lamps; so is
    /// any device that publishes `lamp/state`.
    pub lamp_pattern: String,
    /// Auto mode switches on below this lux…
    pub on_below_lux: f64,
    /// …and off above this one; in between it keeps its last decision (hysteresis), so a
    /// lamp does not flicker when dusk light hovers around one threshold.
    pub off_above_lux: f64,
    /// How often the desired command is re-sent while the lamp reports a different state.
    pub resend_secs: u64,
    /// Period of the re-evaluation tick (override expiry, stale lux → sun fallback, resends).
    pub tick_secs: u64,
    /// A lamp with no lux reading for this long is driven by the sun instead.
    pub stale_lux_secs: u64,
    /// Auto mode with no light reading switches on while the sun is below this elevation.
    /// −0.833° is the standard sunset/sunrise (refraction plus the sun's half-disc): the
    /// lamp comes on as the sun disappears, before civil twilight (−6°) gets dark.
    pub sun_on_below_deg: f64,
    /// Site for the sun fallback (default Yogyakarta).
    pub latitude: f64,
    pub longitude: f64,
    /// After connecting, wait this long for the retained modes and states before the first
    /// decisions, so a restart does not briefly command lamps against an operator override.
    pub settle_ms: u64,
}

impl Default for LampSettings {
    fn default() -> Self {
        Self {
            admin_addr: "0.0.0.0:9102".into(),
            lamp_pattern: "lamp*".into(),
            on_below_lux: 10.0,
            off_above_lux: 30.0,
            resend_secs: 60,
            tick_secs: 30,
            stale_lux_secs: 600,
            sun_on_below_deg: -0.833,
            latitude: -7.8,
            longitude: 110.4,
            settle_ms: 2_000,
        }
    }
}

impl LampSettings {
    pub fn policy(&self) -> PolicyConfig {
        PolicyConfig {
            on_below_lux: self.on_below_lux,
            off_above_lux: self.off_above_lux,
            stale_lux: chrono::Duration::seconds(self.stale_lux_secs as i64),
            resend: chrono::Duration::seconds(self.resend_secs as i64),
            sun_on_below_deg: self.sun_on_below_deg,
            latitude: self.latitude,
            longitude: self.longitude,
        }
    }

    /// The tick runs at least as often as resends are due.
    pub fn tick(&self) -> Duration {
        Duration::from_secs(self.tick_secs.min(self.resend_secs).max(1))
    }

    pub fn settle(&self) -> Duration {
        Duration::from_millis(self.settle_ms)
    }
}
