//! The whole system, end to end: five real binaries, a real PostgreSQL, real clients.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use lentera_tests::{BrokerKind, Stack};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(15);

/// An MQTT subscriber on `lentera/#` whose messages arrive on a channel; it logs in as
/// the stack's read-only `observer` broker user.
async fn subscriber(stack: &Stack, id: &str) -> mpsc::UnboundedReceiver<(String, Vec<u8>)> {
    let addr = stack.mqtt_addr();
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    let (user, password) = stack.observer();
    o.set_credentials(user, password);
    let (client, mut eventloop) = AsyncClient::new(o, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    let mut subscribed_tx = Some(subscribed_tx);
    tokio::spawn(async move {
        let _client = client.clone();
        client
            .subscribe("lentera/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::SubAck(_))) => {
                    if let Some(t) = subscribed_tx.take() {
                        let _ = t.send(());
                    }
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    if tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    timeout(WAIT, subscribed_rx).await.unwrap().unwrap();
    rx
}

/// Waits for a message on `topic` whose payload satisfies `pred`.
async fn expect_mqtt(
    rx: &mut mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    topic: &str,
    pred: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    timeout(WAIT, async {
        loop {
            let (t, p) = rx.recv().await.expect("subscriber alive");
            if t == topic && pred(&p) {
                return p;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no matching message on {topic}"))
}

/// Polls the history REST API until `pred` holds for the returned points.
async fn expect_history(stack: &Stack, query: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let url = format!("{}/api/v1/devices/{query}", stack.url(stack.web(), "http"));
    let start = std::time::Instant::now();
    let http = reqwest::Client::new();
    loop {
        let r = http
            .get(&url)
            .bearer_auth(stack.operator_token())
            .send()
            .await
            .unwrap();
        if r.status().is_success() {
            let body: Value = r.json().await.unwrap();
            let points = body["points"].as_array().cloned().unwrap_or_default();
            if pred(&points) {
                return points;
            }
        }
        assert!(start.elapsed() < WAIT, "history {query} never matched");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn has_value(points: &[Value], metric: &str, value: f64) -> bool {
    points
        .iter()
        .any(|p| p["metric"] == metric && p["value"].as_f64() == Some(value))
}

/// A TCP board connection to ingest's line protocol.
struct Board {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Board {
    async fn connect(stack: &Stack) -> Board {
        let s = TcpStream::connect(stack.ingest.addr("tcp").unwrap())
            .await
            .unwrap();
        let (r, w) = s.into_split();
        Board {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    async fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
    }

    async fn line(&mut self) -> String {
        let mut l = String::new();
        timeout(WAIT, self.reader.read_line(&mut l))
            .await
            .expect("a line from ingest in time")
            .unwrap();
        l.trim_end().to_owned()
    }

    async fn request(&mut self, line: &str) -> String {
        self.send(line).await;
        self.line().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_flow_to_storage_and_browsers_and_darkness_lights_the_lamp() {
    everything_flows_on(BrokerKind::Ours).await;
}

/// The services work unchanged on another broker: the same journey with Debian's
/// Mosquitto in place of ours (skipped, loudly, when it is not installed, unless
/// `LENTERA_REQUIRE_MOSQUITTO` is set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_flow_works_unchanged_on_mosquitto() {
    everything_flows_on(BrokerKind::Mosquitto).await;
}

/// And on a second independent broker, rumqttd 0.20.0 (skipped, loudly, when it is not
/// built, unless `LENTERA_REQUIRE_RUMQTTD` is set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_flow_works_unchanged_on_rumqttd() {
    everything_flows_on(BrokerKind::Rumqttd).await;
}

async fn everything_flows_on(kind: BrokerKind) {
    let Some(builder) = Stack::on(kind) else {
        return;
    };
    let stack = builder.start().await.expect("stack starts");
    everything_flows(stack).await;
}

/// HTTP, TCP and MQTT readings reach storage, MQTT and a browser; darkness lights a
/// lamp and an operator's override turns it off; everything stops cleanly.
async fn everything_flows(mut stack: Stack) {
    let http = reqwest::Client::new();
    let ingest = stack.url(&stack.ingest, "http");
    let web = stack.url(stack.web(), "http");
    let mut mqtt = subscriber(&stack, "e2e-observer").await;
    let gh1 = stack.provision("gh-1", "greenhouse").await.unwrap();
    let gh2 = stack.provision("gh-2", "greenhouse").await.unwrap();
    let gh3 = stack.provision("gh-3", "greenhouse").await.unwrap();
    let lamp1 = stack.provision("lamp-1", "lamp").await.unwrap();

    // A browser on the live stream, narrowed to gh-1 (a viewer: the operator's token).
    let ws_url = format!("ws://{}/ws", stack.web().addr("http").unwrap());
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            ws_url.as_str(),
        )
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", stack.operator_token())
            .parse()
            .unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("ws connects");
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        json!({"subscribe": ["gh-1"]}).to_string(),
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // 1. HTTP: 202 only after the broker acknowledged; the reading reaches MQTT,
    //    the WebSocket client and the history API.
    let r = http
        .post(format!("{ingest}/api/v1/readings"))
        .bearer_auth(&gh1)
        .json(&json!({"device": "gh-1", "temperature": 27.5, "humidity": 61.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"accepted": 1}));
    expect_mqtt(&mut mqtt, "lentera/gh-1/telemetry", |p| {
        serde_json::from_slice::<Value>(p).unwrap()["temperature"] == 27.5
    })
    .await;
    let ws_msg = timeout(WAIT, async {
        loop {
            let m = ws.next().await.expect("ws open").expect("ws frame");
            if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "reading" {
                    return v;
                }
            }
        }
    })
    .await
    .expect("a reading on the WebSocket");
    assert_eq!(ws_msg["device"], "gh-1");
    assert_eq!(ws_msg["metrics"]["temperature"], 27.5);
    expect_history(&stack, "gh-1/readings?metric=temperature", |p| {
        has_value(p, "temperature", 27.5)
    })
    .await;

    // 2. TCP line protocol, the seed sketch's style (the token alone says who it is):
    //    OK, then stored.
    let mut board = Board::connect(&stack).await;
    assert_eq!(board.request(&format!("AUTH {gh2}")).await, "OK");
    assert_eq!(
        board.request("gh-2 temperature=21.5 humidity=70").await,
        "OK"
    );
    expect_history(&stack, "gh-2/readings", |p| {
        has_value(p, "temperature", 21.5) && has_value(p, "humidity", 70.0)
    })
    .await;

    // 3. Straight to the broker with an MQTT client, logged in as the device: stored too.
    let addr = stack.mqtt_addr();
    let mut o = MqttOptions::new("gh-3", addr.ip().to_string(), addr.port());
    o.set_credentials("gh-3", gh3);
    let (board_mqtt, mut el) = AsyncClient::new(o, 10);
    tokio::spawn(async move { while el.poll().await.is_ok() {} });
    board_mqtt
        .publish(
            "lentera/gh-3/telemetry",
            QoS::AtLeastOnce,
            false,
            r#"{"humidity":55.5}"#,
        )
        .await
        .unwrap();
    expect_history(&stack, "gh-3/readings", |p| has_value(p, "humidity", 55.5)).await;

    // 4. A lamp board bound over TCP; darkness makes the controller command `on`,
    //    seen by an MQTT subscriber and relayed to the board as `led-on`.
    let mut lamp = Board::connect(&stack).await;
    assert_eq!(lamp.request(&format!("HELLO lamp-1 {lamp1}")).await, "OK");
    expect_mqtt(&mut mqtt, "lentera/lamp-1/status", |p| p == b"online").await;
    assert_eq!(lamp.request("lamp-1 lux=2.5").await, "OK");
    expect_mqtt(&mut mqtt, "lentera/lamp-1/lamp/set", |p| p == b"on").await;
    assert_eq!(lamp.line().await, "led-on");

    // 5. An operator forces it off from the REST API: the controller obeys.
    let r = http
        .put(format!("{web}/api/v1/lamps/lamp-1/mode"))
        .bearer_auth(stack.operator_token())
        .json(&json!({"mode": "off"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    expect_mqtt(&mut mqtt, "lentera/lamp-1/lamp/set", |p| p == b"off").await;
    assert_eq!(lamp.line().await, "led-off");

    // 6. Bucketed history over what was stored.
    let points = expect_history(
        &stack,
        "gh-1/readings?metric=temperature&bucket=1h&agg=max",
        |p| !p.is_empty(),
    )
    .await;
    assert_eq!(points[0]["value"], 27.5);

    // 7. The lamp shows up as a lamp with its mode stored (by the historian, which may
    //    still be writing it: poll).
    let start = std::time::Instant::now();
    loop {
        let lamps: Value = http
            .get(format!("{web}/api/v1/lamps"))
            .bearer_auth(stack.operator_token())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if lamps["lamps"]
            .as_array()
            .is_some_and(|a| a.iter().any(|l| l["device"] == "lamp-1"))
        {
            break;
        }
        assert!(start.elapsed() < WAIT, "lamp-1 never listed: {lamps}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 8. Every service stops cleanly on SIGTERM, the broker last.
    drop(ws);
    stack
        .terminate_all()
        .expect("every service exits 0 on SIGTERM");
    let Stack { db, .. } = stack;
    db.drop_db().await.unwrap();
}
