//! MQTT over WebSocket: the `/mqtt` endpoint, subprotocol negotiation, and MQTT 3.1.1
//! and 5.0 clients on it exchanging messages with ordinary TCP clients.
//!
//! The WebSocket clients speak raw MQTT bytes (rumqttc is built without its websocket
//! feature in this workspace), which also shows the bytes pass through untouched.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use lentera_broker::settings::Settings;
use lentera_broker::startup::Application;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const WAIT: Duration = Duration::from_secs(5);
type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An in-memory broker on OS-chosen ports; returns (mqtt, ws) addresses.
async fn broker() -> (SocketAddr, SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let mut settings = Settings::default();
    settings.broker.mqtt_addr = "127.0.0.1:0".into();
    settings.broker.admin_addr = "127.0.0.1:0".into();
    settings.broker.data_dir = Default::default();
    let app = Application::build(settings).await.expect("broker starts");
    let (mqtt, ws) = (
        app.mqtt_addr(),
        app.ws_addr().expect("ws listener on by default"),
    );
    let (stop, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    (mqtt, ws, stop)
}

async fn ws_connect(
    ws: SocketAddr,
    path: &str,
    protocol: Option<&str>,
) -> Result<(Ws, Option<String>), WsError> {
    let mut req = format!("ws://{ws}{path}").into_client_request().unwrap();
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("sec-websocket-protocol", p.parse().unwrap());
    }
    let (stream, res) = tokio_tungstenite::connect_async(req).await?;
    let echoed = res
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_owned());
    Ok((stream, echoed))
}

/// Reads binary frames until `n` bytes arrived (MQTT packets may be split or joined
/// across frames).
async fn read_bytes(ws: &mut Ws, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("data in time")
        {
            Some(Ok(Message::Binary(b))) => got.extend_from_slice(&b),
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }
    got
}

fn with_len(header: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128);
    [&[header, body.len() as u8][..], body].concat()
}

fn str16(s: &str) -> Vec<u8> {
    [&(s.len() as u16).to_be_bytes()[..], s.as_bytes()].concat()
}

fn connect_v311(id: &str) -> Vec<u8> {
    with_len(
        0x10,
        &[&b"\0\x04MQTT\x04\x02\0\x3c"[..], &str16(id)].concat(),
    )
}

fn connect_v5(id: &str) -> Vec<u8> {
    // Protocol level 5, clean start, keep-alive 60, no properties.
    with_len(
        0x10,
        &[&b"\0\x04MQTT\x05\x02\0\x3c\0"[..], &str16(id)].concat(),
    )
}

async fn tcp_client(mqtt: SocketAddr, id: &str) -> (AsyncClient, rumqttc::EventLoop) {
    let mut o = MqttOptions::new(id, mqtt.ip().to_string(), mqtt.port());
    o.set_keep_alive(Duration::from_secs(30));
    let (c, mut el) = AsyncClient::new(o, 10);
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = el.poll().await.expect("tcp connects") {
            return (c, el);
        }
    }
}

#[tokio::test]
async fn v311_client_over_websocket_receives_from_and_publishes_to_tcp_clients() {
    let (mqtt, ws_addr, _stop) = broker().await;
    let (mut ws, echoed) = ws_connect(ws_addr, "/mqtt", Some("mqtt")).await.unwrap();
    assert_eq!(echoed.as_deref(), Some("mqtt"), "subprotocol echoed");

    ws.send(Message::Binary(connect_v311("ws-a").into()))
        .await
        .unwrap();
    assert_eq!(
        read_bytes(&mut ws, 4).await,
        [0x20, 2, 0, 0],
        "CONNACK accepted"
    );
    let sub = with_len(0x82, &[&[0, 1][..], &str16("ws/in"), &[0]].concat());
    ws.send(Message::Binary(sub.into())).await.unwrap();
    assert_eq!(
        read_bytes(&mut ws, 5).await,
        [0x90, 3, 0, 1, 0],
        "SUBACK QoS 0"
    );

    // TCP → WebSocket.
    let (tcp, mut el) = tcp_client(mqtt, "tcp-a").await;
    tcp.subscribe("ws/out", QoS::AtMostOnce).await.unwrap();
    tcp.publish("ws/in", QoS::AtMostOnce, false, "hello ws")
        .await
        .unwrap();
    let expected = with_len(0x30, &[&str16("ws/in")[..], b"hello ws"].concat());
    let pump = tokio::spawn(async move {
        // Drives the TCP client and returns the first PUBLISH it receives.
        loop {
            if let Event::Incoming(Packet::Publish(p)) = el.poll().await.unwrap() {
                return p;
            }
        }
    });
    assert_eq!(read_bytes(&mut ws, expected.len()).await, expected);

    // WebSocket → TCP.
    let publish = with_len(0x30, &[&str16("ws/out")[..], b"hello tcp"].concat());
    ws.send(Message::Binary(publish.into())).await.unwrap();
    let p = tokio::time::timeout(WAIT, pump).await.unwrap().unwrap();
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("ws/out", &b"hello tcp"[..])
    );
}

#[tokio::test]
async fn v5_client_connects_over_websocket() {
    let (_mqtt, ws_addr, _stop) = broker().await;
    let (mut ws, _) = ws_connect(ws_addr, "/mqtt", Some("mqtt")).await.unwrap();
    ws.send(Message::Binary(connect_v5("ws-v5").into()))
        .await
        .unwrap();
    let head = read_bytes(&mut ws, 4).await;
    // CONNACK, then (after the remaining length) flags 0 and reason code 0 = Success.
    assert_eq!((head[0], head[2], head[3]), (0x20, 0, 0), "{head:02x?}");
}

#[tokio::test]
async fn handshake_requires_the_mqtt_path_and_subprotocol() {
    let (_mqtt, ws_addr, _stop) = broker().await;
    let status = |e: WsError| match e {
        WsError::Http(res) => res.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    };
    let e = ws_connect(ws_addr, "/", Some("mqtt")).await.unwrap_err();
    assert_eq!(status(e), 404);
    let e = ws_connect(ws_addr, "/mqtt", Some("wamp"))
        .await
        .unwrap_err();
    assert_eq!(status(e), 400);
    // Offering several, mqtt among them: mqtt is chosen.
    let (_, echoed) = ws_connect(ws_addr, "/mqtt", Some("mqttv3.1, mqtt"))
        .await
        .unwrap();
    assert_eq!(echoed.as_deref(), Some("mqtt"));
    // Offering none: accepted, and nothing echoed (a browser would reject it).
    let (_, echoed) = ws_connect(ws_addr, "/mqtt", None).await.unwrap();
    assert_eq!(echoed, None);
}

#[tokio::test]
async fn text_frames_close_the_connection() {
    let (_mqtt, ws_addr, _stop) = broker().await;
    let (mut ws, _) = ws_connect(ws_addr, "/mqtt", Some("mqtt")).await.unwrap();
    ws.send(Message::Text("CONNECT".into())).await.unwrap();
    // [MQTT-6.0.0-1]: data in a text frame closes the network connection.
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "connection closed");
}
