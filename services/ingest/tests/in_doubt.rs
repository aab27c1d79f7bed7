//! A board's retry of a reading without `ts` that ingest answered with a retryable error
//! while the broker may have had it gets the first attempt's receive time again, so
//! storage (keyed by `(device, metric, ts)`) keeps it once.
//!
//! The broker here is a fake that speaks just enough MQTT 3.1.1 and can misbehave on
//! cue: take a telemetry PUBLISH and drop the connection before its PUBACK (ingest sees
//! "connection lost"), take one and never acknowledge it (a PUBACK timeout), or refuse
//! connections (ingest is not connected, nothing is sent). It records every telemetry
//! PUBLISH it received, which is what the historian would have stored.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{Line, TestApp, settings};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the fake broker does with the next telemetry PUBLISHes.
#[derive(Debug, Default)]
struct Cues {
    /// Take the publish, then close the connection without PUBACK.
    drop_connection: usize,
    /// Take the publish and never acknowledge it.
    swallow: usize,
    /// Close every new connection at once.
    refuse: bool,
    /// Every telemetry PUBLISH received: (topic, payload).
    received: Vec<(String, Vec<u8>)>,
}

#[derive(Clone)]
struct FakeBroker {
    port: u16,
    cues: Arc<Mutex<Cues>>,
}

impl FakeBroker {
    async fn start() -> FakeBroker {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cues = Arc::new(Mutex::new(Cues::default()));
        let shared = cues.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                if shared.lock().unwrap().refuse {
                    drop(stream);
                    continue;
                }
                tokio::spawn(serve(stream, shared.clone()));
            }
        });
        FakeBroker { port, cues }
    }

    fn cue(&self, f: impl FnOnce(&mut Cues)) {
        f(&mut self.cues.lock().unwrap());
    }

    /// The `ts` of every telemetry message received for `device`, in order.
    fn stamps(&self, device: &str) -> Vec<DateTime<Utc>> {
        let topic = format!("lentera/{device}/telemetry");
        self.cues
            .lock()
            .unwrap()
            .received
            .iter()
            .filter(|(t, _)| *t == topic)
            .map(|(_, p)| {
                let v: Value = serde_json::from_slice(p).unwrap();
                DateTime::parse_from_rfc3339(v["ts"].as_str().unwrap())
                    .unwrap()
                    .to_utc()
            })
            .collect()
    }
}

