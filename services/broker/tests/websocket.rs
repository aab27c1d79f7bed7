//! MQTT over WebSocket: the `/mqtt` endpoint, subprotocol negotiation, and MQTT 3.1.1
//! and 5.0 clients on it exchanging messages with ordinary TCP clients.
//!
//! The WebSocket clients speak raw MQTT bytes (rumqttc is built without its websocket
//! feature in this workspace), which also shows the bytes pass through untouched.

use futures_util::{SinkExt, StreamExt};
use rumqttc::QoS;
use std::net::SocketAddr;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

mod raw;

use raw::*;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn broker() -> (SocketAddr, SocketAddr, Running) {
    let b = start(settings()).await;
    (b.app_mqtt, b.ws.expect("ws listener on by default"), b)
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
    let (tcp, el) = tcp_client(mqtt, "tcp-a").await;
    tcp.subscribe("ws/out", QoS::AtMostOnce).await.unwrap();
    tcp.publish("ws/in", QoS::AtMostOnce, false, "hello ws")
        .await
        .unwrap();
    let expected = publish("ws/in", b"hello ws");
    let pump = tokio::spawn(next_publish(el));
    assert_eq!(read_bytes(&mut ws, expected.len()).await, expected);

    // WebSocket → TCP.
    let p = publish("ws/out", b"hello tcp");
    ws.send(Message::Binary(p.into())).await.unwrap();
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
