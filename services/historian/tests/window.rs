//! The historian notices when the broker's in-flight window caps its batches (our
//! broker's default `broker.max_inflight` is 64, the historian's `batch_size` 5,000):
//! `lentera_historian_batches_window_capped_total` counts such batches (and a warning is
//! logged once); batches that fill up before the window does are not counted.

mod common;

use std::time::Duration;

use common::{RunningApp, TestDb, eventually};
use lentera_tests::TestBroker;
use rumqttc::QoS;

const CAPPED: &str = "lentera_historian_batches_window_capped_total";

/// Streams `n` readings through a historian with `batch_size` on a broker with the
/// default window of 64, and returns the capped-batch counter once all are stored.
async fn capped_batches(batch_size: usize, n: usize) -> u64 {
    let broker = TestBroker::start();
    let db = TestDb::new().await;
    let mut settings = common::settings(&db.url, broker.port());
    settings.historian.batch_size = batch_size;
    settings.historian.batch_interval_ms = 100;
    let app = RunningApp::spawn(settings);
    let mqtt = common::publisher(broker.port());
    eventually(15, "readyz 200", || async {
        app.get("/readyz").await.0 == 200
    })
    .await;
    // Subscribed once a probe is stored (readiness only says the connection is up).
    eventually(15, "the probe stored", || async {
        mqtt.publish("lentera/probe/status", QoS::AtLeastOnce, false, "online")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        db.count("SELECT count(*) FROM devices WHERE id = 'probe'")
            .await
            == 1
    })
    .await;

    let base_ms = chrono::Utc::now().timestamp_millis() - 60_000;
    for i in 0..n {
        let payload = format!(r#"{{"seq":{i},"ts":{}}}"#, base_ms + i as i64);
        mqtt.publish("lentera/win-1/telemetry", QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    eventually(60, "every reading stored", || async {
        db.count("SELECT count(*) FROM readings WHERE device = 'win-1'")
            .await
            == n as i64
    })
    .await;
    let (_, text) = app.get("/metrics").await;
    let capped = text
        .lines()
        .find_map(|l| l.strip_prefix(CAPPED)?.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no {CAPPED} in /metrics:\n{text}"));
    let batches = text.lines().find_map(|l| {
        l.strip_prefix("lentera_historian_batches_total")?
            .trim()
            .parse::<u64>()
            .ok()
    });
    eprintln!("batch_size {batch_size}: {n} readings, {batches:?} batches, {capped} window-capped");
    app.stop();
    db.drop_db().await;
    capped
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_capped_by_the_broker_window_are_counted() {
    // ~16 windows of 64, each idle until the 100 ms deadline.
    let capped = capped_batches(5000, 1000).await;
    assert!(
        capped >= 3,
        "batches stuck at the broker's window of 64 were not noticed ({capped})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_that_fill_before_the_window_are_not_counted() {
    let capped = capped_batches(50, 1000).await;
    assert_eq!(capped, 0, "full batches are not a sign of the window");
}
