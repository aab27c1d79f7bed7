//! The scale-out story: several historians share one MQTT shared subscription
//! (`$share/historian/…`), the broker splits the stream between them, and PostgreSQL
//! still ends up with every reading exactly once — on our broker, on Mosquitto and on
//! rumqttd 0.20.0, also when one of the historians is killed mid-stream.

use std::time::Duration;

use lentera_tests::readings::{Stream, assert_stored_exactly_once, wait_rows};
use lentera_tests::{BrokerKind, Stack};

const WAIT: Duration = Duration::from_secs(20);
const STORED: &str = "lentera_historian_readings_stored_total";

async fn two_historians_split_the_stream(stack: Stack, device: &str) {
    let mut stack = stack;
    assert_eq!(stack.historians.len(), 2);
    let stream = Stream::start(
        stack.board_url(device).await.unwrap(),
        device,
        400,
        200.0,
        4,
    );
    let report = stream.finish(WAIT).await.unwrap();
    report.assert_all_accepted();
    let pool = stack.db.connect().await.unwrap();
    assert_stored_exactly_once(&pool, &report, WAIT).await;

    // Both took part, and between them inserted each reading once.
    let mut per_historian = Vec::new();
    for h in &stack.historians {
        per_historian.push(h.metric("admin", STORED).await.unwrap());
    }
    assert!(
        per_historian.iter().all(|n| *n > 0.0),
        "each historian stored some of the stream: {per_historian:?}"
    );
    assert_eq!(
        per_historian.iter().sum::<f64>(),
        400.0,
        "inserted rows per historian: {per_historian:?}"
    );
    stack.terminate_all().unwrap();
}

async fn two_historians_on(kind: BrokerKind, device: &str) {
    let Some(builder) = Stack::on(kind) else {
        return;
    };
    let stack = builder
        .historians(2, "historian")
        .readings_only()
        .start()
        .await
        .expect("stack starts");
    two_historians_split_the_stream(stack, device).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_historians_sharing_a_subscription_store_each_reading_once() {
    two_historians_on(BrokerKind::Ours, "shared-ours").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_historians_sharing_a_subscription_on_mosquitto_store_each_reading_once() {
    two_historians_on(BrokerKind::Mosquitto, "shared-mosquitto").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_historians_sharing_a_subscription_on_rumqttd_store_each_reading_once() {
    two_historians_on(BrokerKind::Rumqttd, "shared-rumqttd").await;
}

/// One of two sharing historians SIGKILLed mid-stream with a half-full batch in hand,
/// and started again once 60 more readings were accepted: what it held is redelivered
/// (to it, or to its partner) and every reading is stored once.
async fn a_sharing_historian_killed_mid_stream(kind: BrokerKind, device: &str) {
    let Some(builder) = Stack::on(kind) else {
        return;
    };
    let mut stack = builder
        .historians(2, "historian")
        .env("historian", "LENTERA_HISTORIAN__BATCH_INTERVAL_MS", "500")
        .readings_only()
        .start()
        .await
        .expect("stack starts");
    let pool = stack.db.connect().await.unwrap();
    let stream = Stream::start(stack.board_url(device).await.unwrap(), device, 300, 50.0, 4);
    wait_rows(&pool, device, 80, WAIT).await.unwrap();
    let n = stream.accepted();
    stream.wait_accepted(n + 12, WAIT).await.unwrap();

    stack.historians[1].kill().unwrap();
    let n = stream.accepted();
    stream.wait_accepted(n + 60, WAIT).await.unwrap();
    stack.historians[1].restart().unwrap();
    stack.historians[1].wait_ready("admin").await.unwrap();

    let report = stream.finish(WAIT).await.unwrap();
    report.assert_all_accepted();
    assert_stored_exactly_once(&pool, &report, WAIT).await;
    stack.terminate_all().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharing_historian_killed_mid_stream_loses_nothing() {
    a_sharing_historian_killed_mid_stream(BrokerKind::Ours, "shared-kill-ours").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharing_historian_killed_mid_stream_on_mosquitto_loses_nothing() {
    a_sharing_historian_killed_mid_stream(BrokerKind::Mosquitto, "shared-kill-mosq").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharing_historian_killed_mid_stream_on_rumqttd_loses_nothing() {
    a_sharing_historian_killed_mid_stream(BrokerKind::Rumqttd, "shared-kill-rumqttd").await;
}
