//! The broker's Prometheus series, registered once and shared by every worker thread.

use std::sync::Arc;

use lentera_bootstrap::{Counter, Gauge, Observability};
use lentera_protocol::ReadingError;

/// Cheap to clone (atomics behind `Arc`s), so every worker and task holds its own copy.
#[derive(Clone)]
pub struct Metrics {
    /// Open MQTT connections that completed CONNECT.
    pub connections: Gauge,
    /// PUBLISH packets accepted from clients (wills included).
    pub received: Counter,
    /// PUBLISH packets written to subscribers.
    pub delivered: Counter,
    /// A subscriber's queue was full: it stalled, and we drop rather than buffer forever.
    pub dropped_queue_full: Counter,
    /// A persistent session's queue was at `session_queue_capacity`; the newest message
    /// was dropped (see `router.rs` for why newest).
    pub dropped_session_queue_full: Counter,
    /// Sessions held (connected, plus persistent ones whose client is away).
    pub sessions: Gauge,
    /// The subscriber went away between routing and delivery.
    pub dropped_disconnected: Counter,
    /// The connection refused the packet (e.g. larger than the client's maximum).
    pub dropped_send_error: Counter,
    /// Refused for one session: its queue held `session_queue_bytes` already.
    pub dropped_queue_bytes: Counter,
    /// Refused for one session: all queues together held `queued_bytes_total`.
    pub dropped_queued_bytes_total: Counter,
    /// An oldest QoS 0 message that gave way to a newer one of its queue.
    pub dropped_qos0_evicted: Counter,
    /// Bytes (topic + payload) queued for all sessions (`quota.rs`).
    pub queued_bytes: Gauge,
    /// Connections closed at accept: their address had `max_connections_per_ip` open.
    pub refused_per_ip: Counter,
    /// CONNECTs refused for their client id (NUL, longer than `max_client_id_bytes`).
    pub refused_client_id: Counter,
    /// Device CONNECTs whose client id was not their user name (device id).
    pub refused_client_id_mismatch: Counter,
    /// Device CONNECTs refused because no registry snapshot was ever loaded.
    pub refused_registry_unavailable: Counter,
    /// Devices in the registry snapshot (refreshed each second).
    pub registry_devices: Gauge,
    /// Device connections closed for publishing above `[quota]`.
    pub closed_rate_limited: Counter,
    /// Device connections closed because the device was revoked.
    pub closed_revoked: Counter,
    /// Connections closed because a packet was not complete in `packet_timeout_secs`.
    pub closed_packet_timeout: Counter,
    /// Topics that currently hold a retained message.
    pub retained: Gauge,
    /// Connections closed because the same client id connected again.
    pub takeovers: Counter,
    /// Last Will messages published after an abnormal disconnect.
    pub wills: Counter,
    /// A PUBLISH the client may not make (ACL, or `$SYS/`): dropped (MQTT 3.1.1) or
    /// refused with 0x87 (MQTT 5).
    pub dropped_not_authorized: Counter,
    /// CONNECTs refused: unknown user / wrong password, or not authorized.
    pub refused_bad_credentials: Counter,
    pub refused_not_authorized: Counter,
    /// CONNECTs refused because `max_connections` were open.
    pub refused_connection_limit: Counter,
    /// QoS ≥ 1 PUBLISHes held back because a subscriber queue their publisher fed was backed up.
    pub publishes_held: Counter,
    /// SUBSCRIBE filters refused by the ACL.
    pub subscriptions_refused: Counter,
    /// Subscriptions held by all sessions (refreshed each second by `sys.rs`).
    pub subscriptions: Gauge,
    /// PUBLISH payload bytes accepted from clients / written to subscribers.
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    /// Telemetry without `ts` that the broker gave its receive time (`telemetry.rs`).
    pub telemetry_stamped: Counter,
    /// Telemetry refused (not routed, reported on `{prefix}/{device}/error`), one
    /// counter per [`ReadingError::code`].
    pub telemetry_rejected: Arc<[(&'static str, Counter)]>,
}

impl Metrics {
    /// The refusal counter of `code` (a [`ReadingError::code`]).
    pub fn telemetry_rejected(&self, code: &str) -> Option<&Counter> {
        self.telemetry_rejected
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, counter)| counter)
    }
}

