//! The broker's Prometheus series, registered once and shared by every worker thread.

use lentera_bootstrap::{Counter, Gauge, Observability};

/// Cheap to clone (atomics behind `Arc`s), so each connection task holds its own copy.
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
    /// Topics that currently hold a retained message.
    pub retained: Gauge,
    /// Connections closed because the same client id connected again.
    pub takeovers: Counter,
    /// Last Will messages published after an abnormal disconnect.
    pub wills: Counter,
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
            sessions: obs.gauge(
                "sessions",
                "Sessions held: connected, and persistent ones whose client is away.",
            ),
            dropped_disconnected: dropped("disconnected"),
            dropped_send_error: dropped("send_error"),
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
        }
    }
}
