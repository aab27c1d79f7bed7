//! One connection's MQTT session on its worker, protocol-neutral: CONNECT and
//! authentication, the replies that wait for the store, the outbound flow (in-flight
//! window, packet ids, acknowledgements), overload holds. `v3.rs` and `v5.rs` decode
//! packets and decide what they mean; this file keeps the state they share.
//!
//! - **Replies in order.** A PUBACK/PUBREC (and a persistent session's SUBACK) leaves
//!   only once the store has the records it answers for on disk; replies behind it
//!   wait too, so acknowledgements go out in the order of the packets [MQTT-4.6.0-2].
//!   Input goes on meanwhile, up to `receive_maximum` waiting replies.
//! - **Outbound.** The connection's [`Inbox`] (see `outbox.rs`) is drained into its
//!   output while the client's in-flight window has room and the socket takes bytes;
//!   QoS 1 and QoS 2 flows run side by side, acknowledged in any order. Messages of a
//!   persistent session carry a sequence number: their packet id derives from it
//!   (stable across reconnects and restarts, so a DUP resend reuses the id), and the
//!   final acknowledgement is reported to the router, which then forgets the message.
//! - **Stalls.** A subscriber that cannot take anything for [`STALLED`] (window full,
//!   socket not draining) tells its [`Counts`]: its backlog stops counting as broker
//!   overload, so it holds no publisher back for longer than that (`outbox.rs`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ntex_bytes::{BytePages, Bytes, BytesMut};
use ntex_mqtt::QoS;

use crate::auth::{self, Authenticator, Authorizer, Credentials, Refusal};
use crate::error::Close;
use crate::net::Cx;
use crate::net::conn::{Conn, Output, Phase};
use crate::net::mailbox::Cmd;
use crate::outbox::{self, Bounds, Counts, Inbox};
use crate::router::{ConnId, Message, Registration, Router};

pub mod wire;

/// What every connection needs, shared by all workers.
pub struct Shared {
    pub router: Router,
    /// Cap on session expiry (announced to MQTT 5 clients that ask for more).
    pub max_session_expiry: u32,
    /// Per-connection queue bounds (`queue_capacity`, `session_queue_capacity`).
    pub bounds: Bounds,
    /// For ids the broker assigns to clients that send none.
    auto_ids: AtomicU64,
    pub auth: Arc<dyn Authenticator>,
    /// 0 = no limit.
    pub max_connections: usize,
    pub max_packet_bytes: usize,
    /// Waiting replies (unacknowledged QoS ≥ 1 publishes) before input pauses; the
    /// Receive Maximum announced to MQTT 5 clients.
    pub receive_maximum: u16,
    /// Outbound QoS ≥ 1 messages in flight per connection.
    pub max_inflight: u16,
    pub connect_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// A packet begun must be complete within this (`packet_timeout_secs`).
    pub packet_timeout: Duration,
    /// `max_client_id_bytes`.
    pub max_client_id_bytes: usize,
    /// Open connections per source address (`quota.max_connections_per_ip`).
    pub per_ip: Arc<crate::quota::PerIp>,
    /// PUBLISHes per device (`[quota]`; closed mode only).
    pub device_rate: Option<lentera_auth::RateLimiter>,
    /// Where authentications that cannot answer at once are awaited.
    pub runtime: tokio::runtime::Handle,
}

/// Limits of [`Shared`] from the settings.
pub struct Limits {
    pub max_connections: usize,
    pub max_packet_bytes: usize,
    pub receive_maximum: u16,
    pub max_inflight: u16,
    pub connect_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub packet_timeout: Duration,
    pub max_client_id_bytes: usize,
    pub per_ip: Arc<crate::quota::PerIp>,
    pub device_rate: Option<lentera_auth::RateLimiter>,
}

