//! `lentera-broker` settings: `[broker]` plus the shared `[telemetry]`, `[limits]` and
//! `ready_file`.
//!
//! There is no `[mqtt]` section: that one configures MQTT *clients*; the broker is the
//! server they connect to. `LENTERA_BROKER__MQTT_ADDR=127.0.0.1:0` picks any free port.
//! `[telemetry]` is logging and tracing (shared by every service); `[broker.telemetry]`
//! is what the broker does with readings boards publish (`telemetry.rs`).

use std::path::PathBuf;

use lentera_auth::{AuthSettings, QuotaSettings};
use lentera_bootstrap::TelemetrySettings;
use lentera_db::DatabaseSettings;
use lentera_protocol::Limits;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct Settings {
    pub telemetry: TelemetrySettings,
    pub broker: BrokerSettings,
    /// `[auth]`, shared with ingest and web: `open` (demo only), the registry's cache
    /// file and refresh.
    pub auth: AuthSettings,
    /// `[quota]`, shared with ingest: per-device rates, connections per address.
    pub quota: QuotaSettings,
    /// `[database]`: where the device registry is read (the broker never migrates).
    pub database: DatabaseSettings,
    /// `[limits]`: the plausibility rules telemetry published straight to the broker
    /// is checked against — the same section ingest and the historian read, so a
    /// reading refused by one is refused by all (env `LENTERA_LIMITS__MAX_FUTURE_SECS`, …).
    pub limits: Limits,
    /// Where to write `{"mqtt": …, "admin": …}` once both listeners are bound.
    pub ready_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct BrokerSettings {
    /// MQTT/TCP listener (3.1.1 and 5.0 on the same port).
    pub mqtt_addr: String,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub admin_addr: String,
    /// Network worker threads (`net/`); connections are dealt out to them in turn. One
    /// (the default) serves hundreds of thousands of messages a second and leaves the
    /// other cores to the platform's other services; more help only when the broker
    /// has cores to itself (a message between connections on different workers costs
    /// a cross-thread wake-up, tens of microseconds on a VM; `docs/benchmarks.md`).
    pub workers: usize,
    /// QoS 0 messages queued per subscriber connection; beyond it new QoS 0 messages for
    /// that subscriber are dropped and counted (`messages_dropped_total{reason=
    /// "queue_full"}`), so one stalled client cannot grow the broker's memory.
    pub queue_capacity: usize,
    /// QoS 1/2 messages kept per session: queued, or sent and not yet acknowledged (for
    /// a persistent session also while the client is away). Below it no QoS ≥ 1 message
    /// is dropped however slow the subscriber; when full, the newest is dropped and
    /// counted as `messages_dropped_total{reason="session_queue_full"}`.
    pub session_queue_capacity: usize,
    /// Upper bound, in seconds, on a session's expiry interval: what an MQTT 3.1.1
    /// clean_session=0 session gets, and the cap on what MQTT 5 clients ask for.
    /// Default 7 days: a board or service away for a long weekend (or a week of
    /// holidays without power) resumes with what it was owed, while a client id used
    /// once and abandoned stops holding queue and store space after a week.
    /// `4294967295` means never (not recommended: abandoned sessions then live forever).
    pub max_session_expiry_secs: u32,
    /// Bytes (topic + payload) queued for one session at most: a persistent session's
    /// owed QoS ≥ 1 messages (online or away), or a connection's queue of QoS 0 and
    /// clean-session QoS ≥ 1 messages. Beyond it the oldest QoS 0 message of that
    /// queue gives way first; a QoS ≥ 1 message that still does not fit is refused
    /// for that session and counted (`messages_dropped_total{reason="queue_bytes"}`).
    pub session_queue_bytes: usize,
    /// Bytes queued for all sessions together (the same messages as
    /// `session_queue_bytes`, counted once per session). Beyond it new messages are
    /// refused for the sessions that would queue them
    /// (`messages_dropped_total{reason="queued_bytes_total"}`), and an MQTT 5
    /// publisher whose QoS ≥ 1 message was refused so gets PUBACK/PUBREC 0x97.
    pub queued_bytes_total: usize,
    /// Directory of the on-disk store (retained messages, persistent sessions and their
    /// queued messages), relative to the working directory. Empty = keep everything in
    /// memory only (nothing survives a restart).
    pub data_dir: PathBuf,
    /// The store's log is compacted (rewritten as a snapshot of the live state) once it
    /// has grown by this many bytes.
    pub store_compact_bytes: u64,
    /// Unacknowledged QoS 1 and 2 messages in flight per subscriber (MQTT 5 Receive
    /// Maximum caps it further when the client asks for less).
    pub max_inflight: u16,
    /// QoS 1/2 PUBLISHes a client may have unacknowledged towards the broker (announced
    /// to MQTT 5 clients as Receive Maximum; MQTT 5 clients that exceed it are
    /// disconnected, MQTT 3.1.1 clients are slowed down instead). Several clients
    /// (rumqttc among them) ignore the announced value and keep ~100 in flight, so the
    /// default is generous.
    pub receive_maximum: u16,
    /// Largest packet accepted from a client, in bytes.
    pub max_packet_bytes: u32,
    /// Open MQTT connections (all listeners) beyond which CONNECT is refused: MQTT 5
    /// CONNACK 0x97 Quota exceeded, MQTT 3.1.1 CONNACK 3 Server unavailable. Default
    /// 20,000: below the 65,536 open files the container images and systemd units
    /// allow (each connection is one file descriptor; the store, listeners and the
    /// admin server need a few more), so the broker answers "quota exceeded" instead
    /// of failing `accept`. 0 = no limit (the open-files limit still applies).
    pub max_connections: usize,
    /// A client must send CONNECT within this many seconds of opening the socket.
    pub connect_timeout_secs: u16,
    /// Longest keep-alive a client may ask for, in seconds (0 = no cap, the default,
    /// as Mosquitto's `max_keepalive`). An MQTT 5 client asking for more, or for none
    /// (0), is told the cap in CONNACK (Server Keep Alive) and held to it; MQTT 3.1.1
    /// has no way to say so, so such a client is refused with CONNACK 2 (identifier
    /// rejected), as Mosquitto does, rather than cut off later for a silence it was
    /// allowed. A cap makes a board whose Wi-Fi died without a FIN noticed within
    /// 1.5 × the cap.
    pub max_keep_alive_secs: u16,
    /// A packet whose first bytes arrived must be complete within this many seconds,
    /// whatever the keep-alive (0 included): a client cannot hold a half-sent packet
    /// — and the buffer for it — open forever. Closed connections are counted as
    /// `connections_closed_total{reason="packet_timeout"}`.
    pub packet_timeout_secs: u16,
    /// Longest client id accepted, in bytes (UTF-8 without U+0000 in any case,
    /// [MQTT-1.5.3-2]): longer ones get CONNACK 2 (MQTT 3.1.1) / 0x85 (MQTT 5).
    pub max_client_id_bytes: usize,
    /// On SIGTERM, how long connections may take to finish what they are doing before
    /// they are dropped. MQTT connections are long-lived and do not end on their own,
    /// so this bounds shutdown rather than waiting for clients to leave.
    pub shutdown_timeout_ms: u64,
    /// MQTT over WebSocket listener (`ws://…/mqtt`, subprotocol `mqtt`). Unset: port 8083
    /// on the MQTT listener's host, or port 0 when `mqtt_addr` uses port 0, so brokers
    /// started on OS-chosen ports (tests) never fight over 8083. Empty: no WebSocket.
    pub ws_addr: Option<String>,
    /// MQTT over TLS listener, served only when `tls_cert` and `tls_key` are set. Unset:
    /// port 8883 on the MQTT listener's host (port 0 when `mqtt_addr` uses port 0).
    pub tls_addr: Option<String>,
    /// PEM certificate chain (server certificate first) for the TLS listener.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for the TLS listener.
    pub tls_key: Option<PathBuf>,
    /// Largest TLS record plaintext the broker sends (32 ..= 16384; unset: 16384, the
    /// TLS maximum). A board whose TLS receive buffer is smaller than 16 KiB (ESP8266
    /// BearSSL with `setBufferSizes(1024, …)`) needs every record to fit it; rustls
    /// does not negotiate the Max Fragment Length extension, so set it here
    /// (`docs/broker-auth.md`, "TLS and ESP8266 boards").
    pub tls_max_fragment_bytes: Option<usize>,
    /// TOML file of service users (password hashes) and their topic rules
    /// (`docs/broker-auth.md`). Any other user name is a device, checked against the
    /// registry. With `auth.open`: unset means no authentication at all.
    pub auth_file: Option<PathBuf>,
    /// Clients without a user name may connect, with the auth file's `[anonymous]`
    /// rules (with `auth.open` and no file: with every right). Off by default.
    pub allow_anonymous: bool,
    /// Seconds between `$SYS/broker/…` statistics updates; 0 = no `$SYS` topics.
    pub sys_interval_secs: u64,
    /// `[broker.telemetry]`: readings published on `{prefix}/{device}/telemetry`.
    pub telemetry: TelemetryCheck,
}

/// `[broker.telemetry]`: the broker is the first hop of a reading a board publishes
/// straight to MQTT, so it checks it (`[limits]`) and gives it its receive time
/// (`telemetry.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryCheck {
    /// Topic prefix of the platform's topics (the services' `mqtt.topic_prefix`).
    /// PUBLISHes on `{prefix}/{device}/telemetry` are checked and stamped; empty turns
    /// both off (every payload is routed as it came).
    pub prefix: String,
    /// This broker hands out the receive-time microseconds ≡ `stamp_offset` (mod
    /// `stamp_stride`): every process that stamps readings (ingest instances, the
    /// broker) takes its own residue class with one common stride, so no two can give
    /// one device the same microsecond (`lentera_protocol::Stamper`).
    pub stamp_offset: u32,
    pub stamp_stride: u32,
}

