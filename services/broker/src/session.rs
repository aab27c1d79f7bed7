//! Per-connection delivery: one task on the connection's worker thread moves messages
//! from the connection's [`Inbox`] (the receiving end of its `Send` queue, see
//! `outbox.rs`) into its (`Rc`-based) `MqttSink`; a second, small task watches for the
//! end of the connection or a takeover and cleans up (unregister, Last Will).
//!
//! The queue and the delivery task exist only once the connection has something to
//! receive — its first SUBSCRIBE, or a resumed session with subscriptions or owed
//! messages — so an idle connection (a device that only publishes) pays for neither.
//!
//! QoS 1 sends use the sink's non-blocking form: the task waits only for the client's
//! in-flight window (`sink.ready()`), never for each PUBACK, so one slow acknowledgement
//! does not serialise delivery. A subscriber that stops reading fills its window, then
//! its queue up to the bounds in `outbox.rs`; nothing ever waits for it but its own task.
//!
//! QoS 2 sends are serialised (PUBLISH → PUBREC → PUBREL → PUBCOMP before the next
//! message): ntex-mqtt 9.0 keeps one release slot per connection and requires
//! acknowledgements in send order, so two QoS 2 flows at once would break it.
//!
//! Messages of a persistent session carry a sequence number: their packet id is derived
//! from it (stable across reconnects and restarts, so a DUP resend reuses the id), and the
//! PUBACK / PUBCOMP is reported to the router, which then forgets the message. Those of a
//! clean session are counted off their bound when acknowledged.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ntex_mqtt::{QoS, v3, v5};
use tokio::sync::Notify;

use crate::outbox::{self, Bounds, Counts, Inbox, Outbox};
use crate::router::{ConnId, Outgoing, Registration, Router};

/// What every connection handler needs, shared by all workers (hence `Send`).
#[derive(Clone)]
pub struct Shared {
    pub router: Router,
    /// Per-connection queue bounds (`queue_capacity`, `session_queue_capacity`).
    pub bounds: Bounds,
    /// Cap on session expiry intervals, announced to MQTT 5 clients that ask for more.
    pub max_session_expiry: u32,
    /// Source of ids for clients that connect without one.
    auto_ids: Arc<AtomicU64>,
    /// `max_connections` (0 = none).
    max_connections: usize,
    /// Decides at CONNECT who may connect and with which rights (`auth.rs`).
    pub auth: Arc<dyn crate::auth::Authenticator>,
}

/// The per-connection state ntex-mqtt keeps in its `Session`.
pub struct ConnState {
    pub id: ConnId,
    pub client_id: String,
    pub router: Router,
    /// What this connection may publish and subscribe to.
    pub acl: Arc<dyn crate::auth::Authorizer>,
    /// MQTT 5 Request Problem Information: when false, acknowledgements carry no reason
    /// strings [MQTT-3.1.2-29]. Always true for MQTT 3.1.1 (nothing to send anyway).
    pub problem_info: bool,
    /// Until the connection has a queue and delivery task: what starting them takes.
    idle: RefCell<Option<(Sink, Bounds)>>,
}

impl ConnState {
    /// Gives this connection its queue and delivery task unless it has them; called
    /// before a SUBSCRIBE is applied, so retained messages have somewhere to go.
    pub fn ensure_delivery(&self) {
        let Some((sink, bounds)) = self.idle.borrow_mut().take() else {
            return;
        };
        let (router, client_id) = (self.router.clone(), self.client_id.clone());
        self.router.attach(self.id, move || {
            start_delivery(sink, router, client_id, bounds)
        });
    }
}

impl Shared {
    pub fn new(
        router: Router,
        queue_capacity: usize,
        limits: crate::router::Limits,
        auth: Arc<dyn crate::auth::Authenticator>,
    ) -> Self {
        Self {
            router,
            max_session_expiry: limits.max_session_expiry,
            bounds: Bounds {
                qos0: queue_capacity.max(1),
                untracked: limits.session_queue_capacity.max(1),
            },
            auto_ids: Arc::default(),
            auth,
            max_connections: 0,
        }
    }

    /// Refuse CONNECT while `max` connections are open (0 = no limit).
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// Whether a new connection would exceed `max_connections`. Checked at CONNECT, so
    /// CONNECTs being handled at the same instant may overshoot by their number.
    pub fn at_connection_limit(&self) -> bool {
        self.max_connections > 0
            && self.router.metrics().connections.get() >= self.max_connections as i64
    }

    pub fn generated_client_id(&self) -> String {
        format!(
            "lentera-auto-{}",
            self.auto_ids.fetch_add(1, Ordering::Relaxed) + 1
        )
    }

