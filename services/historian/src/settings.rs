//! The historian's settings: `[telemetry]`, `[mqtt]`, `[database]`, `[historian]`, `ready_file`.

use std::path::PathBuf;
use std::time::Duration;

use lentera_bootstrap::TelemetrySettings;
use lentera_db::DatabaseSettings;
use lentera_mqtt::MqttSettings;
use lentera_protocol::Limits;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct Settings {
    pub telemetry: TelemetrySettings,
    pub mqtt: MqttSettings,
    pub database: DatabaseSettings,
    pub historian: HistorianSettings,
    /// `[limits]`: the same plausibility rules as ingest, for boards publishing to MQTT
    /// directly; invalid readings are acknowledged and kept as dead letters.
    pub limits: Limits,
    /// Where to write `{"admin": "<addr>"}` once the admin port is bound.
    pub ready_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct HistorianSettings {
    /// `/healthz`, `/readyz`, `/metrics`.
    pub admin_addr: String,
    /// Most deliveries written in one transaction: large enough to amortise the commit
    /// (an fsync) and the statements, small enough that one failed batch is cheap to
    /// retry. The broker must let this many deliveries be in flight unacknowledged
    /// (Lentera `broker.max_inflight`, Mosquitto `max_inflight_messages`), since they
    /// are acknowledged only after the commit; with a smaller window batches only fill
    /// up to it and then wait `batch_interval_ms`.
    pub batch_size: usize,
    /// Longest a delivery waits for its batch to fill, i.e. the worst added latency.
    pub batch_interval_ms: u64,
    /// Longest one statement of a batch write may take, waiting for locks included
    /// (PostgreSQL `statement_timeout`, set for the write transaction only); a write
    /// that takes longer is rolled back, reported (not ready), and retried with backoff,
    /// its deliveries still unacknowledged. 0 = wait as long as PostgreSQL takes.
    pub write_timeout_ms: u64,
    /// MQTT shared-subscription group. Set it to run several historians that split the
    /// stream (`$share/{group}/lentera/+/telemetry`); each instance needs its own client id.
    pub shared_group: Option<String>,
    /// Readings older than this many days are dropped, a whole month partition at a
    /// time (with their hourly rollup); 0 keeps everything forever.
    pub retention_days: u32,
    /// Dead letters (`rejected_readings`) older than this many days are deleted by the
    /// maintenance round; 0 keeps them forever.
    pub rejected_retention_days: u32,
    /// Month partitions created ahead of the current one.
    pub partitions_ahead_months: u32,
    /// Seconds between partition upkeep rounds (create ahead, apply retention).
    pub maintenance_interval_secs: u64,
}

impl Default for HistorianSettings {
    fn default() -> Self {
        Self {
            admin_addr: "0.0.0.0:9101".into(),
            batch_size: 5000,
            batch_interval_ms: 100,
            write_timeout_ms: 10_000,
            shared_group: None,
            retention_days: 730,
            rejected_retention_days: 90,
            partitions_ahead_months: 2,
            maintenance_interval_secs: 3600,
        }
    }
}

impl HistorianSettings {
    pub fn batch_interval(&self) -> Duration {
        Duration::from_millis(self.batch_interval_ms)
    }

    pub fn write_timeout(&self) -> Option<Duration> {
        (self.write_timeout_ms > 0).then(|| Duration::from_millis(self.write_timeout_ms))
    }

    /// The topic filter for `filter`, wrapped in the shared-subscription form when a group is set.
    pub fn subscription(&self, filter: &str) -> String {
        match &self.shared_group {
            Some(group) if !group.is_empty() => format!("$share/{group}/{filter}"),
            _ => filter.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_group_wraps_filters() {
        let mut s = HistorianSettings::default();
        assert_eq!(s.subscription("lentera/+/status"), "lentera/+/status");
        s.shared_group = Some("historian".into());
        assert_eq!(
            s.subscription("lentera/+/telemetry"),
            "$share/historian/lentera/+/telemetry"
        );
    }
}
