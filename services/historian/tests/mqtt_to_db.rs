//! The whole path: MQTT (our broker, a real process) → the real historian → a real
//! PostgreSQL.

mod common;

use std::time::Duration;

use common::{RunningApp, TestDb, eventually};
use lentera_tests::TestBroker;
use rumqttc::{AsyncClient, QoS};

/// Publishes a status message until the historian has stored it, which proves its
/// subscriptions are in place (readiness only says the connection is up).
async fn wait_until_subscribed(db: &TestDb, mqtt: &AsyncClient, probe: &str) {
    let sql = format!("SELECT count(*) FROM devices WHERE id = '{probe}' AND status = 'online'");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        mqtt.publish(
            format!("lentera/{probe}/status"),
            QoS::AtLeastOnce,
            false,
            "online",
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        if db.count(&sql).await == 1 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "historian never subscribed"
        );
    }
}

async fn metric(app: &RunningApp, series: &str) -> Option<u64> {
    let (_, text) = app.get("/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_stored_acked_after_commit_and_survive_a_restart() {
    // The restart half needs the broker to queue QoS 1 messages for the historian's
    // disconnected persistent session (clean_session=false) and resume it on reconnect.
    let broker = TestBroker::start();
    let db = TestDb::new().await;
    let settings = common::settings(&db.url, broker.port());
    let app = RunningApp::spawn(settings.clone());
    let mqtt = common::publisher(broker.port());
    eventually(15, "readyz 200", || async {
        app.get("/readyz").await.0 == 200
    })
    .await;
    wait_until_subscribed(&db, &mqtt, "probe-1").await;

    let telemetry = r#"{"temperature":27.3,"lux":3.1,"ts":"2026-11-22T01:00:00Z"}"#;
    for (topic, payload) in [
        ("lentera/gh-1/telemetry", telemetry),
        // Redelivery of the same reading must not add rows.
        ("lentera/gh-1/telemetry", telemetry),
        ("lentera/gh-1/telemetry", "{not json"),
        // A board publishing straight to MQTT gets the same [limits] as ingest.
        ("lentera/gh-1/telemetry", r#"{"humidity":140}"#),
        // Plausible but older than the retention period: acknowledged, not stored.
        (
            "lentera/gh-1/telemetry",
            r#"{"lux":1,"ts":"2023-01-01T00:00:00Z"}"#,
        ),
        ("lentera/lamp-1/lamp/set", "on"),
        ("lentera/lamp-1/lamp/state", "on"),
        ("lentera/lamp-1/lamp/mode", r#"{"mode":"off"}"#),
    ] {
        mqtt.publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    eventually(10, "lamp events stored", || async {
        db.count("SELECT count(*) FROM lamp_events WHERE device = 'lamp-1'")
            .await
            == 3
    })
    .await;
    assert_eq!(
        db.count("SELECT count(*) FROM readings WHERE device = 'gh-1'")
            .await,
        2
    );
    assert_eq!(
        db.count("SELECT count(*) FROM lamp_modes WHERE mode = 'off'")
            .await,
        1
    );
    assert_eq!(
        db.count("SELECT count(*) FROM devices WHERE id = 'lamp-1' AND kind = 'lamp'")
            .await,
        1
    );
    // The two refusals are dead letters, whoever refused them: our broker (which does
    // not pass them on and reports them on the error topic) or, on another broker, the
    // historian itself.
    eventually(10, "both refusals kept as dead letters", || async {
        db.count("SELECT count(*) FROM rejected_readings WHERE device = 'gh-1'")
            .await
            == 2
    })
    .await;
    let reasons: Vec<(String,)> = sqlx::query_as(
        "SELECT reason FROM rejected_readings WHERE device = 'gh-1' ORDER BY reason",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        reasons,
        vec![("malformed_json".to_owned(),), ("out_of_range".to_owned(),)]
    );
    assert_eq!(
        metric(&app, "lentera_historian_dead_letters_total").await,
        Some(2)
    );
    assert_eq!(
        metric(&app, "lentera_historian_readings_stored_total").await,
        Some(2)
    );
    assert_eq!(
        metric(&app, "lentera_historian_skipped_total").await,
        Some(1)
    );
    app.stop();

    // While the historian is down its persistent session queues QoS 1 messages.
    mqtt.publish(
        "lentera/gh-2/telemetry",
        QoS::AtLeastOnce,
        false,
        r#"{"humidity":60,"ts":"2026-11-22T01:01:00Z"}"#,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let app = RunningApp::spawn(settings);
    eventually(10, "the message queued while down is stored", || async {
        db.count("SELECT count(*) FROM readings WHERE device = 'gh-2'")
            .await
            == 1
    })
    .await;
    wait_until_subscribed(&db, &mqtt, "probe-2").await;
    // Everything the first instance took was acknowledged after commit, so nothing
    // (in particular not the refusals) comes back to the second one.
    assert_eq!(
        metric(&app, "lentera_historian_dead_letters_total").await,
        Some(0)
    );
    assert_eq!(db.count("SELECT count(*) FROM rejected_readings").await, 2);
    assert_eq!(
        db.count("SELECT count(*) FROM lamp_events WHERE device = 'lamp-1'")
            .await,
        3
    );
    app.stop();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_is_kept_and_retried_until_it_commits() {
    let broker = TestBroker::start();
    let db = TestDb::new().await;
    let app = RunningApp::spawn(common::settings(&db.url, broker.port()));
    let mqtt = common::publisher(broker.port());
    eventually(15, "readyz 200", || async {
        app.get("/readyz").await.0 == 200
    })
    .await;
    wait_until_subscribed(&db, &mqtt, "probe").await;

    // Make every write fail: the batch's INSERT INTO readings has no table to go to.
    sqlx::query("ALTER TABLE readings RENAME TO readings_away")
        .execute(&db.pool)
        .await
        .unwrap();
    mqtt.publish(
        "lentera/gh-1/telemetry",
        QoS::AtLeastOnce,
        false,
        r#"{"lux":5}"#,
    )
    .await
    .unwrap();
    eventually(10, "readiness false while writes fail", || async {
        app.get("/readyz").await.0 == 503
    })
    .await;
    assert!(
        metric(&app, "lentera_historian_batch_errors_total")
            .await
            .unwrap()
            >= 1
    );

    sqlx::query("ALTER TABLE readings_away RENAME TO readings")
        .execute(&db.pool)
        .await
        .unwrap();
    eventually(15, "the kept batch commits", || async {
        db.count("SELECT count(*) FROM readings WHERE device = 'gh-1'")
            .await
            == 1
    })
    .await;
    eventually(5, "readiness true again", || async {
        app.get("/readyz").await.0 == 200
    })
    .await;
    app.stop();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_commits_the_batch_in_hand() {
    let broker = TestBroker::start();
    let db = TestDb::new().await;
    let mut settings = common::settings(&db.url, broker.port());
    // A batch that would otherwise wait a minute: only shutdown can write it.
    settings.historian.batch_size = 1000;
    settings.historian.batch_interval_ms = 60_000;
    let app = RunningApp::spawn(settings);
    let mqtt = common::publisher(broker.port());
    eventually(15, "readyz 200", || async {
        app.get("/readyz").await.0 == 200
    })
    .await;
    // Published until it is in the batch, since the subscription may still be in flight
    // right after CONNACK. Every copy is the same reading (same ts), stored once.
    eventually(10, "the reading is in the batch", || async {
        mqtt.publish(
            "lentera/gh-1/telemetry",
            QoS::AtLeastOnce,
            false,
            r#"{"lux":7,"ts":"2026-11-22T01:00:00Z"}"#,
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        metric(&app, "lentera_historian_pending_deliveries")
            .await
            .is_some_and(|n| n >= 1)
    })
    .await;
    assert_eq!(
        db.count("SELECT count(*) FROM readings WHERE device = 'gh-1'")
            .await,
        0
    );
    app.stop();
    assert_eq!(
        db.count("SELECT count(*) FROM readings WHERE device = 'gh-1'")
            .await,
        1
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_in_a_shared_group_split_the_stream() {
    let broker = TestBroker::start();
    let db = TestDb::new().await;
    let mut settings = common::settings(&db.url, broker.port());
    settings.historian.shared_group = Some("historian".into());
    let a = RunningApp::spawn(settings.clone());
    settings.mqtt.client_id = Some(common::unique("hist"));
    let b = RunningApp::spawn(settings);
    let mqtt = common::publisher(broker.port());
    for app in [&a, &b] {
        eventually(15, "readyz 200", || async {
            app.get("/readyz").await.0 == 200
        })
        .await;
    }
    wait_until_subscribed(&db, &mqtt, "probe").await;
    // Let both instances' subscriptions settle before counting who gets what.
    tokio::time::sleep(Duration::from_millis(300)).await;

    for i in 0..40 {
        let payload = format!(r#"{{"lux":{i},"ts":{}}}"#, 1_790_000_000_000i64 + i);
        mqtt.publish("lentera/gh-1/telemetry", QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    eventually(10, "all 40 readings stored", || async {
        db.count("SELECT count(*) FROM readings WHERE device = 'gh-1'")
            .await
            == 40
    })
    .await;
    let series = "lentera_historian_readings_stored_total";
    let (na, nb) = (
        metric(&a, series).await.unwrap(),
        metric(&b, series).await.unwrap(),
    );
    assert_eq!(na + nb, 40, "each reading stored by exactly one instance");
    assert!(na > 0 && nb > 0, "both instances took a share: {na} / {nb}");
    a.stop();
    b.stop();
    db.drop_db().await;
}
