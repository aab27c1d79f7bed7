//! `[ingest]` settings and the service's whole settings tree.
//!
//! Every field has a default so the service starts with no file and no environment;
//! override with `lentera.toml` or `LENTERA_INGEST__<FIELD>` (e.g. `LENTERA_INGEST__HTTP_ADDR=127.0.0.1:0`).

use std::time::Duration;

use lentera_auth::{AuthSettings, QuotaSettings};
use lentera_bootstrap::TelemetrySettings;
use lentera_db::DatabaseSettings;
use lentera_mqtt::MqttSettings;
use lentera_protocol::Limits;
use serde::Deserialize;

/// Everything `lentera-ingest` reads at start-up.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct Settings {
    pub telemetry: TelemetrySettings,
    pub mqtt: MqttSettings,
    pub ingest: IngestSettings,
    /// `[limits]`: physical ranges and timestamp skew, shared with the historian so
    /// that what ingest accepts the historian stores.
    pub limits: Limits,
    /// `[auth]`: `open = true` checks no device identity (demo only, warned at every
    /// start); closed by default, devices are checked against the registry.
    pub auth: AuthSettings,
    /// `[quota]`: per-device message rate and per-address connection caps, shared with
    /// the broker.
    pub quota: QuotaSettings,
    /// `[database]`: where the device registry lives (closed mode only). Ingest only
    /// reads it and never migrates (`migrate` is ignored): the historian owns the schema.
    pub database: DatabaseSettings,
    /// When set, the bound addresses `{"http":…,"tcp":…}` are written here once both
    /// listeners accept connections.
    pub ready_file: Option<std::path::PathBuf>,
}

/// The device-facing knobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct IngestSettings {
    /// HTTP listener (port 0 lets the OS choose).
    pub http_addr: String,
    /// Raw TCP line-protocol listener.
    pub tcp_addr: String,
    /// Largest HTTP request body accepted; larger bodies get 413 before they are buffered.
    pub body_limit_bytes: usize,
    /// Most readings in one `POST /api/v1/readings` array.
    pub max_batch: usize,
    /// Device that `POST /sensor {"suhu":…}` readings are stored under: the seed's
    /// client.py has no notion of a device id.
    pub seed_device: String,
    /// actix worker threads; 0 means one per CPU.
    pub http_workers: usize,
    /// How long shutdown waits for in-flight HTTP requests and TCP lines.
    pub shutdown_timeout_secs: u64,
    /// Longest TCP line (without its newline); a longer one gets `ERR line_too_long` and
    /// the connection is closed, because the rest of the stream can no longer be framed.
    pub tcp_max_line_bytes: usize,
    /// A TCP connection that sends nothing for this long is closed.
    pub tcp_idle_timeout_secs: u64,
    /// Most concurrent TCP connections; one more gets `ERR too_many_connections`.
    pub tcp_max_connections: usize,
    /// Bytes without a newline that then sit unchanged for this long are treated as a
    /// complete line. The seed's ESP8266 sketch sends `client.print("Hai from ESP8266")`
    /// with no newline and waits one second for a reply line; this makes it get one.
    /// 0 disables it (only newlines and EOF end a line). Only for connections that have
    /// never sent a newline: once one has, its lines end at newlines only, however slowly
    /// they arrive (a line split across two TCP segments is one reading, not two).
    pub tcp_partial_line_ms: u64,
    /// This process's number among the ingest instances behind one load balancer, from 0.
    /// It picks the receive-time residue class (`lentera_protocol::Stamper`) and the
    /// topic of this instance's bound-board set (`{prefix}/.ingest/{instance}/bound`).
    pub instance: u32,
    /// How many ingest instances share the work; every instance gets the same value.
    pub instances: u32,
    /// After a start, how long boards of this instance's previous run (read from its
    /// retained bound set) have to say HELLO again before they are announced `offline`.
    pub rebind_grace_secs: u64,
    /// How long the receive time of a reading without `ts` that was answered with a
    /// retryable error (`503`, `ERR broker_unavailable`) after its publish was sent is
    /// kept for the board's retry with the same values; 0 = never (every retry is stamped
    /// anew). See `in_doubt`.
    pub in_doubt_secs: u64,
    /// Most such receive times kept, all devices together (the oldest go first); a device
    /// keeps at most `max_batch` of them.
    pub in_doubt_max: usize,
    /// How long a client has to send a request's head (request line and headers); then
    /// it gets 408 and is closed (actix `client_request_timeout`). 0 = no limit.
    pub http_header_timeout_ms: u64,
    /// How long a request's body may take to arrive, from its head; a stalled body gets
    /// `408 body_timeout` and the connection is closed.
    pub http_body_timeout_ms: u64,
    /// After ingest closes an HTTP connection, how long it waits for the client to close
    /// its side (actix `client_disconnect_timeout`).
    pub http_disconnect_timeout_ms: u64,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            http_addr: "0.0.0.0:8080".into(),
            tcp_addr: "0.0.0.0:2004".into(),
            body_limit_bytes: 256 * 1024,
            max_batch: 1000,
            seed_device: "gh-1".into(),
            http_workers: 0,
            shutdown_timeout_secs: 30,
            tcp_max_line_bytes: 4096,
            tcp_idle_timeout_secs: 300,
            tcp_max_connections: 1024,
            tcp_partial_line_ms: 500,
            instance: 0,
            instances: 1,
            rebind_grace_secs: 10,
            in_doubt_secs: 120,
            in_doubt_max: 100_000,
            http_header_timeout_ms: 5_000,
            http_body_timeout_ms: 10_000,
            http_disconnect_timeout_ms: 1_000,
        }
    }
}

