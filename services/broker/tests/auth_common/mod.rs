//! Shared by `auth.rs` and `sys.rs`: a broker with the test auth file, clients that
//! report the exact CONNACK / PUBACK / SUBACK reason codes, and the Mosquitto command
//! line clients (`mosquitto_pub`, `mosquitto_sub`) as a second, independent client.

#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use lentera_broker::auth::password;
use lentera_broker::settings::Settings;
use tokio::sync::mpsc;

use crate::common::{Broker, WAIT};

pub const GH1_PASSWORD: &str = "gh-1 secret";
pub const LAMP_PASSWORD: &str = "lamp secret";
pub const OPS_PASSWORD: &str = "ops secret";

/// Users: `gh-1` (a board: its own `lentera/%c/…` only), `lamp` (the lamp service:
/// commands to every board, their telemetry), `ops` (`users/%u/#`, `$SYS/#`).
/// Anonymous (when allowed): `$SYS/#` and `public/#` only.
pub fn auth_file_text() -> String {
    // Few iterations: debug builds verify slowly and the format is what is tested here.
    let h = |pw: &str| password::hash_with(pw.as_bytes(), 1000);
    format!(
        r#"
[all_users]
publish = ["lentera/%c/#"]
subscribe = ["lentera/%c/lamp/set"]

[anonymous]
publish = ["public/#"]
subscribe = ["$SYS/#", "public/#"]

[[users]]
username = "gh-1"
password = "{}"

[[users]]
username = "lamp"
password = "{}"
publish = ["lentera/+/lamp/set"]
subscribe = ["lentera/+/telemetry", "lentera/+/lamp/state"]

[[users]]
username = "ops"
password = "{}"
publish = ["users/%u/#"]
subscribe = ["users/%u/#", "$SYS/#"]
"#,
        h(GH1_PASSWORD),
        h(LAMP_PASSWORD),
        h(OPS_PASSWORD)
    )
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("lentera-broker-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Settings of an in-memory broker on port 0 that reads `auth_file`.
pub fn settings_with_auth(auth_file: &Path, allow_anonymous: bool) -> Settings {
    let mut s = Settings::default();
    // The auth file's users as before identity (auth.open: no device registry).
    s.auth.open = true;
    s.broker.mqtt_addr = "127.0.0.1:0".into();
    s.broker.admin_addr = "127.0.0.1:0".into();
    s.broker.data_dir = PathBuf::new();
    s.broker.auth_file = Some(auth_file.to_owned());
    s.broker.allow_anonymous = allow_anonymous;
    s
}

/// A broker with the test auth file.
pub async fn broker_with_auth(allow_anonymous: bool) -> Broker {
    let dir = temp_dir("auth");
    let file = dir.join("auth.toml");
    std::fs::write(&file, auth_file_text()).unwrap();
    Broker::start_with(settings_with_auth(&file, allow_anonymous)).await
}

/// The value of one series in `/metrics` text (0 when absent).
pub fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

pub fn v3_opts(broker: &Broker, id: &str, creds: Option<(&str, &str)>) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", broker.mqtt.port());
    o.set_keep_alive(Duration::from_secs(10));
    if let Some((u, p)) = creds {
        o.set_credentials(u, p);
    }
    o
}

pub fn v5_opts(broker: &Broker, id: &str, creds: Option<(&str, &str)>) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", broker.mqtt.port());
    o.set_keep_alive(Duration::from_secs(10));
    if let Some((u, p)) = creds {
        o.set_credentials(u, p);
    }
    o
}

/// MQTT 3.1.1 CONNECT: `Ok` on CONNACK 0, else the refusal rumqttc reports.
pub async fn v3_connect_result(
    opts: rumqttc::MqttOptions,
) -> Result<(), rumqttc::ConnectReturnCode> {
    let (_c, mut el) = rumqttc::AsyncClient::new(opts, 8);
    let polled = tokio::time::timeout(WAIT, async {
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => continue,
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return Err(code),
                Err(e) => panic!("unexpected connection error: {e}"),
            }
        }
    });
    polled.await.expect("a CONNACK in time")
}

/// MQTT 5 CONNECT: `Ok` on success, else the CONNACK reason code.
pub async fn v5_connect_result(
    opts: rumqttc::v5::MqttOptions,
) -> Result<(), rumqttc::v5::mqttbytes::v5::ConnectReturnCode> {
    use rumqttc::v5::{ConnectionError, Event, mqttbytes::v5::Packet};
    let (_c, mut el) = rumqttc::v5::AsyncClient::new(opts, 8);
    let polled = tokio::time::timeout(WAIT, async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => continue,
                Err(ConnectionError::ConnectionRefused(code)) => return Err(code),
                Err(e) => panic!("unexpected connection error: {e}"),
            }
        }
    });
    polled.await.expect("a CONNACK in time")
}

/// What an MQTT 5 client saw, with the broker's exact reason codes.
#[derive(Debug)]
pub enum V5Ev {
    /// Reason code and reason string.
    PubAck(u8, Option<String>),
    SubAck(Vec<u8>),
    Publish(String, Vec<u8>),
    Closed(String),
}

/// An MQTT 5 client whose event loop reports raw reason codes.
pub struct V5 {
    pub client: rumqttc::v5::AsyncClient,
    events: mpsc::UnboundedReceiver<V5Ev>,
}

