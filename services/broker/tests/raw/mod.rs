//! Shared by the transport tests (WebSocket, TLS): an in-memory broker with its extra
//! listeners on OS-chosen ports, and hand-built MQTT packets for clients that speak
//! raw bytes over a transport rumqttc is not built for in this workspace.

#![allow(dead_code)] // each test file uses a different subset

use std::time::Duration;

use lentera_broker::settings::Settings;
use lentera_broker::startup::Application;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet};

pub const WAIT: Duration = Duration::from_secs(5);

/// Settings for an in-memory broker on port 0 (so its WebSocket and TLS listeners are
/// on port 0 too).
pub fn settings() -> Settings {
    let mut settings = Settings::default();
    // Not about identity: no registry, every client may connect (auth.open).
    settings.auth.open = true;
    settings.broker.mqtt_addr = "127.0.0.1:0".into();
    settings.broker.admin_addr = "127.0.0.1:0".into();
    settings.broker.data_dir = Default::default();
    settings
}

/// A running broker; stops when dropped.
pub struct Running {
    pub app_mqtt: std::net::SocketAddr,
    pub ws: Option<std::net::SocketAddr>,
    pub tls: Option<std::net::SocketAddr>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub async fn start(settings: Settings) -> Running {
    let app = Application::build(settings).await.expect("broker starts");
    let (app_mqtt, ws, tls) = (app.mqtt_addr(), app.ws_addr(), app.tls_addr());
    let (stop, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    Running {
        app_mqtt,
        ws,
        tls,
        _stop: stop,
    }
}

/// A rumqttc MQTT 3.1.1 client on the plain TCP port, returned once connected.
pub async fn tcp_client(mqtt: std::net::SocketAddr, id: &str) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(id, mqtt.ip().to_string(), mqtt.port());
    o.set_keep_alive(Duration::from_secs(30));
    let (c, mut el) = AsyncClient::new(o, 10);
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = el.poll().await.expect("tcp connects") {
            return (c, el);
        }
    }
}

/// Drives `el` until the first PUBLISH arrives, and returns it.
pub async fn next_publish(mut el: EventLoop) -> rumqttc::Publish {
    loop {
        if let Event::Incoming(Packet::Publish(p)) = el.poll().await.unwrap() {
            return p;
        }
    }
}

pub fn with_len(header: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128);
    [&[header, body.len() as u8][..], body].concat()
}

pub fn str16(s: &str) -> Vec<u8> {
    [&(s.len() as u16).to_be_bytes()[..], s.as_bytes()].concat()
}

/// MQTT 3.1.1 CONNECT, clean session, keep-alive 60 s.
pub fn connect_v311(id: &str) -> Vec<u8> {
    with_len(
        0x10,
        &[&b"\0\x04MQTT\x04\x02\0\x3c"[..], &str16(id)].concat(),
    )
}

/// MQTT 5.0 CONNECT, clean start, keep-alive 60 s, no properties.
pub fn connect_v5(id: &str) -> Vec<u8> {
    with_len(
        0x10,
        &[&b"\0\x04MQTT\x05\x02\0\x3c\0"[..], &str16(id)].concat(),
    )
}

/// MQTT 3.1.1 CONNACK: session not present, accepted.
pub const CONNACK_OK: [u8; 4] = [0x20, 2, 0, 0];

/// MQTT 3.1.1 SUBSCRIBE with packet id 1 at QoS 0; its SUBACK is [`SUBACK_1_QOS0`].
pub fn subscribe(topic: &str) -> Vec<u8> {
    with_len(0x82, &[&[0, 1][..], &str16(topic), &[0]].concat())
}

pub const SUBACK_1_QOS0: [u8; 5] = [0x90, 3, 0, 1, 0];

/// QoS 0 PUBLISH (the same bytes a broker sends to a QoS 0 subscriber).
pub fn publish(topic: &str, payload: &[u8]) -> Vec<u8> {
    with_len(0x30, &[&str16(topic)[..], payload].concat())
}