impl Shared {
    pub fn new(
        router: Router,
        queue_capacity: usize,
        auth: Arc<dyn Authenticator>,
        limits: Limits,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        let r = router.limits();
        Self {
            max_session_expiry: r.max_session_expiry,
            bounds: Bounds {
                qos0: queue_capacity.max(1),
                untracked: r.session_queue_capacity.max(1),
                bytes: r.session_queue_bytes.max(1),
            },
            router,
            auto_ids: AtomicU64::new(0),
            auth,
            max_connections: limits.max_connections,
            max_packet_bytes: limits.max_packet_bytes.max(64),
            receive_maximum: limits.receive_maximum.max(1),
            max_inflight: limits.max_inflight.max(1),
            connect_timeout: limits.connect_timeout,
            shutdown_timeout: limits.shutdown_timeout,
            packet_timeout: limits.packet_timeout.max(Duration::from_secs(1)),
            max_client_id_bytes: limits.max_client_id_bytes,
            per_ip: limits.per_ip,
            device_rate: limits.device_rate,
            runtime,
        }
    }

    /// Whether a new connection would exceed `max_connections`. Checked at CONNECT.
    pub fn at_connection_limit(&self) -> bool {
        self.max_connections > 0
            && self.router.metrics().connections.get() >= self.max_connections as i64
    }

    /// A client id the broker accepts: UTF-8 (the codec checked that) without U+0000
    /// [MQTT-1.5.3-2], at most `max_client_id_bytes` long. Refused ones are counted.
    pub fn client_id_ok(&self, id: &str) -> bool {
        let ok = id.len() <= self.max_client_id_bytes && !id.contains('\0');
        if !ok {
            tracing::debug!(
                client_id = ?crate::session::excerpt(id),
                bytes = id.len(),
                "client id refused"
            );
            self.router.metrics().refused_client_id.inc();
        }
        ok
    }

    /// A PUBLISH by a connection with these rights: `Err` when it is a device above its
    /// `[quota]` rate, which ends the connection (MQTT 5 DISCONNECT 0x96, MQTT 3.1.1
    /// close). Services are not limited here.
    pub fn rate_check(&self, acl: &dyn Authorizer) -> Result<(), Close> {
        if let (Some(limiter), Some(id)) = (&self.device_rate, acl.device())
            && limiter.check(id).is_err()
        {
            self.router.metrics().closed_rate_limited.inc();
            tracing::info!(device = ?id, "device above its message rate: disconnected");
            return Err(Close::RateLimited);
        }
        Ok(())
    }

    pub fn generated_client_id(&self) -> String {
        format!(
            "lentera-auto-{}",
            self.auto_ids.fetch_add(1, Ordering::Relaxed) + 1
        )
    }
}

/// At most the first 64 bytes of a client-supplied string, for a log line (logged with
/// `?`, so control characters come out escaped).
pub fn excerpt(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A user name without U+0000 [MQTT-1.5.4-2] (the codec checked it is UTF-8); one with
/// it makes the CONNECT malformed, which is logged here.
pub fn user_name_ok(name: Option<&str>) -> bool {
    let ok = name.is_none_or(|n| !n.contains('\0'));
    if !ok {
        tracing::debug!(user = ?name.map(excerpt), "U+0000 in the user name: malformed CONNECT");
    }
    ok
}

/// The topic filters of a SUBSCRIBE or UNSUBSCRIBE (`kind`), both protocol versions,
/// checked before any of them takes effect: a packet that breaks one of these rules is
/// not answered filter by filter but ends the connection (MQTT 5: DISCONNECT first).
pub fn check_filters<'a>(kind: &str, filters: impl Iterator<Item = &'a str>) -> Result<(), Close> {
    use ntex_mqtt::v5::codec::DisconnectReasonCode as R;
    let mut any = false;
    for f in filters {
        any = true;
        // Topic filters are at least one character long [MQTT-4.7.3-1].
        if f.is_empty() {
            return Err(Close::protocol(
                R::ProtocolError,
                format!("{kind} with a zero-length topic filter"),
            ));
        }
        // A string with U+0000 is a malformed packet [MQTT-1.5.4-2].
        if f.contains('\0') {
            return Err(Close::protocol(
                R::MalformedPacket,
                format!("{kind} with U+0000 in a topic filter"),
            ));
        }
    }
    // At least one filter [MQTT-3.8.3-3], [MQTT-3.10.3-2].
    if !any {
        return Err(Close::protocol(
            R::ProtocolError,
            format!("{kind} without a topic filter"),
        ));
    }
    Ok(())
}

