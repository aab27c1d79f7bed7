//! The live path with a real broker (ours, as a process): MQTT → hub → `/ws`, and
//! `PUT .../mode` → retained MQTT publish → back through the hub.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use lentera_db::write::Record;
use lentera_protocol::LampCommand;
use lentera_tests::TestBroker;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{Value, json};
use support::{TestApp, Ws, t0};
use tokio_tungstenite::tungstenite::Message;

/// The next JSON text message, within 5 s.
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a WebSocket message within 5 s")
            .expect("the stream is open")
            .unwrap();
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt_messages_reach_ws_clients_filtered_and_put_mode_round_trips() {
    let broker = TestBroker::start();
    let app = TestApp::spawn_with_mqtt(broker.port()).await;
    app.store(&[Record::LampState {
        device: "lamp-1".into(),
        at: t0(0),
        state: LampCommand::On,
    }])
    .await;
    for _ in 0..100 {
        let (_, body) = app.get_json("/readyz").await;
        if body["checks"]["mqtt"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut ws = app.ws("/ws").await;
    ws.send(Message::text("not json")).await.unwrap();
    let err = next_json(&mut ws).await;
    assert_eq!(err["type"], "error", "{err}");
    ws.send(Message::text(r#"{"subscribe":["gh-1"]}"#))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type":"subscribed","devices":["gh-1"]})
    );

    let mut opts = MqttOptions::new("web-live-test", "127.0.0.1", broker.port());
    opts.set_keep_alive(Duration::from_secs(5));
    let (mqtt, mut eventloop) = AsyncClient::new(opts, 16);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    // gh-2 is filtered out; MQTT keeps one publisher's order, so gh-1's reading is next.
    mqtt.publish(
        "lentera/gh-2/telemetry",
        QoS::AtLeastOnce,
        false,
        r#"{"lux":1}"#,
    )
    .await
    .unwrap();
    mqtt.publish(
        "lentera/gh-1/telemetry",
        QoS::AtLeastOnce,
        false,
        r#"{"temperature":27.3,"ts":"2026-11-22T01:00:00Z"}"#,
    )
    .await
    .unwrap();
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type":"reading","device":"gh-1","ts":"2026-11-22T01:00:00.000000Z",
               "metrics":{"temperature":27.3}})
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("lentera_web_ws_clients 1"), "{metrics}");

    // The override is published retained and comes back through the hub.
    ws.send(Message::text(r#"{"subscribe":"*"}"#))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["devices"], "*");
    let r = app
        .http
        .put(app.url("/api/v1/lamps/lamp-1/mode"))
        .body(r#"{"mode":"on"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, json!({"device":"lamp-1","mode":"on","until":null}));
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type":"lamp","device":"lamp-1","mode":"on"})
    );

    // Shutdown closes the WebSocket with "going away" instead of waiting for the client.
    let stopping = tokio::spawn(app.stop());
    let close = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Close(frame) = msg {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .expect("closed within 5 s");
    assert_eq!(close, Some(1001));
    stopping.await.unwrap();
}
