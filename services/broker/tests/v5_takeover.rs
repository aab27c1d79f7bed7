//! MQTT 5 session takeover and the old connection's Will (§3.1.4 point 3): the will is
//! published as §3.1.2.5 describes — at once when it has no delay or the new connection
//! ends the session (clean start), and not at all when its delay is running and the new
//! connection resumes the session [MQTT-3.1.3-9]. (MQTT 3.1.1 takeovers discard the will:
//! `sessions.rs`, `duplicate_client_id_takes_over_and_old_will_is_not_published`.)

mod common;

use std::time::Duration;

use common::{Broker, Client};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{LastWill, LastWillProperties};

/// An MQTT 5 client `id` with a will "gone" on `will/{id}` delayed by `delay` seconds,
/// and a session that outlives the connection by an hour.
fn with_will(broker: &Broker, id: &str, delay: u32, clean_start: bool) -> rumqttc::v5::MqttOptions {
    let mut o = Client::v5_options(broker, id);
    o.set_clean_start(clean_start)
        .set_session_expiry_interval(Some(3600));
    let props = LastWillProperties {
        delay_interval: Some(delay),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: vec![],
    };
    o.set_last_will(LastWill::new(
        format!("will/{id}"),
        "gone",
        QoS::AtLeastOnce,
        false,
        Some(props),
    ));
    o
}

/// Connects `id` with a will, then takes it over with a second connection; returns
/// whether the watcher saw the first connection's will within `within`.
async fn will_after_takeover(delay: u32, new_clean_start: bool, within: Duration) -> bool {
    let broker = Broker::start().await;
    let mut watcher = Client::v3(&broker, "watcher").await;
    watcher.subscribe("will/#", 1).await;
    let mut first = Client::connect_v5(with_will(&broker, "board", delay, true)).await;
    let _second = Client::connect_v5(with_will(&broker, "board", delay, new_clean_start)).await;
    assert!(first.expect_closed().await.contains("SessionTakenOver"));
    let got = watcher.try_next_publish(within).await;
    broker.stop().await;
    got.is_some_and(|m| m.topic == "will/board" && m.payload == b"gone")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_publishes_a_will_without_delay() {
    // §3.1.4 point 3 → §3.1.2.5: closed without DISCONNECT, delay 0 has passed.
    assert!(will_after_takeover(0, false, common::WAIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_with_clean_start_ends_the_session_and_publishes_a_delayed_will_at_once() {
    // [MQTT-3.1.2-8]: published when the delay passes or the session ends, whichever first.
    assert!(will_after_takeover(60, true, common::WAIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_resuming_the_session_within_the_will_delay_cancels_the_will() {
    // [MQTT-3.1.3-9]: a new connection for the session before the delay passes.
    assert!(!will_after_takeover(60, false, Duration::from_secs(2)).await);
}