/// What a packet handler tells the read loop.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    /// Packet handled; go on with the next.
    Continue,
    /// Not handled: keep it (and what follows) until the connection resumes.
    Pause,
}

/// A CONNECT whose authentication is under way.
pub struct Pending {
    pub client_id: String,
    pub will: Option<Message>,
    pub connect: PendingConnect,
}

pub enum PendingConnect {
    V3(Box<ntex_mqtt::v3::codec::Connect>),
    V5(Box<ntex_mqtt::v5::codec::Connect>, crate::v5::ConnectExtra),
}

impl Pending {
    fn credentials(&self) -> Credentials<'_> {
        let (username, password) = match &self.connect {
            PendingConnect::V3(c) => (c.username.as_deref(), c.password.as_deref()),
            PendingConnect::V5(c, _) => (c.username.as_deref(), c.password.as_deref()),
        };
        Credentials {
            client_id: &self.client_id,
            username,
            password,
        }
    }
}

/// Handles one complete packet of a connection, whatever its phase.
pub fn frame(conn: &mut Conn, frame: BytesMut, cx: &mut Cx<'_>) -> Result<Flow, Close> {
    match &mut conn.phase {
        Phase::Handshake => {
            let pending = match crate::v5::is_v5_connect(&frame) {
                Some(true) => crate::v5::connect(frame, &mut conn.out, cx)?,
                Some(false) => crate::v3::connect(frame, &mut conn.out, cx)?,
                None => {
                    // The first packet must be CONNECT [MQTT-3.1.0-1].
                    tracing::debug!("first packet is not CONNECT");
                    return Err(Close::Gone);
                }
            };
            authenticate(conn, pending, cx)?;
            Ok(Flow::Continue)
        }
        Phase::Active(a) => {
            if a.input_paused() {
                return Ok(Flow::Pause);
            }
            if let Some(ka) = a.keep_alive() {
                conn.deadline = cx.now + ka;
            }
            match a.proto {
                Proto::V3(_) => crate::v3::packet(a, &mut conn.out, frame, cx),
                Proto::V5(_) => crate::v5::packet(a, &mut conn.out, frame, cx),
            }
        }
        Phase::Authenticating(_) | Phase::Closing => Ok(Flow::Pause),
    }
}

/// Asks the authenticator; finishes CONNECT at once when it answers at once (the
/// shipped providers without a password to hash), else when [`Cmd::AuthDone`] comes.
fn authenticate(conn: &mut Conn, pending: Pending, cx: &mut Cx<'_>) -> Result<(), Close> {
    let mut answer = cx.shared.auth.authenticate(pending.credentials());
    // Inside the runtime's context: a provider may touch tokio timers or I/O on its
    // first poll (the registry's miss lookup), which needs a reactor to register with.
    let entered = cx.shared.runtime.enter();
    let first = answer
        .as_mut()
        .poll(&mut Context::from_waker(std::task::Waker::noop()));
    drop(entered);
    match first {
        Poll::Ready(answer) => finish_connect(conn, pending, answer, cx),
        Poll::Pending => {
            let (mailbox, key) = (cx.mailbox.clone(), cx.key);
            cx.shared.runtime.spawn(async move {
                mailbox.post(Cmd::AuthDone(key, answer.await));
            });
            conn.phase = Phase::Authenticating(Box::new(pending));
            Ok(())
        }
    }
}

/// The authenticator's late answer ([`Cmd::AuthDone`]).
pub fn authenticated(
    conn: &mut Conn,
    answer: Result<Arc<dyn Authorizer>, Refusal>,
    cx: &mut Cx<'_>,
) -> Result<(), Close> {
    match std::mem::replace(&mut conn.phase, Phase::Handshake) {
        Phase::Authenticating(pending) => finish_connect(conn, *pending, answer, cx),
        other => {
            conn.phase = other;
            Ok(())
        }
    }
}

