//! Device identity on both doors of a closed ingest (the default), over real sockets,
//! against a real registry in PostgreSQL (a fresh database per test, devices provisioned
//! with `lentera_auth::admin`) and our broker (`TestBroker`, which runs open: the
//! broker's own checks are its tests' business).
//!
//! Every door refuses no token, a wrong token, an unknown device, a disabled device and
//! another device's id; disabling cuts a live TCP connection; the quota answers on both
//! doors while another device keeps working; a PostgreSQL outage after the first load
//! does not lock out known devices.

mod common;

use std::time::Duration;

use common::{Line, Mqtt, PgProxy, Registry, TestApp, closed_settings};
use lentera_tests::TestBroker;
use serde_json::{Value, json};

struct Answer {
    status: u16,
    www_authenticate: Option<String>,
    retry_after: Option<String>,
    body: Value,
}

async fn post(url: String, token: Option<&str>, content_type: &str, body: Value) -> Answer {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.expect("HTTP answer");
    let header = |name: &str| {
        res.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (www_authenticate, retry_after) = (header("www-authenticate"), header("retry-after"));
    Answer {
        status: res.status().as_u16(),
        www_authenticate,
        retry_after,
        body: res.json().await.expect("a JSON body"),
    }
}

fn assert_unauthorized(a: &Answer, what: &str) {
    assert_eq!(a.status, 401, "{what}: {:?}", a.body);
    assert_eq!(a.body["error"], "unauthorized", "{what}");
    assert_eq!(a.www_authenticate.as_deref(), Some("Bearer"), "{what}");
}

/// A closed ingest on a fresh registry with `gh-a` and `gh-b` (disabled) provisioned.
async fn closed_app(broker: &TestBroker) -> (TestApp, Registry, String, String) {
    let reg = Registry::create().await;
    let a = reg.add("gh-a").await;
    let b = reg.add("gh-b").await;
    reg.disable("gh-b").await;
    let app = TestApp::spawn(closed_settings(broker.port(), &reg.db.url)).await;
    app.wait_ready().await;
    (app, reg, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_http_door_refuses_strangers_and_other_devices_and_admits_the_token() {
    let broker = TestBroker::start();
    let mut sub = Mqtt::connect(broker.port(), "lentera/+/telemetry").await;
    let (app, reg, a, b) = closed_app(&broker).await;
    let wrong = lentera_auth::token::generate();
    let readings = app.url("/api/v1/readings");
    let json_body = json!({"device":"gh-a","temperature":21});
    let senml_body = json!([{"bn":"gh-a/","n":"lux","v":3}]);
    let seed = json!({"suhu": 27.5});
    let doors: [(&str, String, &str, &Value); 3] = [
        ("JSON", readings.clone(), "application/json", &json_body),
        (
            "SenML",
            readings.clone(),
            "application/senml+json",
            &senml_body,
        ),
        ("/sensor", app.url("/sensor"), "application/json", &seed),
    ];
    for (door, url, ct, body) in &doors {
        let cases = [
            ("no token", None),
            ("a wrong token", Some(wrong.as_str())),
            ("not a token", Some("gh-a")),
            ("a disabled device's token", Some(b.as_str())),
        ];
        for (what, token) in cases {
            let answer = post(url.clone(), token, ct, (*body).clone()).await;
            assert_unauthorized(&answer, &format!("{door}, {what}"));
        }
    }
    // The token in the path: a wrong one, a disabled device's.
    for token in [&wrong, &b, &"x".to_owned()] {
        let url = app.url(&format!("/api/v1/devices/{token}/readings"));
        let answer = post(url, None, "application/json", json!({"lux":1})).await;
        assert_unauthorized(&answer, "path token");
    }
    // A valid token with another device's reading: 403, on JSON and SenML, and nothing
    // of it is published.
    let other = post(
        readings.clone(),
        Some(&a),
        "application/json",
        json!([{"lux":1},{"device":"gh-c","lux":2}]),
    )
    .await;
    assert_eq!(other.status, 403, "{:?}", other.body);
    assert_eq!(other.body["error"], "device_mismatch");
    assert_eq!(other.body["detail"]["index"], 1);
    let other = post(
        readings.clone(),
        Some(&a),
        "application/senml+json",
        json!([{"bn":"gh-b/","n":"lux","v":1}]),
    )
    .await;
    assert_eq!(other.status, 403, "{:?}", other.body);
    assert_eq!(other.body["error"], "device_mismatch");
    assert!(
        sub.quiet_for(Duration::from_millis(300)).await.is_none(),
        "nothing was published for a refused request"
    );

    // The token admits: with or without the device in the body, on every door.
    let ok = [
        post(
            readings.clone(),
            Some(&a),
            "application/json",
            json_body.clone(),
        )
        .await,
        post(
            readings.clone(),
            Some(&a),
            "application/json",
            json!({"humidity":50}),
        )
        .await,
        post(
            readings.clone(),
            Some(&a),
            "application/senml+json",
            json!([{"n":"lux","v":4}]),
        )
        .await,
        post(
            app.url(&format!("/api/v1/devices/{a}/readings")),
            None,
            "application/json",
            json!({"lux":5}),
        )
        .await,
    ];
    for answer in &ok {
        assert_eq!(answer.status, 202, "{:?}", answer.body);
    }
    let sensor = post(
        app.url("/sensor"),
        Some(&a),
        "application/json",
        seed.clone(),
    )
    .await;
    assert_eq!(sensor.status, 200, "{:?}", sensor.body);
    assert_eq!(sensor.body["message"], "Suhu 27.5 diterima");
    // Five readings, all gh-a's (the topic names the device).
    for _ in 0..5 {
        sub.next_publish("lentera/gh-a/telemetry").await;
    }
    app.shutdown().await;
    reg.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tcp_door_accepts_nothing_before_auth_and_only_the_tokens_device_after() {
    let broker = TestBroker::start();
    let (app, reg, a, b) = closed_app(&broker).await;
    let wrong = lentera_auth::token::generate();
    let mut c = Line::connect(app.tcp).await;
    assert_eq!(c.request("PING").await, "PONG", "liveness needs no token");
    for line in [
        "gh-a temperature=21".to_owned(),
        "temperature=21".to_owned(),
        r#"{"device":"gh-a","lux":1}"#.to_owned(),
        "Hai from ESP8266".to_owned(),
        "HELLO gh-a".to_owned(),
        format!("HELLO gh-a {wrong}"),
        format!("HELLO gh-a {b}"),
        format!("HELLO gh-b {b}"),
        format!("HELLO gh-zz {a}"),
        format!("HELLO gh-unknown {wrong}"),
        format!("AUTH {wrong}"),
        format!("AUTH {b}"),
        "AUTH gh-a".to_owned(),
        "gh-a temperature=21".to_owned(),
    ] {
        let reply = c.request(&line).await;
        assert!(reply.starts_with("ERR unauthorized "), "{line:?} → {reply}");
    }
    // HELLO with the right token; then only gh-a's readings.
    assert_eq!(c.request(&format!("HELLO gh-a {a}")).await, "OK");
    assert_eq!(c.request("temperature=21").await, "OK");
    assert_eq!(c.request("gh-a temperature=21").await, "OK");
    for line in ["gh-b temperature=21", r#"{"device":"gh-c","lux":1}"#] {
        let reply = c.request(line).await;
        assert!(
            reply.starts_with("ERR device_mismatch "),
            "{line} → {reply}"
        );
    }
    // AUTH <token>, the sketch style: binds the token's device.
    let mut d = Line::connect(app.tcp).await;
    assert_eq!(d.request(&format!("AUTH {a}")).await, "OK");
    assert_eq!(d.request(r#"{"lux":2}"#).await, "OK");
    app.shutdown().await;
    reg.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_without_the_token_cannot_take_over_a_bound_lamp() {
    let broker = TestBroker::start();
    let (app, reg, a, _) = closed_app(&broker).await;
    let mut owner = Line::connect(app.tcp).await;
    assert_eq!(owner.request(&format!("HELLO gh-a {a}")).await, "OK");
    let mut thief = Line::connect(app.tcp).await;
    let reply = thief
        .request(&format!("HELLO gh-a {}", lentera_auth::token::generate()))
        .await;
    assert!(reply.starts_with("ERR unauthorized"), "{reply}");
    let controller = Mqtt::connect(broker.port(), "lentera/none").await;
    // The command reaches the real board, not the thief. Re-sent until it arrives: the
    // relay's subscription may still be settling right after start.
    let mut got = None;
    for _ in 0..20 {
        controller
            .client
            .publish(
                "lentera/gh-a/lamp/set",
                rumqttc::QoS::AtLeastOnce,
                false,
                "on",
            )
            .await
            .unwrap();
        if let Some(line) = owner.recv_within(Duration::from_millis(250)).await {
            got = line;
            break;
        }
    }
    assert_eq!(got.as_deref(), Some("led-on"));
    assert!(
        thief
            .recv_within(Duration::from_millis(300))
            .await
            .is_none(),
        "the thief got nothing"
    );
    app.shutdown().await;
    reg.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_device_cuts_its_live_tcp_connection_and_its_http_posts() {
    let broker = TestBroker::start();
    let (app, reg, a, _) = closed_app(&broker).await;
    let c_token = reg.add("gh-c").await;
    let mut board = Line::connect(app.tcp).await;
    assert_eq!(board.request(&format!("HELLO gh-a {a}")).await, "OK");
    let mut other = Line::connect(app.tcp).await;
    assert_eq!(other.request(&format!("AUTH {c_token}")).await, "OK");

    reg.disable("gh-a").await;
    let cut = board.recv().await.expect("a reason before the close");
    assert!(cut.starts_with("ERR unauthorized"), "{cut}");
    assert_eq!(board.recv().await, None, "then closed");
    // Another device's connection stays.
    assert_eq!(other.request("PING").await, "PONG");
    assert_eq!(other.request("lux=1").await, "OK");
    // And the token no longer opens HTTP or a new TCP connection.
    let answer = post(
        app.url("/api/v1/readings"),
        Some(&a),
        "application/json",
        json!({"lux":1}),
    )
    .await;
    assert_unauthorized(&answer, "a disabled device");
    let mut again = Line::connect(app.tcp).await;
    let reply = again.request(&format!("HELLO gh-a {a}")).await;
    assert!(reply.starts_with("ERR unauthorized"), "{reply}");

    // A rotated token cuts the connection of the old one too.
    let mut c2 = Line::connect(app.tcp).await;
    assert_eq!(c2.request(&format!("HELLO gh-c {c_token}")).await, "OK");
    lentera_auth::admin::rotate(&reg.pool, "gh-c")
        .await
        .unwrap();
    for conn in [&mut other, &mut c2] {
        let cut = conn.recv().await.expect("a reason");
        assert!(cut.starts_with("ERR unauthorized"), "{cut}");
        assert_eq!(conn.recv().await, None);
    }
    app.shutdown().await;
    reg.drop_db().await;
}

async fn metric(app: &TestApp, needle: &str) -> u64 {
    let text = reqwest::get(app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(needle))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_quota_answers_on_both_doors_while_another_device_keeps_working() {
    let broker = TestBroker::start();
    let reg = Registry::create().await;
    let a = reg.add("gh-a").await;
    let b = reg.add("gh-b").await;
    let mut s = closed_settings(broker.port(), &reg.db.url);
    s.quota.device_rate_per_sec = 0.5;
    s.quota.device_burst = 3;
    let app = TestApp::spawn(s).await;
    app.wait_ready().await;
    let readings = app.url("/api/v1/readings");

    // gh-a spends its burst over HTTP and TCP together …
    let mut board = Line::connect(app.tcp).await;
    assert_eq!(board.request(&format!("AUTH {a}")).await, "OK");
    for _ in 0..2 {
        let ok = post(
            readings.clone(),
            Some(&a),
            "application/json",
            json!({"lux":1}),
        )
        .await;
        assert_eq!(ok.status, 202, "{:?}", ok.body);
    }
    assert_eq!(board.request("lux=1").await, "OK");
    // … then both doors refuse it, with when to come back.
    let limited = post(
        readings.clone(),
        Some(&a),
        "application/json",
        json!({"lux":1}),
    )
    .await;
    assert_eq!(limited.status, 429, "{:?}", limited.body);
    assert_eq!(limited.body["error"], "rate_limited");
    let retry: u64 = limited.retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    let reply = board.request("lux=1").await;
    assert!(reply.starts_with("ERR rate_limited "), "{reply}");
    let sensor = post(
        app.url("/sensor"),
        Some(&a),
        "application/json",
        json!({"suhu":1}),
    )
    .await;
    assert_eq!(sensor.status, 429);

    // gh-b is untouched, on both doors.
    let mut other = Line::connect(app.tcp).await;
    assert_eq!(other.request(&format!("HELLO gh-b {b}")).await, "OK");
    assert_eq!(other.request("lux=1").await, "OK");
    let ok = post(
        readings.clone(),
        Some(&b),
        "application/json",
        json!({"lux":1}),
    )
    .await;
    assert_eq!(ok.status, 202, "{:?}", ok.body);

    // The refusals are counted by reason.
    assert!(
        metric(
            &app,
            "lentera_ingest_rejections_total{code=\"rate_limited\"}"
        )
        .await
            >= 3
    );
    assert!(
        metric(
            &app,
            "lentera_ingest_rejections_total{code=\"unauthorized\"}"
        )
        .await
            == 0
    );
    // After the refill, gh-a is served again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(board.request("lux=1").await, "OK");
    app.shutdown().await;
    reg.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_devices_keep_being_accepted_when_postgresql_goes_away() {
    let broker = TestBroker::start();
    let reg = Registry::create().await;
    let a = reg.add("gh-a").await;
    let proxy = PgProxy::start().await;
    let app = TestApp::spawn(closed_settings(broker.port(), &proxy.url(&reg.db.url))).await;
    app.wait_ready().await;
    let mut bound = Line::connect(app.tcp).await;
    assert_eq!(bound.request(&format!("HELLO gh-a {a}")).await, "OK");

    proxy.cut();
    // Let the registry notice (its listener connection is gone).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = app.url("/api/v1/readings");
    let ok = post(url.clone(), Some(&a), "application/json", json!({"lux":1})).await;
    assert_eq!(ok.status, 202, "{:?}", ok.body);
    assert_eq!(bound.request("lux=2").await, "OK");
    let mut fresh = Line::connect(app.tcp).await;
    assert_eq!(fresh.request(&format!("AUTH {a}")).await, "OK");
    // A stranger is still refused (its miss lookup fails: still one answer).
    let stranger = lentera_auth::token::generate();
    let refused = post(url, Some(&stranger), "application/json", json!({"lux":1})).await;
    assert_unauthorized(&refused, "stranger during the outage");
    // And ingest stays ready: the snapshot is loaded.
    let ready = reqwest::get(app.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    app.shutdown().await;
    drop(proxy);
    reg.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_ingest_is_not_ready_until_its_registry_is_loaded() {
    let broker = TestBroker::start();
    let reg = Registry::create().await;
    let a = reg.add("gh-a").await;
    let proxy = PgProxy::start().await;
    proxy.cut();
    let app = TestApp::spawn(closed_settings(broker.port(), &proxy.url(&reg.db.url))).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ready = reqwest::get(app.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503, "no registry, not ready");
    // Never loaded: the doors say "later", not "never".
    let answer = post(
        app.url("/api/v1/readings"),
        Some(&a),
        "application/json",
        json!({"lux":1}),
    )
    .await;
    assert_eq!(answer.status, 503, "{:?}", answer.body);
    assert_eq!(answer.body["error"], "registry_unavailable");
    let mut c = Line::connect(app.tcp).await;
    let reply = c.request(&format!("AUTH {a}")).await;
    assert!(reply.starts_with("ERR registry_unavailable"), "{reply}");
    app.shutdown().await;
    reg.drop_db().await;
}
