//! `$SYS/broker/…`: the broker's statistics as retained MQTT messages, the same counters
//! `/metrics` shows (`metrics.rs`), for clients that can only speak MQTT.
//!
//! A tokio task refreshes the figures the router counts on demand (subscriptions) every
//! second and, every `broker.sys_interval_secs` (0 = never), publishes each value that
//! changed as a retained QoS 0 message through [`Router::route`] — not counted as
//! received, and kept in memory only: they describe this process, so the store neither
//! logs nor recovers them. Clients may not publish under `$SYS/` (`auth.rs`), and `#` or
//! `+/…` subscriptions do not see these topics [MQTT-4.7.2-1]: subscribe to `$SYS/#`
//! (the ACL must allow it).
//!
//! Values are plain decimal numbers (the version is text). Byte counts are PUBLISH
//! payload bytes, not network bytes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ntex_bytes::{ByteString, Bytes};
use ntex_mqtt::QoS;

use crate::metrics::Metrics;
use crate::router::{Message, Router};

/// Every `$SYS` topic with its current value.
pub fn snapshot(m: &Metrics, uptime: Duration) -> Vec<(&'static str, String)> {
    let mut v = vec![
        (
            "$SYS/broker/version",
            format!("lentera-broker {}", env!("CARGO_PKG_VERSION")),
        ),
        ("$SYS/broker/uptime", uptime.as_secs().to_string()),
        (
            "$SYS/broker/clients/connected",
            m.connections.get().to_string(),
        ),
        ("$SYS/broker/sessions", m.sessions.get().to_string()),
        (
            "$SYS/broker/subscriptions/count",
            m.subscriptions.get().to_string(),
        ),
        ("$SYS/broker/retained/count", m.retained.get().to_string()),
        (
            "$SYS/broker/messages/received",
            m.received.get().to_string(),
        ),
        ("$SYS/broker/messages/sent", m.delivered.get().to_string()),
        (
            "$SYS/broker/bytes/received",
            m.bytes_received.get().to_string(),
        ),
        ("$SYS/broker/bytes/sent", m.bytes_sent.get().to_string()),
    ];
    for (topic, c) in [
        (
            "$SYS/broker/messages/dropped/queue_full",
            &m.dropped_queue_full,
        ),
        (
            "$SYS/broker/messages/dropped/session_queue_full",
            &m.dropped_session_queue_full,
        ),
        (
            "$SYS/broker/messages/dropped/disconnected",
            &m.dropped_disconnected,
        ),
        (
            "$SYS/broker/messages/dropped/send_error",
            &m.dropped_send_error,
        ),
        (
            "$SYS/broker/messages/dropped/not_authorized",
            &m.dropped_not_authorized,
        ),
        (
            "$SYS/broker/connections/refused/bad_credentials",
            &m.refused_bad_credentials,
        ),
        (
            "$SYS/broker/connections/refused/not_authorized",
            &m.refused_not_authorized,
        ),
        (
            "$SYS/broker/connections/refused/connection_limit",
            &m.refused_connection_limit,
        ),
        (
            "$SYS/broker/subscriptions/refused/not_authorized",
            &m.subscriptions_refused,
        ),
    ] {
        v.push((topic, c.get().to_string()));
    }
    v
}

/// Runs until aborted (see `startup.rs`).
pub async fn run(router: Router, interval_secs: u64) {
    let started = Instant::now();
    let metrics = router.metrics().clone();
    let mut published: HashMap<&'static str, String> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for second in 0u64.. {
        // The first tick is immediate: values are there from the start.
        tick.tick().await;
        metrics
            .subscriptions
            .set(router.subscription_count() as i64);
        if interval_secs == 0 || second % interval_secs != 0 {
            continue;
        }
        for (topic, value) in snapshot(&metrics, started.elapsed()) {
            if published.get(topic) == Some(&value) {
                continue;
            }
            router.route(
                None,
                Message {
                    topic: ByteString::from_static(topic),
                    payload: Bytes::copy_from_slice(value.as_bytes()),
                    qos: QoS::AtMostOnce,
                    retain: true,
                    properties: None,
                },
            );
            published.insert(topic, value);
        }
    }
}
