//! Per-connection delivery: one task on the connection's worker thread moves messages
//! from the router's `Send` channel into the connection's (`Rc`-based) `MqttSink`, and
//! cleans up when the connection ends.
//!
//! QoS 1 sends use the sink's non-blocking form: the task waits only for the client's
//! in-flight window (`sink.ready()`), never for each PUBACK, so one slow acknowledgement
//! does not serialise delivery. A subscriber that stops reading fills its window, then
//! its bounded queue, and the router starts dropping (and counting) its messages.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ntex_mqtt::{QoS, v3, v5};
use tokio::sync::{Notify, mpsc};

use crate::router::{ConnId, Message, Registration, Router};

/// What every connection handler needs, shared by all workers (hence `Send`).
#[derive(Clone)]
pub struct Shared {
    pub router: Router,
    /// Messages queued per subscriber before the router drops instead of buffering.
    pub queue_capacity: usize,
    /// Source of ids for clients that connect without one.
    auto_ids: Arc<AtomicU64>,
}

/// The per-connection state ntex-mqtt keeps in its `Session`.
pub struct ConnState {
    pub id: ConnId,
    pub client_id: String,
    pub router: Router,
}

impl Shared {
    pub fn new(router: Router, queue_capacity: usize) -> Self {
        Self {
            router,
            queue_capacity: queue_capacity.max(1),
            auto_ids: Arc::default(),
        }
    }

    pub fn generated_client_id(&self) -> String {
        format!(
            "lentera-auto-{}",
            self.auto_ids.fetch_add(1, Ordering::Relaxed) + 1
        )
    }

    /// Registers an accepted connection with the router (taking over its client id) and
    /// starts its delivery task on the current worker thread.
    pub fn register(
        &self,
        client_id: String,
        will: Option<Message>,
        sink: Sink,
        disconnected: impl Future<Output = ()> + 'static,
    ) -> ConnState {
        let (tx, rx) = mpsc::channel(self.queue_capacity);
        let kick = Arc::new(Notify::new());
        let id = self.router.connect(Registration {
            client_id: client_id.clone(),
            tx,
            kick: kick.clone(),
            will,
        });
        let delivery = Delivery {
            conn: id,
            client_id: client_id.clone(),
            router: self.router.clone(),
            rx,
            kick,
            sink,
        };
        // Dropping the handle detaches the task; it ends with the connection.
        drop(ntex_rt::spawn(delivery.run(disconnected)));
        ConnState {
            id,
            client_id,
            router: self.router.clone(),
        }
    }
}

/// The protocol-specific sink of one connection.
pub enum Sink {
    V3(v3::MqttSink),
    V5(v5::MqttSink),
}

impl Sink {
    /// QoS 1 non-blocking sends require an acknowledgement callback; PUBACKs need no
    /// action from us (there is no persistent outbound queue to trim yet).
    fn init(&self) {
        match self {
            Sink::V3(s) => s.publish_ack_cb(|_, _| {}),
            Sink::V5(s) => s.publish_ack_cb(|_, _| {}),
        }
    }

    async fn ready(&self) -> bool {
        match self {
            Sink::V3(s) => s.ready().await,
            Sink::V5(s) => s.ready().await,
        }
    }

    /// Writes one PUBLISH. Waits only for room in the client's in-flight window.
    async fn send(&self, m: Message) -> Result<(), ()> {
        let qos1 = m.qos != QoS::AtMostOnce;
        if qos1 && !self.ready().await {
            return Err(());
        }
        let result = match self {
            Sink::V3(s) => {
                let mut b = s.publish(m.topic);
                if m.retain {
                    b = b.retain();
                }
                if qos1 {
                    b.send_at_least_once_no_block(m.payload)
                } else {
                    b.send_at_most_once(m.payload)
                }
            }
            Sink::V5(s) => {
                let mut b = s.publish(m.topic).retain(m.retain);
                if let Some(props) = m.properties {
                    b = b.properties(|p| {
                        p.user_properties.clone_from(&props.user_properties);
                        p.content_type.clone_from(&props.content_type);
                        p.response_topic.clone_from(&props.response_topic);
                        p.correlation_data.clone_from(&props.correlation_data);
                        p.is_utf8_payload = props.is_utf8_payload;
                    });
                }
                if qos1 {
                    b.send_at_least_once_no_block(m.payload)
                } else {
                    b.send_at_most_once(m.payload)
                }
            }
        };
        result.map_err(|e| tracing::debug!(error = ?e, "publish to subscriber failed"))
    }

    /// Closes the connection because its client id connected again.
    fn close_taken_over(&self) {
        match self {
            Sink::V3(s) => s.close(),
            Sink::V5(s) => s.close_with_reason(v5::codec::Disconnect {
                reason_code: v5::codec::DisconnectReasonCode::SessionTakenOver,
                ..Default::default()
            }),
        }
    }
}

/// Everything the delivery task of one connection owns.
pub struct Delivery {
    pub conn: ConnId,
    pub client_id: String,
    pub router: Router,
    pub rx: mpsc::Receiver<Message>,
    pub kick: Arc<Notify>,
    pub sink: Sink,
}

impl Delivery {
    /// Runs until the connection is closed, then unregisters it and publishes its will
    /// unless it disconnected cleanly or was taken over.
    pub async fn run(mut self, disconnected: impl Future<Output = ()>) {
        let metrics = self.router.metrics().clone();
        metrics.connections.inc();
        self.sink.init();
        let mut disconnected = pin!(disconnected);
        let mut queue_open = true;
        loop {
            // `biased`: no RNG needed (this runs on ntex, not tokio) and a closed or
            // replaced connection is noticed before more work is attempted.
            let next = tokio::select! {
                biased;
                () = &mut disconnected => break,
                () = self.kick.notified() => {
                    self.taken_over();
                    continue;
                }
                m = self.rx.recv(), if queue_open => m,
            };
            let Some(m) = next else {
                // The router dropped our sender: we were taken over. Wait for the socket
                // to close so the gauge and the log stay truthful.
                queue_open = false;
                continue;
            };
            // Waiting for room in a stalled client's in-flight window must not keep a
            // takeover or a disconnect from being handled.
            tokio::select! {
                biased;
                () = &mut disconnected => {
                    metrics.dropped_disconnected.inc();
                    break;
                }
                () = self.kick.notified() => {
                    metrics.dropped_disconnected.inc();
                    self.taken_over();
                }
                sent = self.sink.send(m) => match sent {
                    Ok(()) => metrics.delivered.inc(),
                    Err(()) => metrics.dropped_send_error.inc(),
                },
            }
        }
        // Whatever was still queued will not be delivered.
        self.rx.close();
        while self.rx.try_recv().is_ok() {
            metrics.dropped_disconnected.inc();
        }
        metrics.connections.dec();
        if let Some(will) = self.router.disconnect(self.conn) {
            tracing::info!(client_id = %self.client_id, topic = %will.topic, "publishing last will");
            metrics.wills.inc();
            self.router.publish(Some(self.conn), will);
        }
        tracing::debug!(client_id = %self.client_id, "connection closed");
    }

    fn taken_over(&self) {
        tracing::info!(client_id = %self.client_id, "session taken over");
        self.sink.close_taken_over();
    }
}
