//! The plausibility limits and SenML over the real app, on every entry: HTTP JSON, HTTP
//! SenML, the seed's `/sensor` and the TCP line protocol all refuse the same readings
//! with the same codes, before anything is published (no broker needed), and an accepted
//! SenML pack reaches the broker as our canonical payloads.

mod common;

use chrono::Utc;
use common::{Line, Mqtt, TestApp, closed_port, settings};
use lentera_tests::TestBroker;
use serde_json::{Value, json};

async fn post(app: &TestApp, path: &str, content_type: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(app.url(path))
        .header("content-type", content_type)
        .body(body.to_string())
        .send()
        .await
        .expect("request sent");
    let status = r.status().as_u16();
    (status, r.json().await.expect("a JSON body"))
}

/// `(status, error, detail.index, detail.code)` of a refused request.
fn refusal(r: (u16, Value)) -> (u16, String, u64, String) {
    let (status, b) = r;
    (
        status,
        b["error"].as_str().unwrap_or_default().to_owned(),
        b["detail"]["index"].as_u64().unwrap_or(u64::MAX),
        b["detail"]["code"].as_str().unwrap_or_default().to_owned(),
    )
}

fn expect(index: u64, code: &str) -> (u16, String, u64, String) {
    (400, "invalid_reading".into(), index, code.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implausible_json_readings_are_refused_by_index_with_stable_codes() {
    let app = TestApp::spawn(settings(closed_port())).await;
    let future = (Utc::now() + chrono::Duration::minutes(10)).timestamp_millis();
    let cases = [
        (
            json!([{"device":"gh-1","humidity":50},{"device":"gh-1","humidity":101}]),
            expect(1, "out_of_range"),
        ),
        (
            json!({"device":"gh-1","temperature":-51}),
            expect(0, "out_of_range"),
        ),
        (
            json!({"device":"gh-1","lux":-0.5}),
            expect(0, "out_of_range"),
        ),
        (
            json!({"device":"gh-1","lux":1,"ts":future}),
            expect(0, "timestamp_in_future"),
        ),
        (
            json!({"device":"gh-1","lux":1,"ts":"1970-01-01T00:00:00Z"}),
            expect(0, "timestamp_too_old"),
        ),
    ];
    for (body, want) in cases {
        let got = refusal(post(&app, "/api/v1/readings", "application/json", &body).await);
        assert_eq!(got, want, "{body}");
    }
    // The seed endpoint obeys the same ranges.
    let got = refusal(post(&app, "/sensor", "application/json", &json!({"suhu": 500})).await);
    assert_eq!(got, expect(0, "out_of_range"));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_senml_packs_are_refused_by_record_index() {
    let app = TestApp::spawn(settings(closed_port())).await;
    let senml = "application/senml+json";
    let cases = [
        (
            json!([{"bn":"gh-1/","n":"temperature","v":20},{"n":"humidity","v":150}]),
            expect(1, "out_of_range"),
        ),
        (
            json!([{"n":"gh-1/lux","v":1,"t":3600}]),
            expect(0, "timestamp_in_future"),
        ),
        (json!([{"n":"lux","v":1}]), expect(0, "invalid_senml")),
        (
            json!([{"n":"gh-1/lux","vs":"bright"}]),
            expect(0, "non_numeric_value"),
        ),
        (
            json!([{"n":"gh-1/lux","v":1,"crit_":true}]),
            expect(0, "unsupported_senml_field"),
        ),
        (json!({"n":"gh-1/lux","v":1}), expect(0, "invalid_senml")),
    ];
    for (body, want) in cases {
        let got = refusal(post(&app, "/api/v1/readings", senml, &body).await);
        assert_eq!(got, want, "{body}");
    }
    let (status, body) = post(&app, "/api/v1/readings", senml, &json!([])).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("empty_batch")));
    // SenML is a readings format only: the seed endpoint still wants JSON.
    let (status, body) = post(&app, "/sensor", senml, &json!({"suhu": 1})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implausible_tcp_lines_get_err_with_the_same_codes() {
    let app = TestApp::spawn(settings(closed_port())).await;
    let mut c = Line::connect(app.tcp).await;
    let future = (Utc::now() + chrono::Duration::minutes(10)).timestamp_millis();
    let cases = [
        ("gh-1 humidity=100.5".to_owned(), "out_of_range"),
        (
            r#"{"device":"gh-1","temperature":120}"#.to_owned(),
            "out_of_range",
        ),
        (format!("gh-1 lux=1 ts={future}"), "timestamp_in_future"),
        ("gh-1 lux=1 ts=0".to_owned(), "timestamp_too_old"),
    ];
    for (line, code) in cases {
        let reply = c.request(&line).await;
        assert!(
            reply.starts_with(&format!("ERR {code} ")),
            "{line:?} -> {reply:?}"
        );
    }
    // In range but no broker: the limits passed and publishing was attempted.
    let reply = c.request("gh-1 humidity=100").await;
    assert!(reply.starts_with("ERR broker_unavailable "), "{reply}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_senml_pack_is_published_as_canonical_readings() {
    let broker = TestBroker::start();
    let mut sub = Mqtt::connect(broker.port(), "lentera/+/telemetry").await;
    let app = TestApp::spawn(settings(broker.port())).await;
    app.wait_ready().await;
    let bt = 1_795_309_200; // 2026-11-22T01:00:00Z
    let pack = json!([
        {"bn":"gh-1/","bt":bt,"bu":"Cel","n":"temperature","v":27.5},
        {"n":"humidity","u":"%RH","v":61},
        {"bn":"urn:dev:mac:0024befffe804ff1;","n":"lux","v":3.5,"t":60}
    ]);
    let (status, body) = post(&app, "/api/v1/readings", "application/senml+json", &pack).await;
    assert_eq!((status, body), (202, json!({"accepted": 2})));
    let p: Value = serde_json::from_slice(&sub.next_on("lentera/gh-1/telemetry").await).unwrap();
    assert_eq!(
        p,
        json!({"humidity":61.0,"temperature":27.5,"ts":"2026-11-22T01:00:00.000000Z"})
    );
    let p: Value =
        serde_json::from_slice(&sub.next_on("lentera/0024befffe804ff1/telemetry").await).unwrap();
    assert_eq!(p, json!({"lux":3.5,"ts":"2026-11-22T01:01:00.000000Z"}));
    app.shutdown().await;
}
