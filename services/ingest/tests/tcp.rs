//! The TCP line protocol against the real app: every refusal, the limits, shutdown and
//! (with our broker) acknowledged readings and the lamp relay.

mod common;

use std::time::Duration;

use common::{Line, Mqtt, TestApp, WAIT, closed_port, settings};
use lentera_tests::TestBroker;
use rumqttc::QoS;
use serde_json::Value;

async fn app_without_broker() -> TestApp {
    TestApp::spawn(settings(closed_port())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_commands_get_err_unknown_command_and_the_connection_stays_usable() {
    let app = app_without_broker().await;
    let mut c = Line::connect(app.tcp).await;
    for line in ["Hai from ESP8266", "gh-1", "GET / HTTP/1.1"] {
        let reply = c.request(line).await;
        assert!(
            reply.starts_with("ERR unknown_command "),
            "{line:?} -> {reply:?}"
        );
    }
    // Empty lines are ignored: the next reply belongs to PING.
    c.send(b"\n\r\n").await;
    assert_eq!(c.request("PING").await, "PONG");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_readings_get_their_stable_codes() {
    let app = app_without_broker().await;
    let mut c = Line::connect(app.tcp).await;
    let cases = [
        ("gh-1 temperature=hot", "non_numeric_value"),
        ("gh-1 temperature=27.3 humid\r", "malformed_pair"),
        ("gh-1 ts=1700000000000", "no_metrics"),
        ("gh-1 t=1 ts=soon", "invalid_timestamp"),
        ("a/b t=1", "invalid_device"),
        ("t=1", "missing_device"),
        (r#"{"device":"gh-1","t":"x"}"#, "non_numeric_value"),
        (r#"{"device":"#, "malformed_json"),
        ("HELLO", "missing_device"),
    ];
    for (line, code) in cases {
        let reply = c.request(line).await;
        assert!(
            reply.starts_with(&format!("ERR {code} ")),
            "{line:?} -> {reply:?}"
        );
    }
    c.send(b"\xff\xfe\n").await;
    assert!(c.recv().await.unwrap().starts_with("ERR not_utf8 "));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_line_without_a_broker_is_err_broker_unavailable() {
    let app = app_without_broker().await;
    let mut c = Line::connect(app.tcp).await;
    let reply = c.request("gh-1 temperature=27.3\r").await;
    assert!(reply.starts_with("ERR broker_unavailable "), "{reply}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_long_line_gets_err_line_too_long_then_close() {
    let mut s = settings(closed_port());
    s.ingest.tcp_max_line_bytes = 64;
    let app = TestApp::spawn(s).await;

    // Terminated, and also never terminated (the buffer alone passes the limit).
    for payload in [format!("gh-1 t={}\n", "1".repeat(100)), "x".repeat(1000)] {
        let mut c = Line::connect(app.tcp).await;
        c.send(payload.as_bytes()).await;
        let reply = c.recv().await.expect("an ERR line before the close");
        assert!(reply.starts_with("ERR line_too_long "), "{reply}");
        assert_eq!(c.recv().await, None, "closed after line_too_long");
    }
    // A line exactly at the limit is fine.
    let mut c = Line::connect(app.tcp).await;
    let at_limit = format!("gh-1 t=1 {}", "x".repeat(64 - 9));
    assert_eq!(at_limit.len(), 64);
    assert!(c.request(&at_limit).await.starts_with("ERR malformed_pair"));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_get_err_too_many_connections() {
    let mut s = settings(closed_port());
    s.ingest.tcp_max_connections = 1;
    let app = TestApp::spawn(s).await;
    let mut first = Line::connect(app.tcp).await;
    assert_eq!(first.request("PING").await, "PONG");
    let mut second = Line::connect(app.tcp).await;
    let reply = second.recv().await.expect("a refusal line");
    assert!(reply.starts_with("ERR too_many_connections"), "{reply}");
    assert_eq!(second.recv().await, None);
    // The first connection is unaffected, and its slot frees up when it leaves.
    assert_eq!(first.request("PING").await, "PONG");
    drop(first);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut third = Line::connect(app.tcp).await;
        third.send(b"PING\n").await;
        if third.recv().await.as_deref() == Some("PONG") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_greeting_without_newline_still_gets_a_reply() {
    let mut s = settings(closed_port());
    s.ingest.tcp_partial_line_ms = 200;
    let app = TestApp::spawn(s).await;
    // The seed sketch: client.print("Hai from ESP8266"); readStringUntil('\n') (1 s timeout).
    let mut c = Line::connect(app.tcp).await;
    c.send(b"Hai from ESP8266").await;
    let reply = c
        .recv_within(Duration::from_secs(1))
        .await
        .expect("answered within the sketch's 1 s read timeout")
        .unwrap();
    assert!(reply.starts_with("ERR unknown_command "), "{reply}");
    app.shutdown().await;
}

/// With the default settings: a connection that has never sent a newline gets its
/// greeting answered after the pause; once it has sent one, a pause no longer ends a line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pause_ends_a_line_only_until_the_first_newline() {
    let app = app_without_broker().await;
    let mut c = Line::connect(app.tcp).await;
    c.send(b"Hai from ESP8266").await;
    let reply = c
        .recv_within(Duration::from_secs(1))
        .await
        .expect("the greeting answered within the sketch's 1 s")
        .unwrap();
    assert!(reply.starts_with("ERR unknown_command "), "{reply}");
    assert_eq!(c.request("PING").await, "PONG");
    // Now a newline board: half a line waits, however long, for the rest.
    c.send(b"PI").await;
    assert_eq!(c.recv_within(Duration::from_millis(1500)).await, None);
    c.send(b"NG\n").await;
    assert_eq!(c.recv().await.as_deref(), Some("PONG"));
    assert_eq!(c.recv_within(Duration::from_millis(300)).await, None);
    app.shutdown().await;
}

/// A newline board's line in two TCP segments 2 s apart is one reading with the whole
/// value: one `OK`, and the broker gets 26.5, not 2 (and no `ERR` for `6.5`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_sent_in_two_halves_two_seconds_apart_is_one_reading() {
    let broker = TestBroker::start();
    let topic = "lentera/gh-3/telemetry";
    let mut sub = Mqtt::connect(broker.port(), topic).await;
    let app = TestApp::spawn(settings(broker.port())).await;
    app.wait_ready().await;
    let mut c = Line::connect(app.tcp).await;
    assert_eq!(c.request("HELLO gh-3").await, "OK");

    c.send(b"gh-3 temperature=2").await;
    assert_eq!(
        c.recv_within(Duration::from_secs(2)).await,
        None,
        "no answer to half a line"
    );
    c.send(b"6.5\n").await;
    assert_eq!(c.recv().await.as_deref(), Some("OK"));
    assert_eq!(
        c.recv_within(Duration::from_millis(500)).await,
        None,
        "one line, one reply"
    );
    let p: Value = serde_json::from_slice(&sub.next_on(topic).await).unwrap();
    assert_eq!(p["temperature"], 26.5);
    assert_eq!(sub.quiet_for(Duration::from_millis(300)).await, None);

    // A bound board's pairs-only line, split the same way, too.
    c.send(b"humidity=6").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    c.send(b"1.5\r\n").await;
    assert_eq!(c.recv().await.as_deref(), Some("OK"));
    let p: Value = serde_json::from_slice(&sub.next_on(topic).await).unwrap();
    assert_eq!(p["humidity"], 61.5);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let mut s = settings(closed_port());
    s.ingest.tcp_idle_timeout_secs = 1;
    let app = TestApp::spawn(s).await;
    let mut c = Line::connect(app.tcp).await;
    assert_eq!(c.request("PING").await, "PONG");
    let started = std::time::Instant::now();
    assert_eq!(c.recv().await, None, "closed for idleness");
    assert!(started.elapsed() >= Duration::from_millis(900));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_tcp_connections_and_stops_listening() {
    let app = app_without_broker().await;
    let (http, tcp) = (app.http, app.tcp);
    let mut c = Line::connect(tcp).await;
    assert_eq!(c.request("HELLO gh-1").await, "OK");
    app.shutdown().await;
    assert_eq!(c.recv().await, None, "connection closed on shutdown");
    assert!(tokio::net::TcpStream::connect(tcp).await.is_err());
    assert!(tokio::net::TcpStream::connect(http).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_are_ok_after_the_broker_has_them() {
    let broker = TestBroker::start();
    let mut sub = Mqtt::connect(broker.port(), "lentera/+/telemetry").await;
    let app = TestApp::spawn(settings(broker.port())).await;
    app.wait_ready().await;
    let mut c = Line::connect(app.tcp).await;

    assert_eq!(
        c.request("gh-1 temperature=27.3 humidity=61.2 ts=1700000000000\r")
            .await,
        "OK"
    );
    let p: Value = serde_json::from_slice(&sub.next_on("lentera/gh-1/telemetry").await).unwrap();
    assert_eq!(
        p,
        serde_json::json!({"humidity":61.2,"temperature":27.3,"ts":"2023-11-14T22:13:20.000000Z"})
    );
    assert_eq!(c.request(r#"{"device":"gh-2","lux":3.5}"#).await, "OK");
    let p: Value = serde_json::from_slice(&sub.next_on("lentera/gh-2/telemetry").await).unwrap();
    assert_eq!(p["lux"], 3.5);
    // Once bound, the device may be left out.
    assert_eq!(c.request("HELLO gh-3").await, "OK");
    assert_eq!(c.request("lux=7").await, "OK");
    let p: Value = serde_json::from_slice(&sub.next_on("lentera/gh-3/telemetry").await).unwrap();
    assert_eq!(p["lux"], 7.0);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lamp_commands_reach_the_hello_bound_socket() {
    let broker = TestBroker::start();
    let mut status = Mqtt::connect(broker.port(), "lentera/dev/status").await;
    let app = TestApp::spawn(settings(broker.port())).await;
    app.wait_ready().await;
    let controller = Mqtt::connect(broker.port(), "unused/#").await;
    let set = |payload: &'static str| {
        let client = controller.client.clone();
        async move {
            client
                .publish("lentera/dev/lamp/set", QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
    };

    let mut a = Line::connect(app.tcp).await;
    assert_eq!(a.request("HELLO dev").await, "OK");
    assert_eq!(status.next_on("lentera/dev/status").await, b"online");

    // Ingest's SUBSCRIBE may still be in flight right after CONNACK: repeat until relayed.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        set("on").await;
        match a.recv_within(Duration::from_millis(300)).await {
            Some(Some(line)) => {
                assert_eq!(line, "led-on");
                break;
            }
            Some(None) => panic!("connection closed"),
            None => assert!(
                tokio::time::Instant::now() < deadline,
                "led-on never relayed"
            ),
        }
    }
    while a.recv_within(Duration::from_millis(200)).await.is_some() {} // repeats of led-on
    set("off").await;
    assert_eq!(a.recv().await.as_deref(), Some("led-off"));

    // A reconnecting board gets the current state right after HELLO and takes over.
    let mut b = Line::connect(app.tcp).await;
    assert_eq!(b.request("HELLO dev").await, "OK");
    assert_eq!(b.recv().await.as_deref(), Some("led-off"));
    assert_eq!(status.next_on("lentera/dev/status").await, b"online");
    set("on").await;
    assert_eq!(b.recv().await.as_deref(), Some("led-on"));
    assert_eq!(
        a.recv_within(Duration::from_millis(300)).await,
        None,
        "old binding replaced"
    );

    // The replaced connection leaving does not mark the device offline; the bound one does.
    drop(a);
    assert_eq!(status.quiet_for(Duration::from_millis(300)).await, None);
    drop(b);
    assert_eq!(status.next_on("lentera/dev/status").await, b"offline");
    app.shutdown().await;
}