impl Default for TelemetryCheck {
    fn default() -> Self {
        Self {
            prefix: lentera_protocol::topic::DEFAULT_PREFIX.to_owned(),
            stamp_offset: 0,
            stamp_stride: 1,
        }
    }
}

impl TelemetryCheck {
    /// Start-up check: a usable prefix and residue class.
    pub fn validate(&self) -> Result<(), String> {
        if self.stamp_stride == 0 || self.stamp_offset >= self.stamp_stride {
            return Err(format!(
                "broker.telemetry: stamp_offset ({}) must be below stamp_stride ({}), \
                 and stamp_stride at least 1",
                self.stamp_offset, self.stamp_stride
            ));
        }
        let prefix = self.prefix.trim_end_matches('/');
        if !self.prefix.is_empty()
            && (prefix.is_empty()
                || prefix.starts_with('$')
                || crate::topic_filter::validate_name(prefix).is_err())
        {
            return Err(format!(
                "broker.telemetry.prefix {:?} is not a topic prefix (no wildcards, no \
                 leading `$`; empty turns checking off)",
                self.prefix
            ));
        }
        Ok(())
    }
}

impl BrokerSettings {
    /// Where to serve MQTT over WebSocket, if anywhere.
    pub fn ws_listen_addr(&self) -> Option<String> {
        companion_addr(&self.mqtt_addr, self.ws_addr.as_deref(), 8083)
    }