impl Settings {
    /// The start-up checks: the service refuses to start with a setting it cannot honour.
    pub fn validate(&self) -> anyhow::Result<()> {
        let cfg = &self.ingest;
        anyhow::ensure!(
            cfg.instances >= 1,
            "ingest.instances must be at least 1 (got {})",
            cfg.instances
        );
        anyhow::ensure!(
            cfg.instance < cfg.instances,
            "ingest.instance must be below ingest.instances: instance {} of {} (instances \
             are numbered 0..{}; give every instance the same ingest.instances)",
            cfg.instance,
            cfg.instances,
            cfg.instances
        );
        self.limits
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid [limits]: {e}"))?;
        Ok(())
    }
}

impl IngestSettings {
    /// The MQTT client id unless `mqtt.client_id` is set: `lentera-ingest`, or
    /// `lentera-ingest-{instance}` when there are several instances (two processes must
    /// not share one: each has its own persistent session).
    pub fn default_client_id(&self) -> String {
        if self.instances > 1 {
            format!("lentera-ingest-{}", self.instance)
        } else {
            "lentera-ingest".to_owned()
        }
    }

    pub fn rebind_grace(&self) -> Duration {
        Duration::from_secs(self.rebind_grace_secs)
    }

    /// The in-doubt receive times' bounds.
    pub fn in_doubt(&self) -> crate::stamps::InDoubtLimits {
        crate::stamps::InDoubtLimits {
            ttl: Duration::from_secs(self.in_doubt_secs),
            per_device: self.max_batch.max(1),
            capacity: self.in_doubt_max,
        }
    }

    pub fn http_body_timeout(&self) -> Duration {
        Duration::from_millis(self.http_body_timeout_ms.max(1))
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    pub fn tcp_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.tcp_idle_timeout_secs.max(1))
    }

    /// `None` when partial-line flushing is disabled.
    pub fn tcp_partial_line(&self) -> Option<Duration> {
        (self.tcp_partial_line_ms > 0).then(|| Duration::from_millis(self.tcp_partial_line_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_must_be_below_instances() {
        let mut s = Settings::default();
        assert!(s.validate().is_ok());
        assert_eq!(s.ingest.default_client_id(), "lentera-ingest");
        s.ingest.instances = 3;
        s.ingest.instance = 2;
        assert!(s.validate().is_ok());
        assert_eq!(s.ingest.default_client_id(), "lentera-ingest-2");
        s.ingest.instance = 3;
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("ingest.instance must be below"), "{e}");
        s.ingest.instances = 0;
        s.ingest.instance = 0;
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("at least 1"), "{e}");
    }

    #[test]
    fn invalid_limits_refuse_the_start() {
        let mut s = Settings::default();
        s.limits.default_range = lentera_protocol::Range::new(Some(5.0), Some(1.0));
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("limits.default_range"), "{e}");
    }
}