    /// Registers an accepted connection with the router (taking over its client id's
    /// session, or starting one) and starts its watcher task — and its delivery task if
    /// a resumed session has something for it — on the current worker thread. Returns
    /// the session state and whether a session was resumed.
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
            acl,
        } = conn;
        let kick = Arc::new(Notify::new());
        let started = Cell::new(false);
        let connected = self.router.connect(
            Registration {
                client_id: client_id.clone(),
                kick: kick.clone(),
                will,
                clean_start,
                expiry,
            },
            || {
                started.set(true);
                start_delivery(
                    sink.clone(),
                    self.router.clone(),
                    client_id.clone(),
                    self.bounds,
                )
            },
        );
        let id = connected.id;
        self.router.metrics().connections.inc();
        let watch = Watch {
            conn: id,
            client_id: client_id.clone(),
            router: self.router.clone(),
            kick,
            closing: self.router.closing(),
            sink: sink.clone(),
        };
        // Dropping the handle detaches the task; it ends with the connection.
        drop(ntex_rt::spawn(watch.run(disconnected)));
        let state = ConnState {
            id,
            client_id,
            router: self.router.clone(),
            acl,
            problem_info: true,
            idle: RefCell::new((!started.get()).then_some((sink, self.bounds))),
        };
        (state, connected.session_present)
    }
}

/// Creates a connection's queue and spawns its delivery task on the current thread.
fn start_delivery(sink: Sink, router: Router, client_id: String, bounds: Bounds) -> Outbox {
    let (outbox, inbox) = outbox::channel(bounds, router.pressure().clone());
    let delivery = Delivery {
        client_id,
        router,
        inbox,
        sink,
    };
    // Detached: it ends when the router drops the queue's sending end.
    drop(ntex_rt::spawn(delivery.run()));
    outbox
}

/// What CONNECT asked for, protocol-independent.
pub struct Connection {
    pub client_id: String,
    pub will: Option<crate::router::Message>,
    pub clean_start: bool,
    /// Session expiry interval in seconds (0 = the session ends with the connection).
    pub expiry: u32,
    /// The rights the authenticator granted.
    pub acl: Arc<dyn crate::auth::Authorizer>,
}

/// Persistent-session messages sent at QoS 1 and not yet acknowledged, in send order:
/// (packet id, sequence number).
type Pending = Rc<RefCell<VecDeque<(u16, u64)>>>;

/// The packet id of owed message `seq`: 1..=65535, stable for the message.
fn packet_id(seq: u64) -> u16 {
    ((seq - 1) % 65_535 + 1) as u16
}

/// The protocol-specific sink of one connection.
#[derive(Clone)]
pub enum Sink {
    V3(v3::MqttSink),
    V5(v5::MqttSink),
}

