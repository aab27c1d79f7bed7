//! The real web app against a real, freshly migrated PostgreSQL, over real HTTP.
//! MQTT points at a closed port: these tests cover REST, the static documents, the
//! readiness checks and the broker-down path of `PUT .../mode`.

mod support;

use chrono::Duration;
use lentera_db::write::Record;
use lentera_protocol::{DeviceStatus, LampCommand, LampMode, ModeKind};
use serde_json::{Value, json};
use support::{TestApp, reading, t0};

/// gh-1: temperature 20..29 and humidity 60 once a minute from t0 for 10 minutes.
async fn seed_greenhouse(app: &TestApp) {
    let records: Vec<Record> = (0..10)
        .map(|i| {
            reading(
                "gh-1",
                t0(i),
                &[("temperature", 20.0 + i as f64), ("humidity", 60.0)],
            )
        })
        .collect();
    app.store(&records).await;
}

fn window() -> String {
    format!(
        "from={}&to={}",
        t0(0).to_rfc3339(),
        t0(10).timestamp_millis()
    )
    .replace('+', "%2B")
}

fn values(body: &Value) -> Vec<f64> {
    body["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_history_is_filtered_ordered_limited_and_echoes_the_request() {
    let app = TestApp::spawn().await;
    seed_greenhouse(&app).await;

    let (status, body) = app
        .get_json(&format!(
            "/api/v1/devices/gh-1/readings?metric=temperature&{}",
            window()
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["device"], "gh-1");
    assert_eq!(body["metric"], "temperature");
    assert_eq!(body["from"], "2026-11-22T00:00:00.000000Z");
    assert_eq!(body["to"], "2026-11-22T00:10:00.000000Z");
    assert_eq!(body["bucket"], Value::Null);
    assert_eq!(body["agg"], Value::Null);
    assert_eq!(values(&body), (20..30).map(f64::from).collect::<Vec<_>>());
    assert_eq!(
        body["points"][0],
        json!({"metric": "temperature", "ts": "2026-11-22T00:00:00.000000Z", "value": 20.0})
    );

    // Both metrics without `metric`; newest first with order=desc; limit caps the rows.
    let (_, all) = app
        .get_json(&format!("/api/v1/devices/gh-1/readings?{}", window()))
        .await;
    assert_eq!(all["points"].as_array().unwrap().len(), 20);
    let (_, desc) = app
        .get_json(&format!(
            "/api/v1/devices/gh-1/readings?metric=temperature&order=desc&limit=3&{}",
            window()
        ))
        .await;
    assert_eq!(values(&desc), [29.0, 28.0, 27.0]);

    // Without from/to the window is the last 24 h, whatever today's date is.
    let now = chrono::Utc::now();
    app.store(&[
        reading("gh-2", now - Duration::hours(25), &[("lux", 1.0)]),
        reading("gh-2", now - Duration::hours(1), &[("lux", 2.0)]),
    ])
    .await;
    let (status, recent) = app.get_json("/api/v1/devices/gh-2/readings").await;
    assert_eq!(status, 200);
    assert_eq!(values(&recent), [2.0]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bucketed_history_aggregates_per_bucket() {
    let app = TestApp::spawn().await;
    seed_greenhouse(&app).await;
    let get = |agg: &'static str| {
        let app = &app;
        async move {
            let (status, body) = app
                .get_json(&format!(
                    "/api/v1/devices/gh-1/readings?metric=temperature&bucket=5m&agg={agg}&{}",
                    window()
                ))
                .await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["bucket"], "5m");
            assert_eq!(body["agg"], agg);
            body
        }
    };
    let avg = get("avg").await;
    assert_eq!(values(&avg), [22.0, 27.0]);
    assert_eq!(avg["points"][1]["ts"], "2026-11-22T00:05:00.000000Z");
    assert_eq!(values(&get("max").await), [24.0, 29.0]);
    assert_eq!(values(&get("count").await), [5.0, 5.0]);
    assert_eq!(values(&get("min").await), [20.0, 25.0]);
    assert_eq!(values(&get("last").await), [24.0, 29.0]);

    // Without agg a bucket averages.
    let (_, body) = app
        .get_json(&format!(
            "/api/v1/devices/gh-1/readings?metric=temperature&bucket=1h&{}",
            window()
        ))
        .await;
    assert_eq!(
        (body["agg"].clone(), values(&body)),
        (json!("avg"), vec![24.5])
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn accept_text_csv_gives_csv() {
    let app = TestApp::spawn().await;
    seed_greenhouse(&app).await;
    let resp = app
        .http
        .get(app.url(&format!(
            "/api/v1/devices/gh-1/readings?metric=temperature&limit=2&{}",
            window()
        )))
        .header("Accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert_eq!(
        resp.text().await.unwrap(),
        "metric,ts,value\ntemperature,2026-11-22T00:00:00.000000Z,20\ntemperature,2026-11-22T00:01:00.000000Z,21\n"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_parameter_is_a_400_with_its_code() {
    let app = TestApp::spawn().await;
    seed_greenhouse(&app).await;
    let cases = [
        ("metric=bad%20name", "invalid_metric"),
        ("from=yesterday", "invalid_from"),
        ("to=2026-13-01T00:00:00Z", "invalid_to"),
        (
            "from=2026-11-22T01:00:00Z&to=2026-11-22T00:00:00Z",
            "invalid_range",
        ),
        (
            "from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
            "window_too_large",
        ),
        ("bucket=5x", "invalid_bucket"),
        ("bucket=0s", "invalid_bucket"),
        ("agg=avg", "agg_requires_bucket"),
        ("bucket=1h&agg=median", "invalid_agg"),
        ("limit=0", "invalid_limit"),
        ("limit=10001", "invalid_limit"),
        ("limit=many", "invalid_limit"),
        ("order=sideways", "invalid_order"),
        ("buckett=1h", "unknown_parameter"),
        ("limit=1&limit=2", "duplicate_parameter"),
    ];
    for (query, code) in cases {
        let (status, body) = app
            .get_json(&format!("/api/v1/devices/gh-1/readings?{query}"))
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some(code)),
            "{query}: {body}"
        );
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{body}"
        );
    }
    let (status, body) = app.get_json("/api/v1/devices/bad.id/readings").await;
    assert_eq!(
        (status, body["error"].clone()),
        (400, json!("invalid_device"))
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_devices_and_routes_are_json_404s() {
    let app = TestApp::spawn().await;
    for path in [
        "/api/v1/devices/nobody/readings",
        "/api/v1/lamps/nobody/events",
    ] {
        let (status, body) = app.get_json(path).await;
        assert_eq!(
            (status, body["error"].clone()),
            (404, json!("unknown_device")),
            "{path}"
        );
    }
    let (status, body) = app.get_json("/api/v1/nothing-here").await;
    assert_eq!((status, body["error"].clone()), (404, json!("not_found")));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_list_has_status_and_latest_metrics() {
    let app = TestApp::spawn().await;
    seed_greenhouse(&app).await;
    app.store(&[
        Record::Status {
            device: "gh-1".into(),
            at: t0(10),
            status: DeviceStatus::Online,
        },
        Record::LampState {
            device: "lamp-1".into(),
            at: t0(11),
            state: LampCommand::On,
        },
    ])
    .await;
    let (status, body) = app.get_json("/api/v1/devices").await;
    assert_eq!(status, 200);
    let devices = body["devices"].as_array().unwrap();
    let gh = devices
        .iter()
        .find(|d| d["id"] == "gh-1")
        .expect("gh-1 listed");
    assert_eq!(gh["kind"], "sensor");
    assert_eq!(gh["status"], "online");
    assert_eq!(gh["latest"]["temperature"]["value"], 29.0);
    assert_eq!(gh["latest"]["humidity"]["value"], 60.0);
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(gh["last_seen"].as_str().unwrap()).unwrap(),
        t0(9)
    );
    let lamp = devices
        .iter()
        .find(|d| d["id"] == "lamp-1")
        .expect("lamp-1 listed");
    assert_eq!(lamp["kind"], "lamp");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lamps_list_and_events() {
    let app = TestApp::spawn().await;
    app.store(&[
        Record::LampCommand {
            device: "lamp-1".into(),
            at: t0(0),
            command: LampCommand::On,
        },
        Record::LampState {
            device: "lamp-1".into(),
            at: t0(1),
            state: LampCommand::On,
        },
        Record::LampMode {
            device: "lamp-1".into(),
            at: t0(2),
            mode: LampMode {
                mode: ModeKind::Off,
                until: Some(t0(60)),
            },
        },
        Record::LampState {
            device: "lamp-1".into(),
            at: t0(3),
            state: LampCommand::Off,
        },
    ])
    .await;
    seed_greenhouse(&app).await; // a sensor, which must not be listed as a lamp

    let (status, body) = app.get_json("/api/v1/lamps").await;
    assert_eq!(status, 200);
    let lamps = body["lamps"].as_array().unwrap();
    assert_eq!(lamps.len(), 1, "{body}");
    let l = &lamps[0];
    assert_eq!(
        (l["device"].clone(), l["mode"].clone()),
        (json!("lamp-1"), json!("off"))
    );
    assert_eq!(
        (l["state"].clone(), l["command"].clone()),
        (json!("off"), json!("on"))
    );
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(l["until"].as_str().unwrap()).unwrap(),
        t0(60)
    );

    let (status, body) = app.get_json("/api/v1/lamps/lamp-1/events").await;
    assert_eq!(status, 200);
    assert_eq!(body["device"], "lamp-1");
    let kinds: Vec<&str> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["state", "mode", "state", "command"]);
    let (_, body) = app.get_json("/api/v1/lamps/lamp-1/events?limit=1").await;
    assert_eq!(body["events"].as_array().unwrap().len(), 1);
    assert_eq!(body["events"][0]["value"], "off");
    let (status, body) = app.get_json("/api/v1/lamps/lamp-1/events?limit=0").await;
    assert_eq!(
        (status, body["error"].clone()),
        (400, json!("invalid_limit"))
    );
    let (status, body) = app.get_json("/api/v1/lamps/lamp-1/events?lmit=3").await;
    assert_eq!(
        (status, body["error"].clone()),
        (400, json!("invalid_query"))
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn put_mode_validates_the_body_and_answers_503_while_the_broker_is_down() {
    let app = TestApp::spawn().await;
    app.store(&[Record::LampState {
        device: "lamp-1".into(),
        at: t0(0),
        state: LampCommand::On,
    }])
    .await;
    let put = |path: &str, body: &'static str| {
        app.http
            .put(app.url(path))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };
    for (body, code) in [
        ("", "invalid_mode"),
        ("{", "invalid_mode"),
        (r#"{"mode":"dim"}"#, "invalid_mode"),
        (r#"{"mode":"on","colour":"red"}"#, "invalid_mode"),
        (r#"{"mode":"on","until":"tomorrow"}"#, "invalid_mode"),
        (
            r#"{"mode":"on","until":"2000-01-01T00:00:00Z"}"#,
            "invalid_until",
        ),
    ] {
        let r = put("/api/v1/lamps/lamp-1/mode", body).await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], code, "{body}: {v}");
    }
    let r = put("/api/v1/lamps/bad.id/mode", r#"{"mode":"on"}"#)
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = put("/api/v1/lamps/nobody/mode", r#"{"mode":"on"}"#)
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // A valid override with no broker: not accepted, and the client is told when to retry.
    let until = (chrono::Utc::now() + Duration::hours(1)).to_rfc3339();
    let body: &'static str =
        Box::leak(format!(r#"{{"mode":"on","until":"{until}"}}"#).into_boxed_str());
    let r = put("/api/v1/lamps/lamp-1/mode", body).await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "7");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "broker_unavailable", "{v}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn openapi_document_lists_every_endpoint() {
    let app = TestApp::spawn().await;
    let (status, doc) = app.get_json("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/api/v1/devices",
        "/api/v1/devices/{device}/readings",
        "/api/v1/lamps",
        "/api/v1/lamps/{device}/events",
        "/api/v1/lamps/{device}/mode",
        "/api/v1/openapi.json",
        "/ws",
        "/",
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/v1/readings",
        "/sensor",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing");
    }
    // Ingest's endpoints say where they are really served.
    let servers = &doc["paths"]["/sensor"]["post"]["servers"][0]["url"];
    assert!(servers.as_str().unwrap().contains(":8080"), "{servers}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_is_served_as_self_contained_html() {
    let app = TestApp::spawn().await;
    let r = app.get("/").await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = r.text().await.unwrap();
    assert!(html.contains("<title>Lentera</title>"));
    assert!(html.contains("/ws") && html.contains("/api/v1/lamps"));
    // No CDN: nothing is loaded from another host.
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_reports_database_up_and_mqtt_down() {
    let app = TestApp::spawn().await;
    let (status, _) = app.get_json("/healthz").await;
    assert_eq!(status, 200);
    // The database check is flipped by the ping task; give it a few ticks.
    let mut last = Value::Null;
    for _ in 0..50 {
        let (status, body) = app.get_json("/readyz").await;
        assert_eq!(status, 503, "no broker, so never ready: {body}");
        if body["checks"]["database"] == true {
            last = body;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(last["checks"], json!({"mqtt": false, "database": true}));
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("lentera_web_ws_clients 0"), "{metrics}");
    assert!(metrics.contains("lentera_web_ready 0"), "{metrics}");
    app.stop().await;
}