impl V5 {
    pub async fn connect(opts: rumqttc::v5::MqttOptions) -> V5 {
        use rumqttc::v5::{Event, mqttbytes::v5::Packet};
        let (client, mut el) = rumqttc::v5::AsyncClient::new(opts, 64);
        let (tx, events) = mpsc::unbounded_channel();
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            loop {
                let ev = match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(r) = ready_tx.take() {
                            let _ = r.send(());
                        }
                        continue;
                    }
                    Ok(Event::Incoming(Packet::PubAck(a))) => V5Ev::PubAck(
                        puback_code(a.reason),
                        a.properties.and_then(|p| p.reason_string),
                    ),
                    Ok(Event::Incoming(Packet::SubAck(s))) => {
                        V5Ev::SubAck(s.return_codes.iter().map(|c| suback_code(*c)).collect())
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => V5Ev::Publish(
                        String::from_utf8(p.topic.to_vec()).unwrap(),
                        p.payload.to_vec(),
                    ),
                    Ok(_) => continue,
                    Err(e) => {
                        let _ = tx.send(V5Ev::Closed(e.to_string()));
                        return;
                    }
                };
                if tx.send(ev).is_err() {
                    return;
                }
            }
        });
        tokio::time::timeout(WAIT, ready)
            .await
            .expect("CONNACK in time")
            .expect("connected");
        V5 { client, events }
    }

    pub async fn next(&mut self) -> V5Ev {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("an event in time")
            .expect("event loop running")
    }

    /// SUBSCRIBE one filter at QoS 1; the SUBACK reason code.
    pub async fn subscribe(&mut self, filter: &str) -> u8 {
        use rumqttc::v5::mqttbytes::QoS;
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        loop {
            match self.next().await {
                V5Ev::SubAck(codes) => return codes[0],
                V5Ev::Closed(e) => panic!("closed: {e}"),
                _ => continue,
            }
        }
    }

    /// PUBLISH at QoS 1; the PUBACK reason code and reason string.
    pub async fn publish_qos1(&mut self, topic: &str, payload: &[u8]) -> (u8, Option<String>) {
        use rumqttc::v5::mqttbytes::QoS;
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
            .await
            .unwrap();
        loop {
            match self.next().await {
                V5Ev::PubAck(code, why) => return (code, why),
                V5Ev::Closed(e) => panic!("closed: {e}"),
                _ => continue,
            }
        }
    }

    /// The next PUBLISH within `within`, if any.
    pub async fn try_publish(&mut self, within: Duration) -> Option<(String, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.events.recv()).await {
                Ok(Some(V5Ev::Publish(t, p))) => return Some((t, p)),
                Ok(Some(V5Ev::Closed(e))) => panic!("closed: {e}"),
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

fn suback_code(c: rumqttc::v5::mqttbytes::v5::SubscribeReasonCode) -> u8 {
    use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode as S;
    match c {
        S::Success(q) => q as u8,
        S::Failure | S::Unspecified => 0x80,
        S::ImplementationSpecific => 0x83,
        S::NotAuthorized => 0x87,
        S::TopicFilterInvalid => 0x8F,
        S::PkidInUse => 0x91,
        S::QuotaExceeded => 0x97,
        S::SharedSubscriptionsNotSupported => 0x9E,
        S::SubscriptionIdNotSupported => 0xA1,
        S::WildcardSubscriptionsNotSupported => 0xA2,
    }
}

fn puback_code(r: rumqttc::v5::mqttbytes::v5::PubAckReason) -> u8 {
    use rumqttc::v5::mqttbytes::v5::PubAckReason as R;
    match r {
        R::Success => 0x00,
        R::NoMatchingSubscribers => 0x10,
        R::UnspecifiedError => 0x80,
        R::ImplementationSpecificError => 0x83,
        R::NotAuthorized => 0x87,
        R::TopicNameInvalid => 0x90,
        R::PacketIdentifierInUse => 0x91,
        R::QuotaExceeded => 0x97,
        R::PayloadFormatInvalid => 0x99,
    }
}

/// Path of a Mosquitto command line tool, or `None` (after saying loudly that the test
/// is skipped) when it is not installed — unless `LENTERA_REQUIRE_MOSQUITTO` is set, in
/// which case a missing tool fails the test.
pub fn mosquitto_tool(tool: &str, test: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file());
    if found.is_none() {
        let required = std::env::var_os("LENTERA_REQUIRE_MOSQUITTO")
            .is_some_and(|v| !v.is_empty() && v != "0");
        assert!(
            !required,
            "{test} needs `{tool}` and LENTERA_REQUIRE_MOSQUITTO is set \
             (apt-get install -y mosquitto-clients)"
        );
        eprintln!(
            "\n*** SKIPPING {test}: `{tool}` is not installed (apt-get install -y \
             mosquitto-clients); this test did NOT run. Set LENTERA_REQUIRE_MOSQUITTO=1 to \
             make this a failure.\n"
        );
    }
    found
}

/// Runs a Mosquitto client to completion off the async runtime.
pub async fn run_tool(bin: &Path, args: Vec<String>) -> Output {
    let bin = bin.to_owned();
    tokio::task::spawn_blocking(move || {
        Command::new(&bin)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()))
    })
    .await
    .unwrap()
}

/// `mosquitto_sub … -C count -W secs` started now; resolves to its output.
pub fn spawn_tool(bin: &Path, args: Vec<String>) -> tokio::task::JoinHandle<Output> {
    let bin = bin.to_owned();
    tokio::task::spawn_blocking(move || {
        Command::new(&bin)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()))
    })
}

/// `-h 127.0.0.1 -p PORT` plus the rest.
pub fn args(broker: &Broker, rest: &[&str]) -> Vec<String> {
    let port = broker.mqtt.port().to_string();
    ["-h", "127.0.0.1", "-p", port.as_str()]
        .iter()
        .chain(rest)
        .map(|s| s.to_string())
        .collect()
}