impl Metrics {
    pub fn new(obs: &Observability) -> Self {
        let dropped = |reason| {
            obs.counter(
                "messages_dropped_total",
                "Messages not delivered to a subscriber, by reason.",
                &[("reason", reason)],
            )
        };
        Self {
            connections: obs.gauge("connections", "Open MQTT connections."),
            received: obs.counter(
                "messages_received_total",
                "PUBLISH packets accepted from clients, wills included.",
                &[],
            ),
            delivered: obs.counter(
                "messages_delivered_total",
                "PUBLISH packets sent to subscribers.",
                &[],
            ),
            dropped_queue_full: dropped("queue_full"),
            dropped_session_queue_full: dropped("session_queue_full"),
            dropped_disconnected: dropped("disconnected"),
            dropped_send_error: dropped("send_error"),
            // Series of one name must be adjacent: the exposition format allows one
            // HELP/TYPE block per name, and `render` writes one per run of equal names.
            dropped_not_authorized: dropped("not_authorized"),
            dropped_queue_bytes: dropped("queue_bytes"),
            dropped_queued_bytes_total: dropped("queued_bytes_total"),
            dropped_qos0_evicted: dropped("qos0_evicted"),
            queued_bytes: obs.gauge(
                "queued_bytes",
                "Bytes (topic + payload) queued for all sessions, online or away.",
            ),
            sessions: obs.gauge(
                "sessions",
                "Sessions held: connected, and persistent ones whose client is away.",
            ),
            retained: obs.gauge("retained_messages", "Topics holding a retained message."),
            takeovers: obs.counter(
                "session_takeovers_total",
                "Connections closed because their client id connected again.",
                &[],
            ),
            wills: obs.counter(
                "wills_published_total",
                "Last Will messages published after an abnormal disconnect.",
                &[],
            ),
            refused_bad_credentials: obs.counter(
                "connections_refused_total",
                "CONNECTs refused, by reason.",
                &[("reason", "bad_credentials")],
            ),
            refused_not_authorized: obs.counter(
                "connections_refused_total",
                "CONNECTs refused, by reason.",
                &[("reason", "not_authorized")],
            ),
            refused_connection_limit: obs.counter(
                "connections_refused_total",
                "CONNECTs refused, by reason.",
                &[("reason", "connection_limit")],
            ),
            refused_per_ip: obs.counter(
                "connections_refused_total",
                "CONNECTs refused, by reason.",
                &[("reason", "per_ip_limit")],
            ),
            refused_client_id: obs.counter(
                "connections_refused_total",
                "CONNECTs refused, by reason.",
                &[("reason", "client_id")],
            ),
            refused_client_id_mismatch: obs.counter(
                "connections_refused_total",
                "CONNECTs refused, by reason.",
                &[("reason", "client_id_mismatch")],
            ),
            refused_registry_unavailable: obs.counter(
                "connections_refused_total",
                "CONNECTs refused, by reason.",
                &[("reason", "registry_unavailable")],
            ),
            closed_packet_timeout: obs.counter(
                "connections_closed_total",
                "Connections the broker closed, by reason.",
                &[("reason", "packet_timeout")],
            ),
            closed_rate_limited: obs.counter(
                "connections_closed_total",
                "Connections the broker closed, by reason.",
                &[("reason", "rate_limited")],
            ),
            closed_revoked: obs.counter(
                "connections_closed_total",
                "Connections the broker closed, by reason.",
                &[("reason", "revoked")],
            ),
            registry_devices: obs.gauge(
                "registry_devices",
                "Provisioned, enabled devices in the broker's registry snapshot.",
            ),
            publishes_held: obs.counter(
                "publishes_held_total",
                "QoS 1/2 PUBLISHes held back until the backlog of a subscriber queue their publisher fed drained.",
                &[],
            ),
            subscriptions_refused: obs.counter(
                "subscriptions_refused_total",
                "SUBSCRIBE filters refused, by reason.",
                &[("reason", "not_authorized")],
            ),
            subscriptions: obs.gauge("subscriptions", "Subscriptions held by all sessions."),
            bytes_received: obs.counter(
                "payload_bytes_received_total",
                "PUBLISH payload bytes accepted from clients, wills included.",
                &[],
            ),
            bytes_sent: obs.counter(
                "payload_bytes_sent_total",
                "PUBLISH payload bytes sent to subscribers.",
                &[],
            ),
            telemetry_stamped: obs.counter(
                "telemetry_stamped_total",
                "Telemetry PUBLISHes without ts given the broker's receive time.",
                &[],
            ),
            // Adjacent, as the exposition format wants (see `dropped` above).
            telemetry_rejected: ReadingError::CODES
                .iter()
                .map(|code| {
                    let c = obs.counter(
                        "telemetry_rejected_total",
                        "Telemetry PUBLISHes refused (not routed; reported on {prefix}/{device}/error), by reason.",
                        &[("reason", code)],
                    );
                    (*code, c)
                })
                .collect(),
        }
    }
}
