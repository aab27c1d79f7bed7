//! Per-connection delivery: one task on the connection's worker thread moves messages
//! from the router's `Send` channel into the connection's (`Rc`-based) `MqttSink`, and
//! cleans up when the connection ends.
//!
//! QoS 1 sends use the sink's non-blocking form: the task waits only for the client's
//! in-flight window (`sink.ready()`), never for each PUBACK, so one slow acknowledgement
//! does not serialise delivery. A subscriber that stops reading fills its window, then
//! its bounded queue, and the router starts dropping (and counting) its messages.
//!
//! QoS 2 sends are serialised (PUBLISH → PUBREC → PUBREL → PUBCOMP before the next
//! message): ntex-mqtt 9.0 keeps one release slot per connection and requires
//! acknowledgements in send order, so two QoS 2 flows at once would break it.
//!
//! Messages of a persistent session carry a sequence number: their packet id is derived
//! from it (stable across reconnects and restarts, so a DUP resend reuses the id), and the
//! PUBACK / PUBCOMP is reported to the router, which then forgets the message.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ntex_mqtt::{QoS, v3, v5};
use tokio::sync::{Notify, mpsc};

use crate::router::{ConnId, Outgoing, Registration, Router};

/// What every connection handler needs, shared by all workers (hence `Send`).
#[derive(Clone)]
pub struct Shared {
    pub router: Router,
    /// Messages queued per subscriber before the router drops instead of buffering.
    pub queue_capacity: usize,
    /// Messages owed per persistent session (the router enforces it; the channel of a
    /// persistent session has this much room on top of `queue_capacity`, so a resume can
    /// hand over everything at once).
    pub session_queue_capacity: usize,
    /// Cap on session expiry intervals, announced to MQTT 5 clients that ask for more.
    pub max_session_expiry: u32,
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
    pub fn new(router: Router, queue_capacity: usize, limits: crate::router::Limits) -> Self {
        Self {
            router,
            max_session_expiry: limits.max_session_expiry,
            queue_capacity: queue_capacity.max(1),
            session_queue_capacity: limits.session_queue_capacity.max(1),
            auto_ids: Arc::default(),
        }
    }

    pub fn generated_client_id(&self) -> String {
        format!(
            "lentera-auto-{}",
            self.auto_ids.fetch_add(1, Ordering::Relaxed) + 1
        )
    }

    /// Registers an accepted connection with the router (taking over its client id's
    /// session, or starting one) and starts its delivery task on the current worker
    /// thread. Returns the session state and whether a session was resumed.
    pub fn register(
        &self,
        conn: Connection,
        sink: Sink,
        disconnected: impl Future<Output = ()> + 'static,
    ) -> (ConnState, bool) {
        let Connection {
            client_id,
            will,
            clean_start,
            expiry,
        } = conn;
        // tokio's bounded channel allocates in blocks as it fills, so a large capacity
        // costs nothing until a backlog actually builds up.
        // Persistent: room for the whole owed queue plus QoS 0 traffic alongside it.
        let cap = if expiry > 0 {
            self.queue_capacity + self.session_queue_capacity
        } else {
            self.queue_capacity
        };
        let (tx, rx) = mpsc::channel(cap);
        let kick = Arc::new(Notify::new());
        let connected = self.router.connect(Registration {
            client_id: client_id.clone(),
            tx,
            kick: kick.clone(),
            will,
            clean_start,
            expiry,
        });
        let id = connected.id;
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
        let state = ConnState {
            id,
            client_id,
            router: self.router.clone(),
        };
        (state, connected.session_present)
    }
}

/// What CONNECT asked for, protocol-independent.
pub struct Connection {
    pub client_id: String,
    pub will: Option<crate::router::Message>,
    pub clean_start: bool,
    /// Session expiry interval in seconds (0 = the session ends with the connection).
    pub expiry: u32,
}

/// Persistent-session messages sent at QoS 1 and not yet acknowledged, in send order:
/// (packet id, sequence number).
type Pending = Rc<RefCell<VecDeque<(u16, u64)>>>;

/// The packet id of owed message `seq`: 1..=65535, stable for the message.
fn packet_id(seq: u64) -> u16 {
    ((seq - 1) % 65_535 + 1) as u16
}

/// The protocol-specific sink of one connection.
pub enum Sink {
    V3(v3::MqttSink),
    V5(v5::MqttSink),
}

