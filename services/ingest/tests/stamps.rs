//! Receive times over real sockets: every reading without `ts` that reaches the broker
//! has a microsecond of its own for its device — through every door (JSON, SenML,
//! `/sensor`, TCP lines), for a burst in one request and for concurrent requests — and
//! an instance stamps only its own residue class (`ingest.instance` of
//! `ingest.instances`). Settings ingest cannot honour stop it at start-up.

mod common;

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use common::{Line, Mqtt, TestApp, closed_port, settings};
use futures_util::future::join_all;
use lentera_ingest::startup::Application;
use lentera_tests::TestBroker;
use serde_json::{Value, json};

async fn post(app: &TestApp, path: &str, content_type: &str, body: String) -> u16 {
    reqwest::Client::new()
        .post(app.url(path))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("request sent")
        .status()
        .as_u16()
}

/// The `ts` of the next `n` readings published on `topic`, checked to be the
/// platform's microsecond format.
async fn next_stamps(sub: &mut Mqtt, topic: &str, n: usize) -> Vec<DateTime<Utc>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let p: Value = serde_json::from_slice(&sub.next_on(topic).await).unwrap();
        let ts = p["ts"].as_str().expect("a ts string").to_owned();
        let fraction = ts
            .split_once('.')
            .and_then(|(_, f)| f.strip_suffix('Z'))
            .unwrap_or("");
        assert_eq!(fraction.len(), 6, "microsecond precision: {ts}");
        out.push(DateTime::parse_from_rfc3339(&ts).unwrap().to_utc());
    }
    out
}

fn distinct(stamps: &[DateTime<Utc>]) -> usize {
    stamps.iter().collect::<HashSet<_>>().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_readings_without_ts_in_one_request_reach_the_broker_with_a_hundred_ts() {
    let broker = TestBroker::start();
    let topic = "lentera/burst-1/telemetry";
    let mut sub = Mqtt::connect(broker.port(), topic).await;
    let app = TestApp::spawn(settings(broker.port())).await;
    app.wait_ready().await;

    let before = Utc::now();
    let batch: Vec<Value> = (0..100)
        .map(|i| json!({"device":"burst-1","temperature": 20.0 + f64::from(i) / 10.0}))
        .collect();
    let status = post(
        &app,
        "/api/v1/readings",
        "application/json",
        Value::Array(batch).to_string(),
    )
    .await;
    assert_eq!(status, 202);
    let stamps = next_stamps(&mut sub, topic, 100).await;
    assert_eq!(distinct(&stamps), 100, "100 readings, 100 receive times");
    let after = Utc::now();
    for ts in &stamps {
        assert!(
            *ts >= before - chrono::Duration::microseconds(1) && *ts <= after,
            "{ts} is the receive time"
        );
    }
    app.shutdown().await;
}

/// Instance 1 of 2, every door at once for one device: SenML packs without time,
/// `/sensor` posts (stored as the seed device) and TCP lines from three connections,
/// all concurrently. Every stamp is distinct and odd (the instance's residue class).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_door_stamps_from_one_stamper_in_the_instances_class() {
    let broker = TestBroker::start();
    let mut sub = Mqtt::connect(broker.port(), "lentera/+/telemetry").await;
    let mut s = settings(broker.port());
    s.ingest.instance = 1;
    s.ingest.instances = 2;
    s.ingest.seed_device = "door-1".into();
    let app = TestApp::spawn(s).await;
    app.wait_ready().await;

    let senml = (0..20).map(|i| {
        let pack = json!([{"bn":"door-1/","n":"lux","v":i}]).to_string();
        ("/api/v1/readings", "application/senml+json", pack)
    });
    let sensor = (0..20).map(|i| {
        let body = format!("{{\"suhu\": {}}}", 20 + i);
        ("/sensor", "application/json", body)
    });
    let http = async {
        let requests = senml.chain(sensor);
        let statuses = join_all(requests.map(|(path, ct, body)| post(&app, path, ct, body))).await;
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 202),
            "{statuses:?}"
        );
    };
    let addr = app.tcp;
    let tcp = join_all((0..3).map(|c| async move {
        let mut line = Line::connect(addr).await;
        for i in 0..20 {
            assert_eq!(
                line.request(&format!("door-1 humidity={}", c * 20 + i))
                    .await,
                "OK"
            );
        }
    }));
    tokio::join!(http, tcp);

    let stamps = next_stamps(&mut sub, "lentera/door-1/telemetry", 100).await;
    assert_eq!(distinct(&stamps), 100, "one receive time per reading");
    for ts in &stamps {
        assert_eq!(
            ts.timestamp_micros().rem_euclid(2),
            1,
            "{ts}: instance 1 of 2"
        );
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_ingest_cannot_honour_stop_it_at_start_up() {
    let mut s = settings(closed_port());
    s.ingest.instance = 2;
    s.ingest.instances = 2;
    let err = Application::build(s)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("ingest.instance must be below"), "{err}");

    let mut s = settings(closed_port());
    s.limits.ranges.insert(
        "co2".into(),
        lentera_protocol::Range::new(Some(0.0), Some(f64::INFINITY)),
    );
    let err = format!("{:#}", Application::build(s).await.err().expect("refused"));
    assert!(err.contains("limits.ranges.co2"), "{err}");
}