fn finish_connect(
    conn: &mut Conn,
    pending: Pending,
    answer: Result<Arc<dyn Authorizer>, Refusal>,
    cx: &mut Cx<'_>,
) -> Result<(), Close> {
    let will_topic = pending.will.as_ref().map(|w| &*w.topic);
    let metrics = cx.shared.router.metrics();
    let decided = auth::decide(answer, metrics, pending.credentials(), will_topic);
    let active = match (pending.connect, decided) {
        (PendingConnect::V3(_), Err(why)) => {
            crate::v3::refuse(&mut conn.out, why);
            return Err(Close::Refused);
        }
        (PendingConnect::V5(_, _), Err(why)) => {
            crate::v5::refuse(&mut conn.out, why);
            return Err(Close::Refused);
        }
        (PendingConnect::V3(c), Ok(acl)) => {
            crate::v3::accept(*c, pending.client_id, pending.will, acl, &mut conn.out, cx)
        }
        (PendingConnect::V5(c, extra), Ok(acl)) => crate::v5::accept(
            *c,
            extra,
            pending.client_id,
            pending.will,
            acl,
            &mut conn.out,
            cx,
        ),
    };
    conn.deadline = match active.keep_alive() {
        Some(ka) => cx.now + ka,
        // Keep-alive 0 turns the mechanism off [MQTT-3.1.2-24/-21].
        None => cx.now + Duration::from_secs(100 * 365 * 24 * 3600),
    };
    conn.phase = Phase::Active(active);
    Ok(())
}

/// What CONNECT asked of the router, protocol-independent.
pub struct Connection {
    pub client_id: String,
    pub will: Option<Message>,
    pub clean_start: bool,
    /// Session expiry interval in seconds (0 = the session ends with the connection).
    pub expiry: u32,
    /// Authenticated as a registry device (its client id is its id).
    pub device: bool,
}

/// Registers an accepted connection with the router, taking over its client id's
/// session or starting one. Returns the connection id, whether a session was resumed,
/// and the connection's inbox if the resumed session already has something for it.
pub fn register(conn: Connection, cx: &Cx<'_>) -> (ConnId, bool, Option<Inbox>) {
    let mut inbox = None;
    let router = &cx.shared.router;
    let connected = router.connect(
        Registration {
            client_id: conn.client_id,
            kick: cx.kicker(),
            will: conn.will,
            clean_start: conn.clean_start,
            expiry: conn.expiry,
            device: conn.device,
        },
        || {
            let (o, i) = outbox::channel(
                cx.shared.bounds,
                router.pressure().clone(),
                router.budget().clone(),
                cx.ready_notifier(),
            );
            inbox = Some(i);
            o
        },
    );
    router.metrics().connections.inc();
    (connected.id, connected.session_present, inbox)
}

/// The protocol-specific part of an active connection.
pub enum Proto {
    V3(crate::v3::State),
    V5(Box<crate::v5::State>),
}

/// Output beyond which the outbound flow waits for the socket: a subscriber slower
/// than its publishers fills its queue (whose bounds drop or hold back, `outbox.rs`),
/// not this buffer.
const OUTPUT_HIGH: usize = 64 * 1024;

/// How long a subscriber may make no progress before its backlog is its own problem
/// rather than broker overload (see `outbox.rs`).
pub const STALLED: Duration = Duration::from_millis(500);

/// An accepted connection's session state on its worker.
pub struct Active {
    pub id: ConnId,
    pub client_id: String,
    pub acl: Arc<dyn Authorizer>,
    pub proto: Proto,
    /// 1.5 × the client's keep-alive in milliseconds; 0 when it asked for none.
    keep_alive_ms: u32,
    /// From the first subscription (or a resumed session with something owed) on.
    pub delivery: Option<Box<Delivery>>,
    /// Encoded replies waiting for the store, with the sequence number each waits for
    /// (0: none of its own, only its place in line) and whether it is a QoS 1 PUBACK.
    replies: VecDeque<(u64, Bytes, bool)>,
    /// PUBACKs among `replies`: QoS 1 publishes not yet acknowledged (MQTT 5 Receive
    /// Maximum counts them).
    waiting_pubacks: u32,
    /// Waiting replies at which input pauses (`receive_maximum`; MQTT 3.1.1 only — an
    /// MQTT 5 client that exceeds its quota is disconnected instead, `v5.rs`).
    pub max_waiting: u32,
    /// Outbound QoS ≥ 1 messages in flight at most: `max_inflight`, or less when an
    /// MQTT 5 client's Receive Maximum asks for less.
    pub window: u16,
    /// The last QoS ≥ 1 publish went to a subscriber queue above its high watermark:
    /// the next one waits for it to drain (`outbox.rs`).
    pub hold_on: Option<Arc<Counts>>,
    /// A QoS ≥ 1 PUBLISH is held back since then.
    pub held_since: Option<Instant>,
    /// The held PUBLISH may go now, overloaded or not (it waited long enough).
    pub admit_next: bool,
}