impl Sink {
    /// QoS 1 non-blocking sends require an acknowledgement callback: it reports PUBACKs
    /// of persistent-session messages to the router. (`disconnected == true` calls come
    /// for messages that were never acknowledged; those stay owed.)
    fn init(&self, router: Router, client_id: String, pending: Pending) {
        let on_ack = move |id: u16, disconnected: bool| {
            if disconnected {
                return;
            }
            let mut p = pending.borrow_mut();
            // PUBACKs arrive in send order (ntex-mqtt enforces it), so the front matches.
            if p.front().is_some_and(|f| f.0 == id) {
                let (_, seq) = p.pop_front().unwrap_or_default();
                drop(p);
                router.ack(&client_id, seq);
            }
        };
        match self {
            Sink::V3(s) => s.publish_ack_cb(move |id, d| on_ack(id.get(), d)),
            Sink::V5(s) => s.publish_ack_cb(move |ack, d| on_ack(ack.packet_id.get(), d)),
        }
    }

    async fn ready(&self) -> bool {
        match self {
            Sink::V3(s) => s.ready().await,
            Sink::V5(s) => s.ready().await,
        }
    }

    /// Writes one PUBLISH. QoS 0/1 wait only for room in the client's in-flight window;
    /// QoS 2 waits for the whole exchange. Returns the sequence number to acknowledge
    /// now (QoS 2 completed), if any.
    async fn send(&self, o: Outgoing, pending: &Pending) -> Result<Option<u64>, ()> {
        let Outgoing { msg: m, seq, dup } = o;
        if m.qos != QoS::AtMostOnce && !self.ready().await {
            return Err(());
        }
        let id = seq.map(packet_id);
        let log = |e| tracing::debug!(error = ?e, "publish to subscriber failed");
        macro_rules! send {
            ($b:expr) => {{
                let mut b = $b.dup(dup);
                if let Some(id) = id {
                    b = b.packet_id(id);
                }
                match m.qos {
                    QoS::AtMostOnce => b.send_at_most_once(m.payload).map_err(log)?,
                    QoS::AtLeastOnce => {
                        b.send_at_least_once_no_block(m.payload).map_err(log)?;
                        if let (Some(id), Some(seq)) = (id, seq) {
                            pending.borrow_mut().push_back((id, seq));
                        }
                    }
                    QoS::ExactlyOnce => {
                        let received = b.send_exactly_once(m.payload).await.map_err(log)?;
                        received.release().await.map_err(log)?;
                        return Ok(seq);
                    }
                }
            }};
        }
        match self {
            Sink::V3(s) => {
                let mut b = s.publish(m.topic);
                if m.retain {
                    b = b.retain();
                }
                send!(b)
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
                send!(b)
            }
        }
        Ok(None)
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
    pub rx: mpsc::Receiver<Outgoing>,
    pub kick: Arc<Notify>,
    pub sink: Sink,
}

impl Delivery {
    /// Runs until the connection is closed, then unregisters it and publishes its will
    /// unless it disconnected cleanly or was taken over.
    pub async fn run(mut self, disconnected: impl Future<Output = ()>) {
        let metrics = self.router.metrics().clone();
        metrics.connections.inc();
        let pending = Pending::default();
        self.sink
            .init(self.router.clone(), self.client_id.clone(), pending.clone());
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
            // takeover or a disconnect from being handled. (A persistent session's
            // message is not lost then: it stays owed.)
            let lost = u64::from(m.seq.is_none());
            tokio::select! {
                biased;
                () = &mut disconnected => {
                    metrics.dropped_disconnected.add(lost);
                    break;
                }
                () = self.kick.notified() => {
                    metrics.dropped_disconnected.add(lost);
                    self.taken_over();
                }
                sent = self.sink.send(m, &pending) => match sent {
                    Ok(done) => {
                        metrics.delivered.inc();
                        if let Some(seq) = done {
                            self.router.ack(&self.client_id, seq);
                        }
                    }
                    Err(()) => metrics.dropped_send_error.inc(),
                },
            }
        }
        // Whatever was still queued will not be delivered on this connection; messages
        // of a persistent session stay owed and go out again on the next one.
        self.rx.close();
        while let Ok(o) = self.rx.try_recv() {
            if o.seq.is_none() {
                metrics.dropped_disconnected.inc();
            }
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
