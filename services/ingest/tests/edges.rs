//! The edges of both doors over real sockets: HTTP head and body deadlines, connection
//! caps per source address on HTTP and TCP, JSON error bodies where actix answers by
//! itself, and the service log (the real binary's): no token ever, and nothing a client
//! sends can forge a log line.

mod common;

use std::time::{Duration, Instant};

use common::{Line, Registry, TestApp, WAIT, closed_port, raw_http, settings};
use lentera_tests::{Service, TestBroker};
use tokio::net::TcpStream;

#[tokio::test]
async fn a_stalled_body_gets_408_json_and_the_connection_is_closed() {
    let mut s = settings(closed_port());
    s.ingest.http_body_timeout_ms = 300;
    let app = TestApp::spawn(s).await;
    let mut c = TcpStream::connect(app.http).await.unwrap();
    let started = Instant::now();
    let answer = raw_http(
        &mut c,
        b"POST /api/v1/readings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"device\":\"gh-1\",",
        WAIT,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""error":"body_timeout""#), "{answer}");
    assert!(
        started.elapsed() < WAIT,
        "closed after the answer, not left open"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_stalled_head_gets_408_and_is_closed() {
    let mut s = settings(closed_port());
    s.ingest.http_header_timeout_ms = 300;
    let app = TestApp::spawn(s).await;
    let mut c = TcpStream::connect(app.http).await.unwrap();
    let started = Instant::now();
    let answer = raw_http(
        &mut c,
        b"POST /api/v1/readings HTTP/1.1\r\nHost: x\r\n",
        WAIT,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < WAIT, "closed");
    app.shutdown().await;
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

#[tokio::test]
async fn one_address_gets_max_connections_per_ip_http_connections() {
    let mut s = settings(closed_port());
    s.quota.max_connections_per_ip = 2;
    let app = TestApp::spawn(s).await;
    let short = Duration::from_millis(300);
    let mut first = TcpStream::connect(app.http).await.unwrap();
    let mut second = TcpStream::connect(app.http).await.unwrap();
    for c in [&mut first, &mut second] {
        let answer = raw_http(c, HEALTHZ, short).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    // Both kept alive: a third connection from the same address is refused and closed.
    let mut third = TcpStream::connect(app.http).await.unwrap();
    let started = Instant::now();
    let answer = raw_http(&mut third, HEALTHZ, WAIT).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.contains(r#""error":"too_many_connections""#),
        "{answer}"
    );
    assert!(started.elapsed() < WAIT, "closed after the answer");
    // The kept connections still work, and a freed slot is available again.
    let answer = raw_http(&mut second, HEALTHZ, short).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(first);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut c = TcpStream::connect(app.http).await.unwrap();
        let answer = raw_http(&mut c, HEALTHZ, short).await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot never came back: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.shutdown().await;
}

#[tokio::test]
async fn one_address_cannot_fill_every_tcp_slot() {
    let mut s = settings(closed_port());
    s.quota.max_connections_per_ip = 2;
    s.ingest.tcp_max_connections = 100;
    let app = TestApp::spawn(s).await;
    let mut first = Line::connect(app.tcp).await;
    let mut second = Line::connect(app.tcp).await;
    assert_eq!(first.request("PING").await, "PONG");
    assert_eq!(second.request("PING").await, "PONG");
    let mut third = Line::connect(app.tcp).await;
    assert_eq!(
        third.recv().await.as_deref(),
        Some("ERR too_many_connections too many open connections from this address")
    );
    assert_eq!(third.recv().await, None, "then closed");
    drop(first);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut c = Line::connect(app.tcp).await;
        c.send(b"PING\n").await;
        if c.recv().await.as_deref() == Some("PONG") {
            break;
        }
        assert!(Instant::now() < deadline, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(second.request("PING").await, "PONG");
    app.shutdown().await;
}

#[tokio::test]
async fn error_answers_of_every_route_are_json() {
    let app = TestApp::spawn(settings(closed_port())).await;
    let client = reqwest::Client::new();
    let cases = [
        (client.post(app.url("/healthz")), 404, "not_found"),
        (client.delete(app.url("/metrics")), 404, "not_found"),
        (
            client.get(app.url("/api/v1/readings")),
            405,
            "method_not_allowed",
        ),
        (
            client.get(app.url("/api/v1/devices/x/readings")),
            405,
            "method_not_allowed",
        ),
        (client.get(app.url("/nope")), 404, "not_found"),
    ];
    for (req, status, code) in cases {
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), status);
        let body: serde_json::Value = res.json().await.expect("a JSON body");
        assert_eq!(body["error"], code, "{body}");
    }
    app.shutdown().await;
}

/// The real binary, closed, logging at debug, through every door with good and bad
/// tokens and with lines made to look like log lines: its log never holds a token, and
/// nothing of what the boards sent appears raw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_holds_no_token_and_no_line_a_client_forged() {
    let broker = TestBroker::start();
    let reg = Registry::create().await;
    let a = reg.add("gh-a").await;
    let b = reg.add("gh-b").await;
    let wrong = lentera_auth::token::generate();
    let dir = lentera_tests::tempdir("ingest-log").unwrap();
    let env: Vec<(String, String)> = [
        ("LENTERA_DATABASE__URL", reg.db.url.clone()),
        ("LENTERA_MQTT__HOST", "127.0.0.1".into()),
        ("LENTERA_MQTT__PORT", broker.port().to_string()),
        ("LENTERA_INGEST__HTTP_ADDR", "127.0.0.1:0".into()),
        ("LENTERA_INGEST__TCP_ADDR", "127.0.0.1:0".into()),
        ("LENTERA_TELEMETRY__LOG", "debug".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut ingest = Service::spawn("ingest", &dir, &env).unwrap();
    ingest.wait_ready("http").await.unwrap();
    let http = ingest.addr("http").unwrap();
    let tcp = ingest.addr("tcp").unwrap();

    let client = reqwest::Client::new();
    let readings = format!("http://{http}/api/v1/readings");
    for token in [&a, &wrong, &b] {
        let _ = client
            .post(&readings)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(r#"{"lux":1}"#)
            .send()
            .await
            .unwrap();
        let _ = client
            .post(format!("http://{http}/api/v1/devices/{token}/readings"))
            .header("content-type", "application/json")
            .body(r#"{"lux":1}"#)
            .send()
            .await
            .unwrap();
    }
    let mut board = Line::connect(tcp).await;
    for line in [
        format!("HELLO gh-a {wrong}"),
        format!("HELLO gh-a {a} extra"),
        format!("AUTH {b} {a}"),
        format!("HELLO gh-b {a}"),
        format!("HELLO gh-a {a}"),
        format!("AUTH {a}"),
        "ERROR lentera_ingest: forged by a board".into(),
        "gh-a lux=1\u{1b}[2K\rERROR forged after a terminal escape".into(),
        "HELLO gh-\u{7}forged".into(),
        "{\"device\":\"gh-a\",\"forged\u{0}\":1}".into(),
    ] {
        let _ = board.request(&line).await;
    }
    // A revocation goes through the log too.
    reg.disable("gh-a").await;
    let _ = board.recv().await;
    ingest.signal_term().unwrap();
    let status = ingest.wait_exit(WAIT * 2).await.unwrap();
    assert!(status.success(), "{status}");

    let log = std::fs::read_to_string(&ingest.log).unwrap();
    assert!(
        log.contains("TCP board bound"),
        "the log is the service's: {log}"
    );
    for token in [&a, &b, &wrong] {
        assert!(!log.contains(token.as_str()), "a token in the log:\n{log}");
        // Not even its random part.
        assert!(
            !log.contains(&token[3..12]),
            "part of a token in the log:\n{log}"
        );
    }
    assert!(!log.contains("forged"), "client text in the log:\n{log}");
    assert!(
        !log.lines().any(|l| l.starts_with("ERROR")),
        "a line starting with ERROR:\n{log}"
    );
    assert!(
        !log.contains("auth.open"),
        "a closed ingest says nothing about open mode"
    );
    drop(ingest);
    reg.drop_db().await;
}

/// Open mode must be said at every start: the binary, started twice.
#[tokio::test]
async fn an_open_ingest_warns_at_every_start() {
    let dir = lentera_tests::tempdir("ingest-open").unwrap();
    let env: Vec<(String, String)> = [
        ("LENTERA_AUTH__OPEN", "true".to_owned()),
        ("LENTERA_MQTT__PORT", closed_port().to_string()),
        ("LENTERA_INGEST__HTTP_ADDR", "127.0.0.1:0".into()),
        ("LENTERA_INGEST__TCP_ADDR", "127.0.0.1:0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut ingest = Service::spawn("ingest", &dir, &env).unwrap();
    ingest.restart().unwrap();
    ingest.signal_term().unwrap();
    let _ = ingest.wait_exit(WAIT * 2).await;
    let log = std::fs::read_to_string(&ingest.log).unwrap();
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("auth.open = true"))
        .count();
    assert_eq!(warnings, 2, "{log}");
}
