//! Every accepted reading stored exactly once; every refused one accounted for.
//!
//! The real binaries, a real PostgreSQL, real HTTP and MQTT clients: readings without
//! `ts` in one request, from many concurrent requests and from a fast MQTT publisher
//! each get a row; the same key twice is a retry and then a correction; absurd values
//! are refused where the sender can still be told and kept as dead letters where it
//! cannot, and none of them holds back another device.

use std::sync::Arc;
use std::time::Duration;

use lentera_tests::Stack;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

const WAIT: Duration = Duration::from_secs(20);

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Polls `sql` until it returns `want`, or fails after `limit`.
async fn eventually_count(pool: &PgPool, sql: &str, want: i64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let n = count(pool, sql).await;
        if n == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql}: {n}, want {want} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fails unless the historian's `/metrics` shows the line `line` within a few seconds
/// (its counters move just after the commit that a test sees in PostgreSQL).
async fn assert_historian_metric(stack: &Stack, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = reqwest::get(format!("{}/metrics", stack.url(stack.historian(), "admin")))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.lines().any(|l| l == line) {
            return;
        }
        assert!(Instant::now() < deadline, "no {line:?} in {metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Posts `body` as its device (the `device` of the object, or of the array's first
/// reading), with that device's token, provisioning it on first use.
async fn post(stack: &Stack, http: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let first = body.as_array().and_then(|a| a.first()).unwrap_or(body);
    let device = first["device"].as_str().expect("a body naming its device");
    let token = stack.provision(device, "greenhouse").await.unwrap();
    let r = http
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A connected MQTT client and the channel of what it receives: the read-only observer
/// subscribed to `subscribe`, or (without) the board `id` logged in as that device.
async fn mqtt(
    stack: &Stack,
    id: &str,
    subscribe: Option<&str>,
) -> (AsyncClient, mpsc::UnboundedReceiver<Event>) {
    let addr = stack.mqtt_addr();
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    match subscribe {
        Some(_) => {
            let (user, password) = stack.observer();
            o.set_credentials(user, password);
        }
        None => {
            let token = stack.provision(id, "greenhouse").await.unwrap();
            o.set_credentials(id, token);
        }
    }
    o.set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(o, 10_000);
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(e) => {
                    if tx.send(e).is_err() {
                        return;
                    }
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    if let Some(filter) = subscribe {
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        timeout(WAIT, async {
            while !matches!(rx.recv().await, Some(Event::Incoming(Incoming::SubAck(_)))) {}
        })
        .await
        .expect("SUBACK");
    }
    (client, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_without_ts_each_get_a_row_in_one_request_many_requests_and_over_mqtt() {
    let mut stack = Stack::builder().readings_only().start().await.unwrap();
    let pool = stack.db.connect().await.unwrap();
    let url = stack.readings_url();
    let http = reqwest::Client::new();

    // 100 readings of one device in one request.
    let batch: Vec<Value> = (0..100)
        .map(|i| json!({"device": "batch-1", "seq": i}))
        .collect();
    let (status, body) = post(&stack, &http, &url, &Value::Array(batch)).await;
    assert_eq!(status, 202, "{body}");
    eventually_count(
        &pool,
        "SELECT count(DISTINCT value) FROM readings WHERE device = 'batch-1'",
        100,
        WAIT,
    )
    .await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM readings WHERE device = 'batch-1'"
        )
        .await,
        100
    );

    // 2,000 concurrent posts of one reading each: one row per 202.
    let limit = Arc::new(tokio::sync::Semaphore::new(200));
    let token = stack.provision("flood-1", "greenhouse").await.unwrap();
    let posts: Vec<_> = (0..2000)
        .map(|i| {
            let (http, url, limit, token) =
                (http.clone(), url.clone(), limit.clone(), token.clone());
            tokio::spawn(async move {
                let _permit = limit.acquire().await.unwrap();
                http.post(&url)
                    .bearer_auth(token)
                    .json(&json!({"device": "flood-1", "seq": i}))
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16())
            })
        })
        .collect();
    let mut accepted = 0;
    for p in posts {
        if p.await.unwrap() == 202 {
            accepted += 1;
        }
    }
    assert!(accepted > 1900, "only {accepted} of 2,000 posts accepted");
    eventually_count(
        &pool,
        "SELECT count(*) FROM readings WHERE device = 'flood-1'",
        accepted,
        WAIT,
    )
    .await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(DISTINCT value) FROM readings WHERE device = 'flood-1'"
        )
        .await,
        accepted
    );

    // 5,000 QoS 1 publishes from one MQTT client as fast as it can: 5,000 PUBACKs, 5,000 rows.
    let (client, mut events) = mqtt(&stack, "fast-1", None).await;
    let publisher = tokio::spawn(async move {
        for i in 0..5000 {
            client
                .publish(
                    "lentera/fast-1/telemetry",
                    QoS::AtLeastOnce,
                    false,
                    format!("{{\"seq\":{i}}}"),
                )
                .await
                .unwrap();
        }
        client
    });
    let mut acks = 0;
    timeout(Duration::from_secs(60), async {
        while acks < 5000 {
            if let Some(Event::Incoming(Incoming::PubAck(_))) = events.recv().await {
                acks += 1;
            }
        }
    })
    .await
    .expect("5,000 PUBACKs");
    let _client = publisher.await.unwrap();
    eventually_count(
        &pool,
        "SELECT count(*) FROM readings WHERE device = 'fast-1'",
        5000,
        WAIT,
    )
    .await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(DISTINCT value) FROM readings WHERE device = 'fast-1'"
        )
        .await,
        5000
    );
    stack.terminate_all().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_twice_is_a_retry_then_a_correction() {
    let mut stack = Stack::builder().readings_only().start().await.unwrap();
    let pool = stack.db.connect().await.unwrap();
    let url = stack.readings_url();
    let http = reqwest::Client::new();
    let ts = chrono::Utc::now().timestamp_millis() - 60_000;
    let sql = "SELECT count(*) FROM readings WHERE device = 'key-1'";
    for value in [20.0, 20.0] {
        let (status, body) = post(
            &stack,
            &http,
            &url,
            &json!({"device":"key-1","temperature":value,"ts":ts}),
        )
        .await;
        assert_eq!(status, 202, "{body}");
    }
    eventually_count(&pool, sql, 1, WAIT).await;
    let (status, _) = post(
        &stack,
        &http,
        &url,
        &json!({"device":"key-1","temperature":21.5,"ts":ts}),
    )
    .await;
    assert_eq!(status, 202);
    eventually_count(
        &pool,
        "SELECT count(*) FROM readings WHERE device = 'key-1' AND value = 21.5",
        1,
        WAIT,
    )
    .await;
    assert_eq!(count(&pool, sql).await, 1);
    let rollup: (i64, f64, f64, f64, f64) = sqlx::query_as(
        "SELECT count, sum, min, max, last FROM readings_hourly WHERE device = 'key-1'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rollup, (1, 21.5, 21.5, 21.5, 21.5));
    assert_historian_metric(&stack, "lentera_historian_readings_replaced_total 1").await;
    stack.terminate_all().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_is_refused_or_kept_as_a_dead_letter_and_holds_back_nobody() {
    let mut stack = Stack::start().await.unwrap();
    let pool = stack.db.connect().await.unwrap();
    let url = stack.readings_url();
    let http = reqwest::Client::new();
    let web = stack.url(stack.web(), "http");

    // Where the sender is still connected it is told.
    for (body, code) in [
        (json!({"device":"poison-1","lux":1e308}), "out_of_range"),
        (
            json!({"device":"poison-1","soil_moisture":1e308}),
            "out_of_range",
        ),
        (
            json!({"device":"poison-1","soil_moisture":-1e308}),
            "out_of_range",
        ),
        (
            json!({"device":"poison-1","lux":"NaN"}),
            "non_numeric_value",
        ),
        (
            json!({"device":"poison-1","lux":"Infinity"}),
            "non_numeric_value",
        ),
    ] {
        let (status, reply) = post(&stack, &http, &url, &body).await;
        assert_eq!(status, 400, "{body}: {reply}");
        assert_eq!(reply["detail"]["code"], code, "{body}: {reply}");
        assert!(
            reply["detail"]["message"].as_str().unwrap().len() < 120,
            "{reply}"
        );
    }
    let r = http
        .post(&url)
        .bearer_auth(stack.token("poison-1").unwrap())
        .header("content-type", "application/json")
        .body(r#"{"device":"poison-1","lux":NaN}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // A board publishing straight to MQTT (3.1.1: its PUBACK cannot refuse) is answered
    // on its error topic, and the refusal is kept.
    let (_sub, mut seen) = mqtt(&stack, "error-watch", Some("lentera/+/error")).await;
    let (board, mut board_events) = mqtt(&stack, "poison-2", None).await;
    board
        .publish(
            "lentera/poison-2/telemetry",
            QoS::AtLeastOnce,
            false,
            r#"{"lux":1e308}"#,
        )
        .await
        .unwrap();
    timeout(WAIT, async {
        while !matches!(
            board_events.recv().await,
            Some(Event::Incoming(Incoming::PubAck(_)))
        ) {}
    })
    .await
    .expect("PUBACK");
    let report = timeout(WAIT, async {
        loop {
            if let Some(Event::Incoming(Incoming::Publish(p))) = seen.recv().await
                && p.topic == "lentera/poison-2/error"
            {
                return serde_json::from_slice::<Value>(&p.payload).unwrap();
            }
        }
    })
    .await
    .expect("a report on lentera/poison-2/error");
    assert_eq!(report["reason"], "out_of_range", "{report}");

    // A value every check lets through but PostgreSQL refuses (a constraint an operator
    // added): accepted with 202, then kept as a dead letter, and the next reading of
    // another device is stored within 5 s.
    sqlx::query("ALTER TABLE readings ADD CONSTRAINT no_sixes CHECK (value <> 666)")
        .execute(&pool)
        .await
        .unwrap();
    // In one request with two good readings of the same board (a token speaks for one
    // device), so they reach the historian in one batch: it must find the refused row
    // and store the others.
    let (status, body) = post(
        &stack,
        &http,
        &url,
        &json!([{"device":"poison-3","moisture":1},{"device":"poison-3","soil":666},{"device":"poison-3","temperature":2}]),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let sent = Instant::now();
    let (status, _) = post(
        &stack,
        &http,
        &url,
        &json!({"device":"healthy-1","soil":42}),
    )
    .await;
    assert_eq!(status, 202);
    eventually_count(
        &pool,
        "SELECT count(*) FROM readings WHERE device IN ('poison-3', 'healthy-1')",
        3,
        Duration::from_secs(5),
    )
    .await;
    assert!(sent.elapsed() < Duration::from_secs(5));
    eventually_count(
        &pool,
        "SELECT count(*) FROM rejected_readings WHERE device = 'poison-3' AND reason = 'storage_refused'",
        1,
        WAIT,
    )
    .await;

    // Both refusals are listed for their devices; the historian stayed ready throughout.
    for (device, reason) in [
        ("poison-2", "out_of_range"),
        ("poison-3", "storage_refused"),
    ] {
        let deadline = Instant::now() + WAIT;
        loop {
            let body: Value = http
                .get(format!("{web}/api/v1/devices/{device}/rejected"))
                .bearer_auth(stack.operator_token())
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if let Some(first) = body["rejected"].as_array().and_then(|r| r.first()) {
                assert_eq!(first["reason"], reason, "{body}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{device}: nothing listed: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let readyz = reqwest::get(format!("{}/readyz", stack.url(stack.historian(), "admin")))
        .await
        .unwrap();
    assert_eq!(readyz.status(), 200);
    assert_historian_metric(&stack, "lentera_historian_storage_refused_total 1").await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM readings WHERE device IN ('poison-1', 'poison-2') OR value = 666"
        )
        .await,
        0
    );
    stack.terminate_all().unwrap();
}
