//! [`Stream::start_mqtt`]: a board that publishes straight to the broker, with no clock.
//!
//! It behaves as PubSubClient-style firmware with QoS 1 does: one publish at a time
//! (`{"seq":N}` on `lentera/{device}/telemetry`, no `ts`), the next only after the
//! PUBACK. When the connection drops, the client reconnects (persistent session, same
//! client id) and the MQTT client library retransmits the unacknowledged publish; the
//! board itself never publishes a reading twice. Only PUBACKs count as sent; a reading
//! not acknowledged within [`GIVE_UP`] fails the stream.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::readings::{Attempt, Log, Stream};

const GIVE_UP: Duration = Duration::from_secs(40);

impl Stream {
    /// `count` readings for `device`, `rate` per second, published to the broker at
    /// `addr` (`host:port`); see the module docs. It logs in as a device does: client
    /// id and user name are the device id, the password its token.
    pub fn start_mqtt(addr: String, device: &str, token: &str, count: u64, rate: f64) -> Stream {
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        let mut o = MqttOptions::new(device, host, port.parse().expect("a port"));
        o.set_credentials(device, token);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_clean_session(false);
        let (client, mut eventloop) = AsyncClient::new(o, 16);
        let (acks, mut acked) = mpsc::unbounded_channel();
        let poller = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::PubAck(_))) => {
                        if acks.send(()).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let accepted = Arc::default();
        let log = Arc::new(Mutex::new(Log::default()));
        let task = {
            let (accepted, log) = (Arc::clone(&accepted), log.clone());
            let topic = format!("lentera/{device}/telemetry");
            tokio::spawn(async move {
                let t0 = Instant::now();
                for seq in 0..count {
                    tokio::time::sleep_until(t0 + Duration::from_secs_f64(seq as f64 / rate)).await;
                    let started = Instant::now();
                    let payload = json!({ "seq": seq }).to_string();
                    let attempt = match client
                        .publish(&topic, QoS::AtLeastOnce, false, payload)
                        .await
                    {
                        Err(e) => Attempt::NoAnswer {
                            connect: false,
                            error: e.to_string(),
                        },
                        Ok(()) => match tokio::time::timeout(GIVE_UP, acked.recv()).await {
                            Ok(Some(())) => Attempt::Accepted,
                            _ => Attempt::NoAnswer {
                                connect: false,
                                error: format!("no PUBACK within {GIVE_UP:?}"),
                            },
                        },
                    };
                    let ok = matches!(attempt, Attempt::Accepted);
                    log.lock()
                        .unwrap()
                        .attempts
                        .push((seq, started, Instant::now(), attempt));
                    if !ok {
                        break;
                    }
                    let a: &std::sync::atomic::AtomicUsize = &accepted;
                    a.fetch_add(1, Ordering::Relaxed);
                }
                let _ = client.disconnect().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                poller.abort();
            })
        };
        Stream {
            device: device.to_owned(),
            count,
            accepted,
            waiting: Arc::default(),
            log,
            url: Arc::new(Mutex::new(addr)),
            tasks: vec![task],
        }
    }
}