impl Active {
    pub fn new(
        id: ConnId,
        client_id: String,
        acl: Arc<dyn Authorizer>,
        proto: Proto,
        keep_alive: u16,
        shared: &Shared,
    ) -> Self {
        Self {
            id,
            client_id,
            acl,
            proto,
            // [MQTT-3.1.2-22] / [MQTT-3.1.2-24]: 1.5 × the interval the client gave.
            keep_alive_ms: u32::from(keep_alive) * 1500,
            delivery: None,
            replies: VecDeque::new(),
            waiting_pubacks: 0,
            max_waiting: u32::from(shared.receive_maximum),
            window: shared.max_inflight,
            hold_on: None,
            held_since: None,
            admit_next: false,
        }
    }

    /// Input waits: a publish is held back, or too many replies wait for the store.
    pub fn input_paused(&self) -> bool {
        self.held_since.is_some() || self.replies.len() >= self.max_waiting as usize
    }

    /// Whether a PUBLISH must wait because this publisher's last one landed in a
    /// backed-up subscriber queue (QoS ≥ 1 backlog, or a full QoS 0 queue of a
    /// subscriber that still reads); if so the connection is listed as held and the
    /// packet stays unread.
    pub fn hold_publish(&mut self, cx: &mut Cx<'_>) -> bool {
        if std::mem::take(&mut self.admit_next) {
            return false;
        }
        let Some(counts) = &self.hold_on else {
            return false;
        };
        if counts.may_resume(std::time::Duration::ZERO) {
            self.hold_on = None;
            return false;
        }
        counts.pressure().holding(true);
        cx.shared.router.metrics().publishes_held.inc();
        self.held_since = Some(cx.now);
        cx.lists.held.push(cx.key.index as usize);
        true
    }

    /// Called for a held connection: whether its PUBLISH may go now (the backlog it
    /// waited on drained, or it waited long enough).
    pub fn try_release(&mut self, now: Instant) -> bool {
        let (Some(since), Some(counts)) = (self.held_since, &self.hold_on) else {
            return self.held_since.take().is_some();
        };
        if !counts.may_resume(now.duration_since(since)) {
            return false;
        }
        counts.pressure().holding(false);
        self.held_since = None;
        self.hold_on = None;
        self.admit_next = true;
        true
    }

    /// Routes a message this connection published; remembers a backed-up subscriber
    /// queue it landed in. Returns the store sequence number the reply must wait for,
    /// and whether `queued_bytes_total` kept it from some session (MQTT 5: 0x97).
    pub fn route(&mut self, cx: &Cx<'_>, msg: Message) -> (u64, bool) {
        let routed = cx.shared.router.publish_held(Some(self.id), msg);
        self.hold_on = routed.backed;
        (routed.lsn, routed.over_budget)
    }

    /// Queues a reply: written now if nothing waits before it and its record (if any)
    /// is on disk, else in line. `puback`: it acknowledges a QoS 1 publish.
    pub fn reply(
        &mut self,
        out: &mut Output,
        cx: &mut Cx<'_>,
        lsn: u64,
        puback: bool,
        encode: impl FnOnce(&Proto, &mut BytePages),
    ) {
        if self.replies.is_empty() && cx.durable(lsn) {
            encode(&self.proto, out.pages());
            return;
        }
        let mut pages = BytePages::default();
        encode(&self.proto, &mut pages);
        if self.replies.is_empty() {
            cx.wait_durable(lsn.max(1));
        }
        self.waiting_pubacks += u32::from(puback);
        self.replies.push_back((lsn, pages.freeze(), puback));
    }

    /// QoS 1 publishes whose PUBACK waits for the store.
    pub fn waiting_pubacks(&self) -> usize {
        self.waiting_pubacks as usize
    }