/// One client connection: CONNECT, SUBSCRIBE, PINGREQ and QoS 0/1 PUBLISH are enough.
async fn serve(mut stream: TcpStream, cues: Arc<Mutex<Cues>>) {
    while let Some((header, body)) = read_packet(&mut stream).await {
        let reply: Vec<u8> = match header >> 4 {
            1 => vec![0x20, 0x02, 0x00, 0x00],
            3 => {
                let qos = (header >> 1) & 3;
                let len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let topic = String::from_utf8_lossy(&body[2..2 + len]).into_owned();
                let (pkid, payload) = if qos > 0 {
                    (&body[2 + len..4 + len], &body[4 + len..])
                } else {
                    (&[][..], &body[2 + len..])
                };
                let mut ack = vec![0x40, 0x02];
                ack.extend_from_slice(pkid);
                if topic.ends_with("/telemetry") {
                    let mut c = cues.lock().unwrap();
                    c.received.push((topic, payload.to_vec()));
                    if c.drop_connection > 0 {
                        c.drop_connection -= 1;
                        return;
                    }
                    if c.swallow > 0 {
                        c.swallow -= 1;
                        continue;
                    }
                }
                if qos == 0 {
                    continue;
                }
                ack
            }
            8 => {
                // SUBSCRIBE: packet id, then (filter, qos) pairs; grant each QoS 1.
                let mut granted = Vec::new();
                let mut i = 2;
                while i + 2 <= body.len() {
                    let len = usize::from(u16::from_be_bytes([body[i], body[i + 1]]));
                    i += 2 + len + 1;
                    granted.push(1);
                }
                let mut suback = vec![0x90, 2 + granted.len() as u8, body[0], body[1]];
                suback.extend(granted);
                suback
            }
            12 => vec![0xD0, 0x00],
            14 => return,
            _ => continue,
        };
        if stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// One MQTT packet: its first byte and its body; `None` when the connection ends.
async fn read_packet(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let header = stream.read_u8().await.ok()?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let b = stream.read_u8().await.ok()?;
        len |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let mut body = vec![0; len];
    stream.read_exact(&mut body).await.ok()?;
    Some((header, body))
}

async fn post(app: &TestApp, path: &str, body: Value) -> u16 {
    reqwest::Client::new()
        .post(app.url(path))
        .json(&body)
        .send()
        .await
        .expect("request sent")
        .status()
        .as_u16()
}

/// `name`'s value on ingest's `/metrics`.
async fn metric(app: &TestApp, name: &str) -> u64 {
    let text = reqwest::get(app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_line_retried_after_the_connection_was_lost_mid_publish_keeps_its_receive_time() {
    let broker = FakeBroker::start().await;
    let app = TestApp::spawn(settings(broker.port)).await;
    app.wait_ready().await;
    let mut board = Line::connect(app.tcp).await;
    assert_eq!(board.request("HELLO nd-tcp").await, "OK");

    // The broker takes the reading and dies before its PUBACK.
    broker.cue(|c| c.drop_connection = 1);
    let reply = board.request("seq=1").await;
    assert!(reply.starts_with("ERR broker_unavailable"), "{reply}");
    app.wait_ready().await;
    // The board's retry, on the same connection, then a new reading with the same value
    // (a success came in between: a new reading), then another retry on a new connection.
    assert_eq!(board.request("seq=1").await, "OK");
    assert_eq!(board.request(r#"{"seq":1}"#).await, "OK");
    broker.cue(|c| c.drop_connection = 1);
    let reply = board.request("seq=2").await;
    assert!(reply.starts_with("ERR broker_unavailable"), "{reply}");
    drop(board);
    app.wait_ready().await;
    let mut board = Line::connect(app.tcp).await;
    assert_eq!(board.request("HELLO nd-tcp").await, "OK");
    assert_eq!(board.request("seq=2").await, "OK");

    let ts = broker.stamps("nd-tcp");
    assert_eq!(ts.len(), 5, "{ts:?}");
    assert_eq!(ts[1], ts[0], "the retry is the same reading");
    assert!(ts[2] > ts[1], "a repeat after a success is a new reading");
    assert_eq!(ts[4], ts[3], "a retry on a new connection too");
    assert!(ts[3] > ts[2]);
    assert_eq!(metric(&app, "lentera_ingest_stamps_reused_total").await, 2);
    assert_eq!(
        metric(&app, "lentera_ingest_stamps_in_doubt_total").await,
        2
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_request_retried_after_a_puback_timeout_keeps_its_receive_times() {
    let broker = FakeBroker::start().await;
    let app = TestApp::spawn(settings(broker.port)).await;
    app.wait_ready().await;

    // A batch of two readings (one with the board's own ts) and the seed's /sensor.
    let batch = json!([
        {"device":"nd-http","seq":1},
        {"device":"nd-http","seq":2,"ts":Utc::now().timestamp_millis()},
    ]);
    broker.cue(|c| c.swallow = 2);
    assert_eq!(post(&app, "/api/v1/readings", batch.clone()).await, 503);
    assert_eq!(post(&app, "/api/v1/readings", batch.clone()).await, 202);
    let ts = broker.stamps("nd-http");
    assert_eq!(ts.len(), 4, "{ts:?}");
    assert_eq!(
        ts[2], ts[0],
        "the retried reading without ts keeps its time"
    );
    assert_eq!(ts[3], ts[1], "the board's ts is its own");
    // The same batch again after its success: new readings.
    assert_eq!(post(&app, "/api/v1/readings", batch).await, 202);
    let ts = broker.stamps("nd-http");
    assert!(ts[4] > ts[2]);

    broker.cue(|c| c.swallow = 1);
    assert_eq!(post(&app, "/sensor", json!({"suhu": 27.5})).await, 503);
    assert_eq!(post(&app, "/sensor", json!({"suhu": 27.5})).await, 200);
    assert_eq!(post(&app, "/sensor", json!({"suhu": 27.5})).await, 200);
    let ts = broker.stamps("gh-1");
    assert_eq!(ts.len(), 3, "{ts:?}");
    assert_eq!(ts[1], ts[0]);
    assert!(ts[2] > ts[1]);
    assert_eq!(metric(&app, "lentera_ingest_stamps_reused_total").await, 2);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_never_sent_is_stamped_anew_when_retried() {
    let broker = FakeBroker::start().await;
    broker.cue(|c| c.refuse = true);
    let mut s = settings(broker.port);
    s.mqtt.ack_timeout_ms = 500;
    let app = TestApp::spawn(s).await;
    let reading = json!({"device":"nd-never","seq":1});
    assert_eq!(post(&app, "/api/v1/readings", reading.clone()).await, 503);
    let answered = Utc::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    broker.cue(|c| c.refuse = false);
    app.wait_ready().await;
    assert_eq!(post(&app, "/api/v1/readings", reading).await, 202);
    let ts = broker.stamps("nd-never");
    assert_eq!(ts.len(), 1);
    assert!(
        ts[0] > answered,
        "a fresh receive time: {} <= {answered}",
        ts[0]
    );
    assert_eq!(metric(&app, "lentera_ingest_stamps_reused_total").await, 0);
    assert_eq!(
        metric(&app, "lentera_ingest_stamps_in_doubt_total").await,
        0
    );
    app.shutdown().await;
}
