//! Test helpers: the real lamp controller in-process on OS-chosen ports, and an MQTT
//! client that records the commands it sees. The broker is `lentera_tests::TestBroker`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lentera_lamp::Settings;
use lentera_lamp::startup::Application;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::sync::mpsc;

static SEQ: AtomicU32 = AtomicU32::new(0);

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Fast settings: one-second tick and resend, short settle.
pub fn settings(mqtt_port: u16) -> Settings {
    let mut s = Settings::default();
    s.mqtt.port = mqtt_port;
    s.mqtt.client_id = Some(unique("lamp"));
    s.lamp.admin_addr = "127.0.0.1:0".into();
    s.lamp.tick_secs = 1;
    s.lamp.resend_secs = 1;
    s.lamp.settle_ms = 300;
    s
}

/// The real controller on its own runtime thread, so stopping it ends its MQTT task too.
pub struct RunningApp {
    pub admin: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl RunningApp {
    pub fn spawn(settings: Settings) -> RunningApp {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let app = Application::build(settings)?;
                addr_tx.send(app.admin_addr()).unwrap();
                app.run_until_stopped(async {
                    let _ = stop_rx.await;
                })
                .await
            })
        });
        let admin = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("lamp did not bind its admin port");
        RunningApp {
            admin,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn stop(mut self) {
        self.stop.take().map(|s| s.send(()));
        self.thread.take().unwrap().join().unwrap().unwrap();
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://{}{path}", self.admin))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            if self.get("/readyz").await.0 == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("lamp never became ready");
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A "board": publishes as a device would and records every `lamp/set` it receives as
/// `(device, payload)`.
pub struct Board {
    pub client: AsyncClient,
    pub commands: mpsc::UnboundedReceiver<(String, String)>,
}

impl Board {
    pub async fn connect(port: u16) -> Board {
        let mut o = MqttOptions::new(unique("board"), "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(o, 100);
        let (tx, commands) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let device = p.topic.split('/').nth(1).unwrap_or_default().to_owned();
                        let _ = tx.send((device, String::from_utf8_lossy(&p.payload).into_owned()));
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        if let Some(s) = subscribed_tx.take() {
                            let _ = s.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        client
            .subscribe("lentera/+/lamp/set", QoS::AtLeastOnce)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), subscribed_rx)
            .await
            .expect("board never subscribed")
            .unwrap();
        Board { client, commands }
    }

    pub async fn publish(&self, topic: &str, payload: &str, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .unwrap();
    }

    /// The next command, or a panic after `secs`.
    pub async fn next_command(&mut self, secs: u64) -> (String, String) {
        tokio::time::timeout(Duration::from_secs(secs), self.commands.recv())
            .await
            .expect("no lamp command arrived in time")
            .unwrap()
    }

    /// True when no command arrives within `ms`.
    pub async fn quiet_for(&mut self, ms: u64) -> bool {
        tokio::time::timeout(Duration::from_millis(ms), self.commands.recv())
            .await
            .is_err()
    }
}