    /// 1.5 × the client's keep-alive [MQTT-3.1.2-22/-24]; `None` when it asked for none.
    pub fn keep_alive(&self) -> Option<Duration> {
        (self.keep_alive_ms > 0).then(|| Duration::from_millis(self.keep_alive_ms.into()))
    }

    /// Writes the replies whose records are durable now; true if any was written.
    pub fn release_replies(&mut self, durable: u64, out: &mut Output) -> bool {
        let mut released = false;
        while let Some((lsn, _, _)) = self.replies.front()
            && *lsn <= durable
        {
            if let Some((_, bytes, puback)) = self.replies.pop_front() {
                out.pages().append(bytes);
                self.waiting_pubacks -= u32::from(puback);
                released = true;
            }
        }
        released
    }

    /// The sequence number the first waiting reply needs.
    pub fn next_reply_lsn(&self) -> Option<u64> {
        self.replies.front().map(|(lsn, _, _)| (*lsn).max(1))
    }

    /// Creates the connection's queue before its first subscription takes effect.
    pub fn ensure_delivery(&mut self, cx: &Cx<'_>) {
        if self.delivery.is_some() {
            return;
        }
        let mut inbox = None;
        let router = &cx.shared.router;
        router.attach(self.id, || {
            let (o, i) = outbox::channel(
                cx.shared.bounds,
                router.pressure().clone(),
                router.budget().clone(),
                cx.ready_notifier(),
            );
            inbox = Some(i);
            o
        });
        if let Some(inbox) = inbox {
            self.start_delivery(inbox);
        }
    }

    /// Starts the outbound flow.
    pub fn start_delivery(&mut self, inbox: Inbox) {
        self.delivery = Some(Box::new(Delivery {
            inbox,
            inflight: HashMap::new(),
            window: usize::from(self.window.max(1)),
            next_pid: 0,
            blocked_since: None,
            bound: false,
            listed: false,
        }));
    }

    /// Moves queued messages into the output while the window and the socket allow.
    pub fn pump(&mut self, out: &mut Output, cx: &mut Cx<'_>) {
        let Some(d) = self.delivery.as_deref_mut() else {
            return;
        };
        let metrics = cx.shared.router.metrics();
        let mut sent_any = false;
        let blocked = loop {
            if out.len() >= OUTPUT_HIGH {
                break true;
            }
            let room = d.inflight.len() < d.window;
            let inflight = &d.inflight;
            let Some(m) = d.inbox.pop_if(|o| {
                o.msg.qos == QoS::AtMostOnce
                    || (room && o.seq.is_none_or(|s| !inflight.contains_key(&packet_id(s))))
            }) else {
                if !d.inbox.is_empty() {
                    break true;
                }
                if d.inbox.idle() {
                    break false;
                }
                continue;
            };
            let qos = m.msg.qos;
            if qos == QoS::AtMostOnce {
                d.inbox.counts.qos0_taken();
            } else {
                d.inbox.counts.taken();
            }
            // Expired before onward delivery started: not sent, and no longer owed
            // [MQTT-3.3.2-5]. A resend (DUP) had started, and goes out.
            if !m.dup && m.msg.expired(cx.now) {
                d.complete(&cx.shared.router, self.id, m.seq, qos);
                continue;
            }
            if m.released
                && let Some(seq) = m.seq
            {
                // Its PUBREC came on an earlier connection: the PUBREL is owed, with
                // the same packet id [MQTT-4.4.0-1].
                let pid = packet_id(seq);
                self.proto.encode_pubrel(out.pages(), pid);
                let sent = Sent {
                    seq: m.seq,
                    qos,
                    released: true,
                };
                d.inflight.insert(pid, sent);
                sent_any = true;
                continue;
            }
            let pid = (qos != QoS::AtMostOnce).then(|| match m.seq {
                Some(seq) => packet_id(seq),
                None => d.alloc_pid(),
            });
            let bytes = m.msg.payload.len() as u64;
            match self.proto.encode_publish(out.pages(), m.msg, pid, m.dup) {
                Ok(()) => {
                    sent_any = true;
                    metrics.delivered.inc();
                    metrics.bytes_sent.add(bytes);
                    if let Some(pid) = pid {
                        d.inflight.insert(
                            pid,
                            Sent {
                                seq: m.seq,
                                qos,
                                released: false,
                            },
                        );
                    }
                }
                Err(NotEncoded) => {
                    // Larger than the client's Maximum Packet Size: discarded as if it
                    // had been sent [MQTT-3.1.2-25].
                    metrics.dropped_send_error.inc();
                    d.complete(&cx.shared.router, self.id, m.seq, qos);
                }
            }
        };
        if sent_any && d.bound {
            d.inbox.counts.client_bound(false);
            d.bound = false;
        }
        if sent_any || !blocked {
            d.blocked_since = None;
        }
        if blocked && d.blocked_since.is_none() {
            d.blocked_since = Some(cx.now);
            if !d.listed {
                d.listed = true;
                cx.lists.blocked.push(cx.key.index as usize);
            }
        }
    }