impl Sink {
    /// QoS 1 non-blocking sends require an acknowledgement callback: it reports PUBACKs
    /// of persistent-session messages to the router, and counts those of a clean
    /// session off its bound. (`disconnected == true` calls come for messages that were
    /// never acknowledged; a persistent session's stay owed.)
    fn init(&self, router: Router, client_id: String, pending: Pending, counts: Arc<Counts>) {
        let on_ack = move |id: u16, disconnected: bool| {
            if disconnected {
                return;
            }
            let mut p = pending.borrow_mut();
            // PUBACKs arrive in send order (ntex-mqtt enforces it), so the front matches;
            // an acknowledgement that is not a tracked message's is an untracked one's.
            if p.front().is_some_and(|f| f.0 == id) {
                let (_, seq) = p.pop_front().unwrap_or_default();
                drop(p);
                router.ack(&client_id, seq);
            } else {
                counts.untracked_done();
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

    fn is_open(&self) -> bool {
        match self {
            Sink::V3(s) => s.is_open(),
            Sink::V5(s) => s.is_open(),
        }
    }

    fn is_ready(&self) -> bool {
        match self {
            Sink::V3(s) => s.is_ready(),
            Sink::V5(s) => s.is_ready(),
        }
    }

    /// Writes one PUBLISH. QoS 0/1 wait only for room in the client's in-flight window;
    /// QoS 2 waits for the whole exchange. Returns `Some(seq)` when the exchange is
    /// complete (QoS 2) — `seq` being the owed message to acknowledge, if tracked.
    async fn send(&self, o: Outgoing, pending: &Pending) -> Result<Option<Option<u64>>, ()> {
        let Outgoing { msg: m, seq, dup } = o;
        if m.qos != QoS::AtMostOnce && !self.ready().await {
            return Err(());
        }
        // Expired before onward delivery started: not sent, and no longer owed
        // [MQTT-3.3.2-5] — complete as far as the bounds and the owed queue go.
        if m.expired(std::time::Instant::now()) {
            return Ok(Some(seq));
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
                        return Ok(Some(seq));
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
                    b = b.properties(|p| crate::v5::outgoing_properties(&props, p));
                }
                send!(b)
            }
        }
        Ok(None)
    }

    /// Closes the connection because the broker shuts down: MQTT 5 clients learn why
    /// (DISCONNECT 0x8B, Server shutting down); MQTT 3.1.1 has no server DISCONNECT.
    fn close_shutting_down(&self) {
        match self {
            Sink::V3(s) => s.close(),
            Sink::V5(s) => s.close_with_reason(v5::codec::Disconnect {
                reason_code: v5::codec::DisconnectReasonCode::ServerShuttingDown,
                reason_string: Some("the broker is shutting down".into()),
                ..Default::default()
            }),
        }
    }

    /// Closes the connection because its client id connected again.
    fn close_taken_over(&self) {
        match self {
            Sink::V3(s) => s.close(),
            Sink::V5(s) => s.close_with_reason(v5::codec::Disconnect {
                reason_code: v5::codec::DisconnectReasonCode::SessionTakenOver,
                reason_string: Some("another connection took over this client id".into()),
                ..Default::default()
            }),
        }
    }
}

/// Everything the delivery task of one connection owns.
struct Delivery {
    client_id: String,
    router: Router,
    inbox: Inbox,
    sink: Sink,
}

impl Delivery {
    /// Runs until the router drops the queue's sending end (the connection ended or
    /// was taken over), writing each message to the sink.
    async fn run(mut self) {
        let metrics = self.router.metrics().clone();
        let counts = self.inbox.counts.clone();
        let pending = Pending::default();
        self.sink.init(
            self.router.clone(),
            self.client_id.clone(),
            pending.clone(),
            counts.clone(),
        );
        while let Some(m) = self.inbox.rx.recv().await {
            let qos = m.msg.qos;
            let untracked = m.seq.is_none();
            if qos == QoS::AtMostOnce {
                counts.qos0_taken();
            } else {
                counts.taken();
            }
            // QoS 0 waits for the socket too (ntex's write backpressure), not only QoS ≥ 1
            // for the in-flight window: otherwise a subscriber slower than its publishers
            // grows this connection's write buffer without bound, where its QoS 0 queue
            // should drop the excess (seen: gigabytes, and a corrupted stream to it).
            self.wait_for_client(&counts).await;
            // Frees this message's place in the clean-session bound.
            let done = || {
                if untracked && qos != QoS::AtMostOnce {
                    counts.untracked_done();
                }
            };
            // Whatever is still queued will not go out on this connection; messages of a
            // persistent session stay owed and go out again on the next one.
            if !self.sink.is_open() {
                metrics.dropped_disconnected.add(u64::from(untracked));
                done();
                continue;
            }
            let bytes = m.msg.payload.len() as u64;
            match self.sink.send(m, &pending).await {
                Ok(completed) => {
                    metrics.delivered.inc();
                    metrics.bytes_sent.add(bytes);
                    match completed {
                        Some(Some(seq)) => self.router.ack(&self.client_id, seq),
                        Some(None) => done(),
                        None => {}
                    }
                }
                Err(()) if !self.sink.is_open() => {
                    metrics.dropped_disconnected.add(u64::from(untracked));
                    done();
                }
                Err(()) => {
                    metrics.dropped_send_error.inc();
                    done();
                }
            }
        }
    }
}

impl Delivery {
    /// Waits for room to send a message (in-flight window, socket drained),
    /// telling [`Counts`] once it has waited [`STALLED`] without progress: from then on
    /// the wait is the client's doing and its backlog stops counting as broker overload.
    /// A subscriber that keeps reading, however slowly, stays counted, so publishers are
    /// held back rather than its messages dropped; one that stops is left to its bound.
    async fn wait_for_client(&self, counts: &Counts) {
        if self.sink.is_ready() || !self.sink.is_open() {
            return;
        }
        if ntex_util::time::timeout(STALLED, self.sink.ready())
            .await
            .is_ok()
        {
            return;
        }
        counts.client_bound(true);
        self.sink.ready().await;
        counts.client_bound(false);
    }
}

/// How long a subscriber may make no progress before its backlog is its own problem
/// rather than broker overload (see `outbox.rs`).
const STALLED: ntex_util::time::Millis = ntex_util::time::Millis(500);

/// Watches one connection for its end or a takeover.
struct Watch {
    conn: ConnId,
    client_id: String,
    router: Router,
    kick: Arc<Notify>,
    closing: tokio::sync::watch::Receiver<bool>,
    sink: Sink,
}

impl Watch {
    /// Runs until the connection is closed, then unregisters it (which ends its delivery
    /// task) and publishes its will unless it disconnected cleanly or was taken over.
    async fn run(mut self, disconnected: impl Future<Output = ()>) {
        let mut disconnected = pin!(disconnected);
        let mut closed = false;
        loop {
            // `biased`: no RNG needed (this runs on ntex, not tokio).
            tokio::select! {
                biased;
                () = &mut disconnected => break,
                () = self.kick.notified() => {
                    tracing::info!(client_id = %self.client_id, "session taken over");
                    self.sink.close_taken_over();
                }
                _ = self.closing.wait_for(|c| *c), if !closed => {
                    closed = true;
                    self.sink.close_shutting_down();
                }
            }
        }
        let metrics = self.router.metrics();
        metrics.connections.dec();
        if let Some(will) = self.router.disconnect(self.conn) {
            tracing::info!(client_id = %self.client_id, topic = %will.topic, "publishing last will");
            metrics.wills.inc();
            self.router.publish(Some(self.conn), will);
        }
        tracing::debug!(client_id = %self.client_id, "connection closed");
    }
}
