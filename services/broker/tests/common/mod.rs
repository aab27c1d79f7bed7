//! Test harness: the real broker in-process on OS-chosen ports, and rumqttc clients
//! (MQTT 3.1.1 and 5) whose event loops report what they see on a channel.

#![allow(dead_code)] // each test file uses a different subset

use std::net::SocketAddr;
use std::time::Duration;

use lentera_broker::settings::Settings;
use lentera_broker::startup::Application;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub const WAIT: Duration = Duration::from_secs(5);

/// A telemetry payload with its own `ts`, which the broker routes byte for byte: for
/// tests about MQTT rather than readings that still use the platform's topics.
/// `{"seq":N,"ts":"…"}`, the `ts` fixed for the whole test process.
pub fn reading(seq: u64) -> Vec<u8> {
    static TS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let ts =
        TS.get_or_init(|| chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    format!(r#"{{"seq":{seq},"ts":"{ts}"}}"#).into_bytes()
}

pub struct Broker {
    pub mqtt: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Broker {
    pub async fn start() -> Self {
        let mut settings = Settings::default();
        // Not about identity: no registry, every client may connect (auth.open).
        settings.auth.open = true;
        settings.broker.mqtt_addr = "127.0.0.1:0".into();
        settings.broker.admin_addr = "127.0.0.1:0".into();
        settings.broker.workers = 2;
        // In memory: parallel tests must not share the default ./data/broker.
        settings.broker.data_dir = std::path::PathBuf::new();
        Self::start_with(settings).await
    }

    /// Settings for an in-process broker on port 0 with its store in `data_dir`.
    pub fn settings_with_store(data_dir: &std::path::Path) -> Settings {
        let mut settings = Settings::default();
        // Not about identity: no registry, every client may connect (auth.open).
        settings.auth.open = true;
        settings.broker.mqtt_addr = "127.0.0.1:0".into();
        settings.broker.admin_addr = "127.0.0.1:0".into();
        settings.broker.data_dir = data_dir.to_owned();
        settings
    }

    pub async fn start_with(settings: Settings) -> Self {
        // Logs only when asked for (`RUST_LOG=debug cargo test -- --nocapture`).
        static LOGS: std::sync::Once = std::sync::Once::new();
        if std::env::var_os("RUST_LOG").is_some() {
            LOGS.call_once(|| {
                let t = lentera_bootstrap::TelemetrySettings::default();
                std::mem::forget(lentera_bootstrap::telemetry::init("broker-test", &t));
            });
        }
        let app = Application::build(settings).await.expect("broker starts");
        let (mqtt, admin) = (app.mqtt_addr(), app.admin_addr());
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(app.run_until_stopped(async {
            let _ = rx.await;
        }));
        Broker {
            mqtt,
            admin,
            stop: Some(tx),
            task,
        }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(20), &mut self.task)
            .await
            .expect("broker stops in time")
            .unwrap()
            .unwrap();
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// A PUBLISH as a client received it, protocol-independent.
#[derive(Debug, Clone, PartialEq)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub pkid: u16,
    pub user_properties: Vec<(String, String)>,
}

#[derive(Debug)]
pub enum Ev {
    /// Carries session_present.
    ConnAck(bool),
    /// QoS 2 publisher side: PUBREC, then PUBCOMP.
    PubRec,
    PubComp,
    /// QoS 2 subscriber side: PUBREL after our PUBREC.
    PubRel,
    SubAck(Vec<u8>),
    PubAck,
    UnsubAck,
    Publish(Msg),
    Closed(String),
}

/// A connected client of either protocol version.
pub struct Client {
    v3: Option<rumqttc::AsyncClient>,
    v5: Option<rumqttc::v5::AsyncClient>,
    events: mpsc::UnboundedReceiver<Ev>,
    task: JoinHandle<()>,
    /// From CONNACK.
    pub session_present: bool,
}

fn qos3(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    use rumqttc::v5::mqttbytes::QoS;
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

impl Client {
    pub fn v3_options(broker: &Broker, id: &str) -> rumqttc::MqttOptions {
        let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", broker.mqtt.port());
        o.set_keep_alive(Duration::from_secs(10));
        o
    }

    pub fn v5_options(broker: &Broker, id: &str) -> rumqttc::v5::MqttOptions {
        let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", broker.mqtt.port());
        o.set_keep_alive(Duration::from_secs(10));
        o
    }

    pub async fn v3(broker: &Broker, id: &str) -> Self {
        Self::connect_v3(Self::v3_options(broker, id)).await
    }

    pub async fn v5(broker: &Broker, id: &str) -> Self {
        Self::connect_v5(Self::v5_options(broker, id)).await
    }

    /// Connects and waits for CONNACK. The event loop stops at the first error, so a
    /// client that was disconnected stays disconnected (rumqttc would reconnect).
    pub async fn connect_v3(opts: rumqttc::MqttOptions) -> Self {
        use rumqttc::{Event, Packet};
        let (client, mut el) = rumqttc::AsyncClient::new(opts, 64);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let ev = match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(c))) => Ev::ConnAck(c.session_present),
                    Ok(Event::Incoming(Packet::PubRec(_))) => Ev::PubRec,
                    Ok(Event::Incoming(Packet::PubComp(_))) => Ev::PubComp,
                    Ok(Event::Incoming(Packet::PubRel(_))) => Ev::PubRel,
                    Ok(Event::Incoming(Packet::SubAck(s))) => Ev::SubAck(
                        s.return_codes
                            .iter()
                            .map(|c| match c {
                                rumqttc::SubscribeReasonCode::Success(q) => *q as u8,
                                rumqttc::SubscribeReasonCode::Failure => 0x80,
                            })
                            .collect(),
                    ),
                    Ok(Event::Incoming(Packet::PubAck(_))) => Ev::PubAck,
                    Ok(Event::Incoming(Packet::UnsubAck(_))) => Ev::UnsubAck,
                    Ok(Event::Incoming(Packet::Publish(p))) => Ev::Publish(Msg {
                        topic: p.topic,
                        payload: p.payload.to_vec(),
                        qos: p.qos as u8,
                        retain: p.retain,
                        dup: p.dup,
                        pkid: p.pkid,
                        user_properties: vec![],
                    }),
                    Ok(_) => continue,
                    Err(e) => {
                        let _ = tx.send(Ev::Closed(e.to_string()));
                        return;
                    }
                };
                if tx.send(ev).is_err() {
                    return;
                }
            }
        });
        let mut c = Client {
            v3: Some(client),
            v5: None,
            events,
            task,
            session_present: false,
        };
        c.session_present = c.expect_connack().await;
        c
    }

    pub async fn connect_v5(opts: rumqttc::v5::MqttOptions) -> Self {
        use rumqttc::v5::Event;
        use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
        let (client, mut el) = rumqttc::v5::AsyncClient::new(opts, 64);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let ev = match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(c))) => Ev::ConnAck(c.session_present),
                    Ok(Event::Incoming(Packet::PubRec(_))) => Ev::PubRec,
                    Ok(Event::Incoming(Packet::PubComp(_))) => Ev::PubComp,
                    Ok(Event::Incoming(Packet::PubRel(_))) => Ev::PubRel,
                    Ok(Event::Incoming(Packet::SubAck(s))) => Ev::SubAck(
                        s.return_codes
                            .iter()
                            .map(|c| match c {
                                SubscribeReasonCode::Success(q) => *q as u8,
                                _ => 0x80,
                            })
                            .collect(),
                    ),
                    Ok(Event::Incoming(Packet::PubAck(_))) => Ev::PubAck,
                    Ok(Event::Incoming(Packet::UnsubAck(_))) => Ev::UnsubAck,
                    Ok(Event::Incoming(Packet::Publish(p))) => Ev::Publish(Msg {
                        topic: String::from_utf8(p.topic.to_vec()).unwrap(),
                        payload: p.payload.to_vec(),
                        qos: p.qos as u8,
                        retain: p.retain,
                        dup: p.dup,
                        pkid: p.pkid,
                        user_properties: p
                            .properties
                            .map(|pr| pr.user_properties)
                            .unwrap_or_default(),
                    }),
                    Ok(Event::Incoming(Packet::Disconnect(d))) => {
                        let _ = tx.send(Ev::Closed(format!("{:?}", d.reason_code)));
                        return;
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        let _ = tx.send(Ev::Closed(e.to_string()));
                        return;
                    }
                };
                if tx.send(ev).is_err() {
                    return;
                }
            }
        });
        let mut c = Client {
            v3: None,
            v5: Some(client),
            events,
            task,
            session_present: false,
        };
        c.session_present = c.expect_connack().await;
        c
    }

    async fn next_event(&mut self, within: Duration) -> Option<Ev> {
        tokio::time::timeout(within, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    async fn expect_connack(&mut self) -> bool {
        match self.next_event(WAIT).await {
            Some(Ev::ConnAck(present)) => present,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Waits for the first event `want` accepts, skipping others; panics on close.
    pub async fn expect(&mut self, what: &str, want: impl Fn(&Ev) -> bool) {
        loop {
            match self.next_event(WAIT).await {
                Some(ev) if want(&ev) => return,
                Some(Ev::Closed(e)) => panic!("closed while waiting for {what}: {e}"),
                Some(_) => continue,
                None => panic!("no {what} in time"),
            }
        }
    }

    /// Subscribes and returns the granted QoS (0x80 = failure) after SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: u8) -> u8 {
        if let Some(c) = &self.v3 {
            c.subscribe(filter, qos3(qos)).await.unwrap();
        } else {
            let c = self.v5.as_ref().unwrap();
            c.subscribe(filter, qos5(qos)).await.unwrap();
        }
        loop {
            match self.next_event(WAIT).await {
                Some(Ev::SubAck(codes)) => return codes[0],
                Some(Ev::Closed(e)) => panic!("closed while waiting for SUBACK: {e}"),
                Some(_) => continue,
                other => panic!("expected SUBACK, got {other:?}"),
            }
        }
    }

    pub async fn unsubscribe(&mut self, filter: &str) {
        if let Some(c) = &self.v3 {
            c.unsubscribe(filter).await.unwrap();
        } else {
            self.v5.as_ref().unwrap().unsubscribe(filter).await.unwrap();
        }
        loop {
            match self.next_event(WAIT).await {
                Some(Ev::UnsubAck) => return,
                Some(Ev::Closed(e)) => panic!("closed while waiting for UNSUBACK: {e}"),
                Some(_) => continue,
                other => panic!("expected UNSUBACK, got {other:?}"),
            }
        }
    }

    pub async fn publish(&self, topic: &str, payload: &[u8], qos: u8, retain: bool) {
        if let Some(c) = &self.v3 {
            c.publish(topic, qos3(qos), retain, payload.to_vec())
                .await
                .unwrap();
        } else {
            let c = self.v5.as_ref().unwrap();
            c.publish(topic, qos5(qos), retain, payload.to_vec())
                .await
                .unwrap();
        }
    }

    pub fn v5_client(&self) -> &rumqttc::v5::AsyncClient {
        self.v5.as_ref().expect("an MQTT 5 client")
    }

    /// The next PUBLISH within `WAIT`, skipping acknowledgements.
    pub async fn next_publish(&mut self) -> Msg {
        self.try_next_publish(WAIT)
            .await
            .expect("no PUBLISH arrived in time")
    }

    pub async fn try_next_publish(&mut self, within: Duration) -> Option<Msg> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await? {
                Ev::Publish(m) => return Some(m),
                Ev::Closed(e) => panic!("connection closed while waiting for PUBLISH: {e}"),
                _ => continue,
            }
        }
    }

    /// Waits for the PUBACK of a QoS 1 publish.
    pub async fn expect_puback(&mut self) {
        loop {
            match self.next_event(WAIT).await {
                Some(Ev::PubAck) => return,
                Some(Ev::Closed(e)) => panic!("closed while waiting for PUBACK: {e}"),
                Some(_) => continue,
                None => panic!("no PUBACK in time"),
            }
        }
    }

    /// Waits for the PUBCOMP of a QoS 2 publish.
    pub async fn expect_pubcomp(&mut self) {
        loop {
            match self.next_event(WAIT).await {
                Some(Ev::PubComp) => return,
                Some(Ev::Closed(e)) => panic!("closed while waiting for PUBCOMP: {e}"),
                Some(_) => continue,
                None => panic!("no PUBCOMP in time"),
            }
        }
    }

    /// Waits until the broker closes this connection; returns what the client saw.
    pub async fn expect_closed(&mut self) -> String {
        loop {
            match self.next_event(WAIT).await {
                Some(Ev::Closed(e)) => return e,
                Some(_) => continue,
                None => panic!("connection was not closed"),
            }
        }
    }

    /// Clean DISCONNECT, then stop the event loop.
    pub async fn disconnect(mut self) {
        if let Some(c) = &self.v3 {
            c.disconnect().await.unwrap();
        } else {
            self.v5.as_ref().unwrap().disconnect().await.unwrap();
        }
        let _ = self.next_event(Duration::from_secs(2)).await;
        self.task.abort();
    }

    /// Drops the socket without DISCONNECT, as a board losing power would.
    pub fn kill(self) {
        self.task.abort();
    }
}