    /// The outbound flow stopped with messages waiting (window or output full).
    pub fn waits_for_output(&self) -> bool {
        self.delivery
            .as_deref()
            .is_some_and(|d| d.blocked_since.is_some())
    }

    /// Called every tick while listed as blocked: tells the counts once the client has
    /// taken nothing for [`STALLED`]. Returns whether to stay listed.
    pub fn check_stalled(&mut self, now: Instant) -> bool {
        let Some(d) = self.delivery.as_deref_mut() else {
            return false;
        };
        match d.blocked_since {
            Some(since) => {
                if !d.bound && now.duration_since(since) >= STALLED {
                    d.inbox.counts.client_bound(true);
                    d.bound = true;
                }
                true
            }
            None => {
                d.listed = false;
                false
            }
        }
    }

    /// PUBACK: the QoS 1 flow of `pid` is complete.
    pub fn puback(&mut self, pid: u16, out: &mut Output, cx: &mut Cx<'_>) {
        self.finish_flow(pid, QoS::AtLeastOnce, out, cx);
    }

    /// PUBREC: returns whether to answer PUBREL (false for an unknown id, or when the
    /// client refused the message — MQTT 5 reason ≥ 0x80 ends the flow).
    pub fn pubrec(&mut self, pid: u16, refused: bool, out: &mut Output, cx: &mut Cx<'_>) -> bool {
        if refused {
            self.finish_flow(pid, QoS::ExactlyOnce, out, cx);
            return false;
        }
        match self
            .delivery
            .as_deref_mut()
            .and_then(|d| d.inflight.get_mut(&pid))
        {
            Some(s) if s.qos == QoS::ExactlyOnce => {
                s.released = true;
                // Owed now is the PUBREL, also across a reconnect or restart.
                if let Some(seq) = s.seq {
                    cx.shared.router.released(self.id, seq);
                }
                true
            }
            _ => false,
        }
    }

    /// PUBCOMP: the QoS 2 flow of `pid` is complete.
    pub fn pubcomp(&mut self, pid: u16, out: &mut Output, cx: &mut Cx<'_>) {
        // PUBCOMP answers our PUBREL; one before it is not the end of this flow.
        let released = self
            .delivery
            .as_deref()
            .and_then(|d| d.inflight.get(&pid))
            .is_some_and(|s| s.released);
        if released {
            self.finish_flow(pid, QoS::ExactlyOnce, out, cx);
        }
    }

    fn finish_flow(&mut self, pid: u16, qos: QoS, out: &mut Output, cx: &mut Cx<'_>) {
        let Some(d) = self.delivery.as_deref_mut() else {
            return;
        };
        if d.inflight.get(&pid).is_some_and(|s| s.qos == qos) {
            if let Some(s) = d.inflight.remove(&pid) {
                d.complete(&cx.shared.router, self.id, s.seq, qos);
            }
            // Room in the window: send what waits.
            self.pump(out, cx);
        }
    }