    /// Where to serve MQTT over TLS, if a certificate and key are configured.
    pub fn tls_listen_addr(&self) -> Option<String> {
        self.tls_cert.as_ref().and(self.tls_key.as_ref())?;
        companion_addr(&self.mqtt_addr, self.tls_addr.as_deref(), 8883)
    }
}

/// An extra listener's address: `explicit` when given (empty = off), else `port` on the
/// MQTT listener's host, or port 0 there when the MQTT listener itself uses port 0.
fn companion_addr(mqtt_addr: &str, explicit: Option<&str>, port: u16) -> Option<String> {
    match explicit {
        Some("") => None,
        Some(addr) => Some(addr.to_owned()),
        None => {
            let (host, mqtt_port) = mqtt_addr.rsplit_once(':')?;
            let port = if mqtt_port == "0" { 0 } else { port };
            Some(format!("{host}:{port}"))
        }
    }
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            mqtt_addr: "0.0.0.0:1883".into(),
            admin_addr: "0.0.0.0:9100".into(),
            workers: 1,
            queue_capacity: 1024,
            session_queue_capacity: 10_000,
            max_session_expiry_secs: 7 * 24 * 3600,
            session_queue_bytes: 8 * 1024 * 1024,
            queued_bytes_total: 256 * 1024 * 1024,
            data_dir: PathBuf::from("./data/broker"),
            store_compact_bytes: 64 * 1024 * 1024,
            max_inflight: 64,
            receive_maximum: 1024,
            max_packet_bytes: 1024 * 1024,
            max_connections: 20_000,
            connect_timeout_secs: 10,
            max_keep_alive_secs: 0,
            packet_timeout_secs: 30,
            max_client_id_bytes: 128,
            shutdown_timeout_ms: 2_000,
            ws_addr: None,
            tls_addr: None,
            tls_cert: None,
            tls_key: None,
            tls_max_fragment_bytes: None,
            auth_file: None,
            allow_anonymous: false,
            sys_interval_secs: 10,
            telemetry: TelemetryCheck::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn companion_listeners_follow_the_mqtt_host_and_ephemeral_port() {
        let mut b = BrokerSettings::default();
        assert_eq!(b.ws_listen_addr().as_deref(), Some("0.0.0.0:8083"));
        assert_eq!(b.tls_listen_addr(), None, "TLS needs a certificate and key");
        b.tls_cert = Some("c.pem".into());
        b.tls_key = Some("k.pem".into());
        assert_eq!(b.tls_listen_addr().as_deref(), Some("0.0.0.0:8883"));
        b.mqtt_addr = "127.0.0.1:0".into();
        assert_eq!(b.ws_listen_addr().as_deref(), Some("127.0.0.1:0"));
        assert_eq!(b.tls_listen_addr().as_deref(), Some("127.0.0.1:0"));
        b.ws_addr = Some(String::new());
        assert_eq!(b.ws_listen_addr(), None, "empty turns it off");
        b.ws_addr = Some("[::]:9001".into());
        assert_eq!(b.ws_listen_addr().as_deref(), Some("[::]:9001"));
    }

    #[test]
    fn the_defaults_are_finite() {
        let b = BrokerSettings::default();
        assert_eq!(b.max_session_expiry_secs, 7 * 24 * 3600);
        assert_eq!(b.max_connections, 20_000);
        assert_eq!((b.packet_timeout_secs, b.max_client_id_bytes), (30, 128));
        assert!(b.session_queue_bytes < b.queued_bytes_total);
        assert!(!b.allow_anonymous);
        assert!(
            !Settings::default().auth.open,
            "closed unless said otherwise"
        );
    }

    #[test]
    fn telemetry_check_settings_are_validated() {
        let ok = TelemetryCheck::default();
        assert_eq!(
            (ok.prefix.as_str(), ok.stamp_offset, ok.stamp_stride),
            ("lentera", 0, 1)
        );
        assert!(ok.validate().is_ok());
        let with = |prefix: &str, offset, stride| TelemetryCheck {
            prefix: prefix.into(),
            stamp_offset: offset,
            stamp_stride: stride,
        };
        assert!(with("", 0, 1).validate().is_ok(), "empty = off");
        assert!(with("village/lentera", 2, 3).validate().is_ok());
        assert!(with("lentera", 0, 0).validate().is_err());
        assert!(with("lentera", 3, 3).validate().is_err());
        for bad in ["lentera/+", "#", "$SYS", "/"] {
            assert!(with(bad, 0, 1).validate().is_err(), "{bad}");
        }
    }
}
