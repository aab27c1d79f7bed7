//! The HTTP entry against the real app: every documented error, and (with our broker)
//! the acknowledged happy path.

mod common;

use std::time::Duration;

use common::{Mqtt, TestApp, closed_port, settings};
use lentera_tests::TestBroker;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An app whose broker is unreachable: every validation error happens before publishing.
async fn app_without_broker() -> TestApp {
    TestApp::spawn(settings(closed_port())).await
}

async fn post(
    app: &TestApp,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(app.url(path))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("request sent");
    let status = r.status().as_u16();
    (status, r.json().await.expect("a JSON body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_400_malformed_json() {
    let app = app_without_broker().await;
    let (status, body) = post(&app, "/api/v1/readings", "application/json", "{\"device\":").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "malformed_json");
    assert!(body["detail"].is_string());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_numeric_metric_rejects_the_whole_batch_naming_its_index() {
    let app = app_without_broker().await;
    let batch = json!([
        {"device":"gh-1","temperature":27.3},
        {"device":"gh-1","temperature":27.4},
        {"device":"gh-2","humidity":61.2},
        {"device":"gh-1","temperature":"hot"},
    ]);
    let (status, body) = post(
        &app,
        "/api/v1/readings",
        "application/json",
        batch.to_string(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_reading");
    assert_eq!(body["detail"]["index"], 3);
    assert_eq!(body["detail"]["code"], "non_numeric_value");
    assert!(
        body["detail"]["message"]
            .as_str()
            .unwrap()
            .contains("temperature")
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_content_type_is_415() {
    let app = app_without_broker().await;
    let body = json!({"device":"gh-1","t":1}).to_string();
    for ct in ["text/plain", "application/x-www-form-urlencoded"] {
        let (status, body) = post(&app, "/api/v1/readings", ct, body.clone()).await;
        assert_eq!(status, 415, "{ct}");
        assert_eq!(body["error"], "unsupported_media_type");
    }
    let (status, _) = post(&app, "/sensor", "text/plain", "{\"suhu\":1}").await;
    assert_eq!(status, 415);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_413() {
    // The default limit (256 KiB), and a body well past it.
    let app = app_without_broker().await;
    let big = format!("[{}]", vec![r#"{"device":"gh-1","t":1}"#; 20_000].join(","));
    assert!(big.len() > 256 * 1024);
    let (status, body) = post(&app, "/api/v1/readings", "application/json", big).await;
    assert_eq!(status, 413);
    assert_eq!(body["error"], "payload_too_large");

    // A configured limit, and a chunked body (no Content-Length) that only exceeds it
    // while streaming.
    let mut s = settings(closed_port());
    s.ingest.body_limit_bytes = 1024;
    let small = TestApp::spawn(s).await;
    let mut req = String::from(
        "POST /api/v1/readings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    );
    for _ in 0..10 {
        req.push_str(&format!("c8\r\n{}\r\n", " ".repeat(200)));
    }
    req.push_str("0\r\n\r\n");
    let mut conn = tokio::net::TcpStream::connect(small.http).await.unwrap();
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(common::WAIT, conn.read_to_end(&mut response))
        .await
        .expect("response in time")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(
        response.contains(r#""error":"payload_too_large""#),
        "{response}"
    );
    small.shutdown().await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_limit_is_413_batch_too_large() {
    let mut s = settings(closed_port());
    s.ingest.max_batch = 2;
    let app = TestApp::spawn(s).await;
    let batch = json!([{"device":"a","t":1},{"device":"a","t":2},{"device":"a","t":3}]);
    let (status, body) = post(
        &app,
        "/api/v1/readings",
        "application/json",
        batch.to_string(),
    )
    .await;
    assert_eq!(status, 413);
    assert_eq!(body["error"], "batch_too_large");
    assert_eq!(body["detail"]["max"], 2);
    assert_eq!(body["detail"]["got"], 3);
    let (status, body) = post(&app, "/api/v1/readings", "application/json", "[]").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("empty_batch")));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_503_with_retry_after_and_not_ready() {
    let app = app_without_broker().await;
    let r = reqwest::Client::new()
        .post(app.url("/api/v1/readings"))
        .header("content-type", "application/json")
        .body(json!({"device":"gh-1","temperature":27.3}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "broker_unavailable");

    let (status, body) = post(&app, "/sensor", "application/json", "{\"suhu\":27.5}").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("broker_unavailable"))
    );

    let ready = reqwest::get(app.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let health = reqwest::get(app.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let metrics = reqwest::get(app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("lentera_ingest_rejections_total{code=\"broker_unavailable\"} 2"),
        "{metrics}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_sensor_without_a_numeric_suhu_is_400() {
    let app = app_without_broker().await;
    for body in [
        r#"{}"#,
        r#"{"suhu":"panas"}"#,
        r#"{"suhu":null}"#,
        r#"[27.5]"#,
    ] {
        let (status, json) = post(&app, "/sensor", "application/json", body).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(json["error"], "invalid_suhu", "{body}");
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_methods_answer_json() {
    let app = app_without_broker().await;
    let r = reqwest::get(app.url("/nope")).await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "not_found");
    let r = reqwest::get(app.url("/api/v1/readings")).await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "method_not_allowed"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_readings_are_202_after_the_broker_has_them() {
    let broker = TestBroker::start();
    let mut sub = Mqtt::connect(broker.port(), "lentera/+/telemetry").await;
    let app = TestApp::spawn(settings(broker.port())).await;
    app.wait_ready().await;

    let batch = json!([
        {"device":"gh-1","temperature":27.3,"ts":1_700_000_000_000_i64},
        {"device":"gh-2","humidity":61.2},
    ]);
    let (status, body) = post(
        &app,
        "/api/v1/readings",
        "application/json",
        batch.to_string(),
    )
    .await;
    assert_eq!((status, body), (202, json!({"accepted": 2})));
    let p: Value = serde_json::from_slice(&sub.next_on("lentera/gh-1/telemetry").await).unwrap();
    assert_eq!(
        p,
        json!({"temperature":27.3,"ts":"2023-11-14T22:13:20.000000Z"})
    );
    let p: Value = serde_json::from_slice(&sub.next_on("lentera/gh-2/telemetry").await).unwrap();
    assert_eq!(p["humidity"], 61.2);

    // The seed's client.py: requests.post(url, json={"suhu": 27.5}).
    let (status, body) = post(&app, "/sensor", "application/json", r#"{"suhu": 27.5}"#).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"status":"success","message":"Suhu 27.5 diterima"})
    );
    let p: Value = serde_json::from_slice(&sub.next_on("lentera/gh-1/telemetry").await).unwrap();
    assert_eq!(p["temperature"], 27.5);
    let (_, body) = post(&app, "/sensor", "application/json", r#"{"suhu": 30}"#).await;
    assert_eq!(body["message"], "Suhu 30 diterima");

    let metrics = reqwest::get(app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("lentera_ingest_readings_accepted_total{transport=\"http\"} 4"),
        "{metrics}"
    );
    app.shutdown().await;
}

/// A broker that accepts the MQTT connection (CONNACK) and then reads and ignores
/// everything: publishes are never acknowledged, so ingest's in-flight window fills.
async fn broker_that_never_acks() -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                // The first read holds (part of) CONNECT; CONNACK: session absent, accepted.
                if sock.read(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                if sock.write_all(&[0x20, 0x02, 0x00, 0x00]).await.is_err() {
                    return;
                }
                while sock.read(&mut buf).await.unwrap_or(0) > 0 {}
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_publishes_in_flight_is_429_overloaded_never_2xx() {
    let port = broker_that_never_acks().await;
    let mut s = settings(port);
    // One publish may await its PUBACK at a time; others wait at most ack_timeout for it.
    s.mqtt.max_inflight = 2;
    s.mqtt.ack_timeout_ms = 1_000;
    let app = TestApp::spawn(s).await;
    app.wait_ready().await;

    let client = reqwest::Client::new();
    let requests = (0..4).map(|i| {
        let req = client
            .post(app.url("/api/v1/readings"))
            .header("content-type", "application/json")
            .body(json!({"device": format!("gh-{i}"), "temperature": 20}).to_string())
            .send();
        async move {
            let r = req.await.unwrap();
            let status = r.status().as_u16();
            let retry = r.headers().get("retry-after").cloned();
            let body: Value = r.json().await.unwrap();
            (
                status,
                retry,
                body["error"].as_str().unwrap_or("").to_owned(),
            )
        }
    });
    let answers = futures_util::future::join_all(requests).await;
    // The request holding the one slot times out waiting for PUBACK (503); the next in
    // line takes the slot and times out the same way; the ones still waiting for a slot
    // when their own wait ends are told to slow down (429). None is accepted.
    for (status, retry, error) in &answers {
        assert!(
            matches!(
                (*status, error.as_str()),
                (429, "overloaded") | (503, "broker_unavailable")
            ),
            "{answers:?}"
        );
        assert_eq!(retry.as_ref().map(|v| v.to_str().unwrap()), Some("1"));
    }
    assert!(
        answers.iter().any(|(s, ..)| *s == 429),
        "no request was refused as overloaded: {answers:?}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_the_inflight_window_is_published_whole_and_in_order() {
    let broker = TestBroker::start();
    let mut sub = Mqtt::connect(broker.port(), "lentera/+/telemetry").await;
    let mut s = settings(broker.port());
    // Three publishes in flight at a time: 50 readings go out as 17 chunks.
    s.mqtt.max_inflight = 4;
    let app = TestApp::spawn(s).await;
    app.wait_ready().await;

    let batch: Vec<Value> = (0..50_i32)
        .map(|i| json!({"device": "gh-1", "temperature": i, "ts": 1_700_000_000_000_i64 + i64::from(i)}))
        .collect();
    let (status, body) = post(
        &app,
        "/api/v1/readings",
        "application/json",
        Value::from(batch).to_string(),
    )
    .await;
    assert_eq!((status, body), (202, json!({"accepted": 50})));
    for i in 0..50_i32 {
        let p: Value =
            serde_json::from_slice(&sub.next_on("lentera/gh-1/telemetry").await).unwrap();
        assert_eq!(
            p["temperature"].as_f64(),
            Some(f64::from(i)),
            "reading {i} out of order or missing"
        );
    }
    assert!(sub.quiet_for(Duration::from_millis(300)).await.is_none());
    app.shutdown().await;
}