    /// The connection is over: tells an MQTT 5 client why, lets the router forget the
    /// connection (publishing its will unless it ended normally), and counts what was
    /// queued for it and will not be sent.
    pub fn end(self, out: &mut Output, why: &Close, shared: &Shared) {
        if self.held_since.is_some()
            && let Some(c) = &self.hold_on
        {
            c.pressure().holding(false);
        }
        if let (Proto::V5(v5), Some((code, text))) = (&self.proto, why.v5_disconnect()) {
            crate::v5::encode_disconnect(v5, out.pages(), code, text);
        }
        let router = &shared.router;
        let metrics = router.metrics();
        if let Some(d) = &self.delivery {
            // Messages of a persistent session stay owed and go out on the next one.
            let untracked = d.inbox.drain().iter().filter(|o| o.seq.is_none()).count();
            metrics.dropped_disconnected.add(untracked as u64);
        }
        metrics.connections.dec();
        if let Some(will) = router.disconnect(self.id) {
            tracing::info!(client_id = %self.client_id, topic = %will.topic, "publishing last will");
            metrics.wills.inc();
            router.publish_checked(Some(self.id), will);
        }
        tracing::debug!(client_id = %self.client_id, reason = why.label(), "connection closed");
    }
}

impl Proto {
    fn encode_pubrel(&self, dst: &mut BytePages, pid: u16) {
        match self {
            Proto::V3(s) => crate::v3::encode_pubrel(s, dst, pid),
            Proto::V5(s) => crate::v5::encode_pubrel(s, dst, pid),
        }
    }

    fn encode_publish(
        &self,
        dst: &mut BytePages,
        msg: Message,
        pid: Option<u16>,
        dup: bool,
    ) -> Result<(), NotEncoded> {
        match self {
            Proto::V3(s) => crate::v3::encode_publish(s, dst, msg, pid, dup),
            Proto::V5(s) => crate::v5::encode_publish(s, dst, msg, pid, dup),
        }
    }
}

/// A PUBLISH the codec would not encode: larger than the client's Maximum Packet Size.
#[derive(Debug)]
pub struct NotEncoded;

/// The outbound flow of one connection.
pub struct Delivery {
    inbox: Inbox,
    /// QoS ≥ 1 messages sent and not yet completely acknowledged, by packet id.
    inflight: HashMap<u16, Sent>,
    window: usize,
    /// Last packet id handed to a message without a sequence number.
    next_pid: u16,
    /// Could not send what waits since then.
    blocked_since: Option<Instant>,
    /// [`Counts::client_bound`] was told the client is the bottleneck.
    bound: bool,
    /// In the worker's blocked list.
    listed: bool,
}

struct Sent {
    seq: Option<u64>,
    qos: QoS,
    /// PUBREC came and PUBREL went (QoS 2).
    released: bool,
}

impl Delivery {
    fn alloc_pid(&mut self) -> u16 {
        // The window is below 65,535, so a free id is always found.
        loop {
            self.next_pid = self.next_pid.wrapping_add(1).max(1);
            if !self.inflight.contains_key(&self.next_pid) {
                return self.next_pid;
            }
        }
    }

    /// A message left this connection's hands for good (acknowledged, expired,
    /// undeliverable): a persistent session's is acknowledged to the router; a clean
    /// session's QoS ≥ 1 frees its place in the bound.
    fn complete(&self, router: &Router, conn: ConnId, seq: Option<u64>, qos: QoS) {
        match seq {
            Some(seq) => router.ack(conn, seq),
            None if qos != QoS::AtMostOnce => self.inbox.counts.untracked_done(),
            None => {}
        }
    }
}

/// The packet id of owed message `seq`: 1..=65535, stable for the message.
pub fn packet_id(seq: u64) -> u16 {
    ((seq - 1) % 65_535 + 1) as u16
}

#[cfg(test)]
mod size_tests {
    /// An idle connection's memory is these structures (plus its socket and the
    /// router's session): growing one grows every idle device's cost, which is measured
    /// against Mosquitto in `docs/benchmarks.md`. Raise a bound only knowingly.
    #[test]
    fn per_connection_state_stays_small() {
        use std::mem::size_of;
        assert!(
            // 96 before the source address (per-address cap) and the packet
            // deadline: 16 bytes more per connection, bought knowingly (issue 13).
            size_of::<crate::net::conn::Conn>() <= 112,
            "Conn {}",
            size_of::<crate::net::conn::Conn>()
        );
        assert!(
            size_of::<super::Active>() <= 176,
            "Active {}",
            size_of::<super::Active>()
        );
        crate::router::assert_session_small();
    }
}
