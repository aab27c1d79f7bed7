//! The one shared routing table: sessions (by client id) with their subscriptions and,
//! for persistent sessions, the QoS 1/2 messages still owed to them; the live connection
//! of each session; the retained store; Last Wills.
//!
//! Connections live on network worker threads (`net/`), so the table never holds them:
//! each connection registers a takeover [`Kick`] and, once it has something to receive
//! (a subscription, or a resumed session), an [`Outbox`] — a `Send` queue its worker
//! drains into the socket (`session/delivery.rs`). Routing only queues under the lock, within
//! the bounds `outbox.rs` explains — it never waits on a slow subscriber.
//!
//! Persistent sessions (v3 clean_session=0, v5 session expiry > 0) keep an `owed` queue:
//! every QoS ≥ 1 message routed to them gets a per-session sequence number and stays in
//! `owed` — and in the on-disk store — until the subscriber acknowledges it, whether it
//! was sent or the client was away. On reconnect the whole `owed` queue is sent again in
//! order (DUP=1 for those already handed to an earlier connection). The queue is bounded
//! by `session_queue_capacity`; when full, the *newest* message is dropped and counted
//! (`messages_dropped_total{reason="session_queue_full"}`): older messages may already be
//! in flight, so dropping them would leave gaps the subscriber cannot notice, whereas
//! refusing new ones keeps what was delivered a contiguous prefix (Mosquitto's
//! `max_queued_messages` behaves the same way).
//!
//! One mutex suffices: every critical section is short and synchronous (parking_lot,
//! which spins briefly before parking, since both workers take it on every publish).
//! Store records are encoded under it so the log order is the state-change order.
//!
//! This file: the table and routing (subscribe, publish, deliver). `router/index.rs`:
//! the subscription trie a publish is matched against. `router/sessions.rs`: session
//! lifecycle and acknowledgements. `router/durable.rs`: recovery and snapshots.
//! `router/stamps.rs`: a resent reading stamped as before. The
//! values routed (`Message`, `Outgoing`, `Subscription`) are in `message.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::time::Instant;

pub use crate::message::{ConnId, Message, Outgoing, Properties, Subscription};
use crate::metrics::Metrics;
use crate::outbox::{Counts, Outbox, Pressure, Refused};
use crate::quota::{Budget, Overflow};
use crate::store::recover::Recovered;
use crate::store::{Record, Store};
use crate::telemetry::{RefusedReading, Telemetry};
use crate::topic_filter::matches;
use index::{Hit, Index, Member, Opts};
use ntex_bytes::ByteString;
use ntex_mqtt::QoS;

/// Session expiry interval meaning "never expires" (MQTT 5 §3.1.2.11.2).
pub const NEVER: u32 = u32::MAX;

/// When retained messages are sent for a new subscription (MQTT 5 Retain Handling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendRetained {
    Always,
    IfNewSubscription,
    Never,
}

/// Closes a connection, saying why: another one took over its client id, or its
/// device's admission ended (called under the router lock: it only posts a command to
/// the connection's worker).
pub type Kick = Box<dyn Fn(crate::error::Close) + Send + Sync>;

/// What a connection hands the router when it registers.
pub struct Registration {
    pub client_id: String,
    /// Called when another connection takes over the client id.
    pub kick: Kick,
    pub will: Option<Message>,
    /// Discard any existing session (v3 clean_session, v5 clean start).
    pub clean_start: bool,
    /// Seconds the session outlives the connection: 0 = ends with it, [`NEVER`].
    pub expiry: u32,
    /// Authenticated as the device whose id is the client id (registry): cut when that
    /// device is disabled, removed or its token rotated ([`Router::revoke`]).
    pub device: bool,
}

/// Limits the router enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Messages owed per persistent session before new ones are dropped.
    pub session_queue_capacity: usize,
    /// Upper bound on any session's expiry interval (seconds; [`NEVER`] = none).
    pub max_session_expiry: u32,
    /// Bytes queued per session (`broker.session_queue_bytes`).
    pub session_queue_bytes: usize,
    /// Bytes queued for all sessions (`broker.queued_bytes_total`).
    pub queued_bytes_total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            session_queue_capacity: 10_000,
            max_session_expiry: NEVER,
            session_queue_bytes: usize::MAX,
            queued_bytes_total: usize::MAX,
        }
    }
}

/// What routing one message did, for its publisher.
#[derive(Default)]
pub struct Routed {
    /// The store sequence number the acknowledgement waits for (0: none).
    pub lsn: u64,
    /// The most backed-up subscriber queue it landed in (`outbox.rs`).
    pub backed: Option<Arc<Counts>>,
    /// Some session did not get it because `queued_bytes_total` was reached: an MQTT 5
    /// publisher of a QoS ≥ 1 message hears 0x97 Quota exceeded.
    pub over_budget: bool,
}

#[derive(Clone)]
pub struct Router {
    state: Arc<Mutex<State>>,
    /// Broker-wide delivery backlog; QoS ≥ 1 publishers wait on it when overloaded.
    pressure: Arc<Pressure>,
    /// Bytes queued for all sessions (`quota.rs`).
    budget: Arc<Budget>,
    /// Checks and stamps `{prefix}/{device}/telemetry` before it is routed (`telemetry.rs`).
    telemetry: Arc<Telemetry>,
    metrics: Metrics,
    store: Store,
    limits: Limits,
}

#[derive(Default)]
struct State {
    next_id: ConnId,
    /// Live connection → its client id.
    conns: HashMap<ConnId, String>,
    /// Boxed: most of a session is rarely used, and the table's spare buckets then
    /// cost a pointer each, not a whole session (memory per idle connection).
    sessions: HashMap<String, Box<Session>>,
    /// Every session's subscriptions, by topic level (`router/index.rs`).
    index: Index,
    /// Offline sessions by the time they expire: the sweeper looks only at those due.
    expiries: BTreeSet<(Instant, String)>,
    /// Offline sessions with a delayed will or messages that may expire: the sweeper's
    /// other work, so a district of sleeping boards costs it nothing.
    watch: HashSet<String>,
    retained: BTreeMap<ByteString, Message>,
    /// Some retained message may carry a Message Expiry Interval: the sweeper looks.
    retained_may_expire: bool,
    /// Round-robin position for shared subscriptions.
    share_turn: usize,
}

struct Live {
    id: ConnId,
    /// Created on demand (see [`Router::attach`]): an idle connection costs no queue.
    outbox: Option<Outbox>,
    kick: Kick,
    will: Option<Message>,
    will_timing: WillTiming,
    device: bool,
}

/// A delayed will: the message, when it is due, its expiry interval once published.
type PendingWill = (Message, Instant, Option<u32>);

/// MQTT 5 will properties that take effect when the will is published.
#[derive(Debug, Clone, Copy, Default)]
pub struct WillTiming {
    /// Will Delay Interval in seconds (0: published as the connection closes).
    pub delay: u32,
    /// Message Expiry Interval of the will, counted from its publication.
    pub expiry: Option<u32>,
    /// MQTT 5: a takeover by a new connection publishes the will too (§3.1.4), unless its
    /// delay is running and the new connection resumes the session [MQTT-3.1.3-9]. False
    /// for MQTT 3.1.1, which leaves takeover open: there it is discarded, since a board
    /// reconnecting over a half-open connection would otherwise announce itself
    /// "offline" while it is online (a v5 board gets that with a will delay).
    pub on_takeover: bool,
}

struct Owed {
    seq: u64,
    msg: Message,
    /// Handed to a connection already, so a resend carries DUP=1.
    dispatched: bool,
    /// QoS 2 and PUBREC'd: a resend is the PUBREL, not the PUBLISH [MQTT-4.4.0-1].
    released: bool,
}

struct Session {
    live: Option<Live>,
    /// Keyed by the filter exactly as subscribed, so a repeat SUBSCRIBE replaces it
    /// [MQTT-3.8.4-3] and UNSUBSCRIBE finds it.
    subs: HashMap<String, Subscription>,
    expiry: u32,
    /// When an offline session expires (`None` while connected or for [`NEVER`]).
    expires_at: Option<Instant>,
    /// Only persistent sessions track what they are owed.
    owed: VecDeque<Owed>,
    /// [`Message::cost`] of `owed`, taken from the router's [`Budget`].
    owed_bytes: usize,
    /// The store holds this session (a `Session` record not yet followed by `EndSession`).
    stored: bool,
    next_seq: u64,
    /// Packet ids of inbound QoS 2 PUBLISHes not yet released: a resent PUBLISH with one
    /// of these ids (after a reconnect) is acknowledged but not routed again
    /// [MQTT-4.3.3-9]. Kept in memory only.
    /// Boxed and created on first use: an empty `HashSet` would still take 48 bytes in
    /// every session, and almost none ever holds an id.
    #[allow(clippy::box_collection)]
    qos2_in: Option<Box<HashSet<u16>>>,
    /// A will waiting for its delay interval to pass (MQTT 5 §3.1.3.2.2).
    pending_will: Option<Box<PendingWill>>,
    /// Some owed message may carry a Message Expiry Interval: while the session is
    /// offline the sweeper drops expired ones, so they do not hold queue places.
    owed_may_expire: bool,
    /// The last readings its client published that the broker stamped, so a resend gets
    /// the same `ts` (`router/stamps.rs`); created with the first.
    stamps: Option<Box<stamps::Stamps>>,
}

impl Session {
    fn new(expiry: u32) -> Self {
        Self {
            live: None,
            subs: HashMap::new(),
            expiry,
            expires_at: None,
            owed: VecDeque::new(),
            owed_bytes: 0,
            stored: false,
            next_seq: 1,
            qos2_in: None,
            pending_will: None,
            owed_may_expire: false,
            stamps: None,
        }
    }

    fn persistent(&self) -> bool {
        self.expiry > 0
    }

    /// Puts an offline session on the sweeper's watch list if it has work there.
    fn watch_offline(&self, client: &str, watch: &mut HashSet<String>) {
        if self.live.is_none()
            && (self.owed_may_expire || self.pending_will.is_some())
            && !watch.contains(client)
        {
            watch.insert(client.to_owned());
        }
    }
}

/// What [`Router::connect`] tells the connection.
pub struct Connected {
    pub id: ConnId,
    /// [MQTT-3.2.2-2] / MQTT 5 §3.2.2.1.1.
    pub session_present: bool,
}

impl Router {
    /// An in-memory router with default limits.
    pub fn new(metrics: Metrics) -> Self {
        Self::new_with_limits(metrics, Limits::default())
    }

    /// An in-memory router (nothing survives a restart).
    pub fn new_with_limits(metrics: Metrics, limits: Limits) -> Self {
        Self::with_store(metrics, Store::disabled(), Recovered::default(), limits)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// See `outbox.rs`: QoS ≥ 1 publishers are held back while it is overloaded.
    pub fn pressure(&self) -> &Arc<Pressure> {
        &self.pressure
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The byte budget every queue takes from (`quota.rs`).
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// This router with `telemetry` checking and stamping readings (set once, before
    /// the router is shared; the default checks nothing).
    pub fn with_telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = Arc::new(telemetry);
        self
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// Routes the report of a refused telemetry PUBLISH (`{prefix}/{device}/error`) as
    /// the broker's own message. Returns the store sequence number the refused
    /// publisher's acknowledgement waits for, so an acknowledged refusal is as durable
    /// for a persistent subscriber (the historian's dead letters) as a reading.
    pub fn report_refused(&self, refused: RefusedReading) -> u64 {
        self.route(None, refused.report)
    }

    /// Publishes a message the broker makes on a client's behalf (a will): checked
    /// and stamped like a PUBLISH of the client's, or only its refusal reported.
    pub fn publish_checked(&self, from: Option<ConnId>, mut msg: Message) -> u64 {
        match self.telemetry.inspect(&msg.topic, &msg.payload, msg.retain) {
            Ok(stamped) => {
                if let Some(payload) = stamped {
                    msg.payload = payload;
                }
                self.publish(from, msg)
            }
            Err(refused) => self.report_refused(*refused),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // parking_lot does not poison: a panic while holding the lock leaves plain data
        // behind, still consistent enough to keep routing.
        self.state.lock()
    }

    /// Adds or replaces a subscription and queues the matching retained messages.
    /// Returns the store sequence number the SUBACK should wait for (0: nothing to wait
    /// for, e.g. a clean session, or the connection was taken over meanwhile).
    pub fn subscribe(&self, conn: ConnId, raw: &str, sub: Subscription, send: SendRetained) -> u64 {
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(client) = st.conns.get(&conn) else {
            return 0;
        };
        let Some(s) = st.sessions.get_mut(client) else {
            return 0;
        };
        let mut lsn = 0;
        if s.persistent() {
            lsn = self.store.append(&Record::Sub {
                client,
                filter: raw,
                qos: sub.qos,
                no_local: sub.no_local,
                retain_as_published: sub.retain_as_published,
                id: sub.id,
            });
        }
        let is_new = s.subs.insert(raw.to_owned(), sub.clone()).is_none();
        st.index.insert(client, &sub.filter, Opts::from(&sub));
        // Retained messages are not sent for shared subscriptions (MQTT 5 §4.8.2).
        let send = match send {
            SendRetained::Always => true,
            SendRetained::IfNewSubscription => is_new,
            SendRetained::Never => false,
        } && sub.filter.group.is_none();
        if send {
            let now = Instant::now();
            // An expired retained message is no longer sent [MQTT-3.3.2-5]; it is
            // forgotten the next time it is replaced or deleted.
            for (topic, msg) in retained_candidates(&st.retained, &sub.filter.pattern) {
                if matches(&sub.filter.pattern, topic) && !msg.expired(now) {
                    // A retained message sent because of a subscription carries RETAIN=1
                    // [MQTT-3.3.1-8].
                    let m = Message {
                        qos: msg.qos.min(sub.qos),
                        retain: true,
                        ..msg.clone()
                    };
                    let m = m.for_subscriber(sub.id.into_iter().collect());
                    self.deliver(client, s, m, &mut Routed::default());
                }
            }
        }
        lsn
    }

    /// Returns whether the subscription existed (MQTT 5 reports "no subscription existed").
    pub fn unsubscribe(&self, conn: ConnId, raw: &str) -> bool {
        let mut guard = self.lock();
        let State {
            conns,
            sessions,
            index,
            ..
        } = &mut *guard;
        let Some(client) = conns.get(&conn) else {
            return false;
        };
        let Some(s) = sessions.get_mut(client) else {
            return false;
        };
        {
            let existed = match s.subs.remove(raw) {
                Some(sub) => {
                    index.remove(client, &sub.filter);
                    true
                }
                None => false,
            };
            if existed && s.persistent() {
                self.store.append(&Record::Unsub {
                    client,
                    filter: raw,
                });
            }
            existed
        }
    }

    /// Routes one message: updates the retained store, then queues a copy for every
    /// session with a matching subscription (once per session, at the highest matching
    /// QoS, lowered to it [MQTT-3.8.4-8]) and for one member of each matching shared
    /// group. Returns the store sequence number the publisher's acknowledgement must wait
    /// for (see [`Store::durable_seq`]); 0 when nothing durable was written.
    pub fn publish(&self, from: Option<ConnId>, msg: Message) -> u64 {
        self.publish_held(from, msg).lsn
    }

    /// [`Router::publish`], also returning the most backed-up subscriber queue the
    /// message went to, if any is above the high watermark: the publisher is to wait on
    /// it before its next QoS ≥ 1 message (`outbox.rs`).
    pub fn publish_held(&self, from: Option<ConnId>, msg: Message) -> Routed {
        self.metrics.received.inc();
        self.metrics.bytes_received.add(msg.payload.len() as u64);
        self.route_held(from, msg)
    }

    /// [`Router::publish`] without counting the message as received: the broker's own
    /// `$SYS` statistics (`sys.rs`).
    pub fn route(&self, from: Option<ConnId>, msg: Message) -> u64 {
        self.route_held(from, msg).lsn
    }

    fn route_held(&self, from: Option<ConnId>, msg: Message) -> Routed {
        let mut routed = Routed::default();
        let mut guard = self.lock();
        let st = &mut *guard;
        let mut lsn = 0;
        if msg.retain {
            // An empty retained payload deletes the topic's retained message
            // [MQTT-3.3.1-10]; it is still forwarded to current subscribers [MQTT-3.3.1-12].
            if msg.payload.is_empty() {
                if st.retained.remove(&msg.topic).is_some() {
                    lsn = self.store.append(&Record::Unretain(&msg.topic));
                }
            } else {
                // `$SYS` values describe this process: kept in memory only (`sys.rs`).
                if !crate::auth::is_sys(&msg.topic) {
                    lsn = self.store.append(&Record::Retain(&msg));
                }
                st.retained_may_expire |= msg
                    .properties
                    .as_ref()
                    .is_some_and(|p| p.expires_at.is_some());
                st.retained.insert(msg.topic.clone(), msg.clone());
            }
            self.metrics
                .retained
                .set(stats::client_retained(&st.retained));
        }

        let State {
            index,
            sessions,
            share_turn,
            watch,
            ..
        } = st;
        let mut hits = Vec::new();
        index.matches(&msg.topic, &mut hits);
        // Once per session: at the highest QoS of its matching subscriptions, with every
        // matching subscription's identifier [MQTT-3.3.4-4]. Most messages match one
        // subscription per session, which needs no merging.
        let mut copies: HashMap<&str, (QoS, bool, Vec<u32>)> = HashMap::new();
        let mut groups = Vec::new();
        for hit in hits {
            let (client, o) = match hit {
                Hit::Direct(client, o) => (client, o),
                Hit::Group(members) => {
                    groups.push(members);
                    continue;
                }
            };
            if o.no_local
                && from.is_some()
                && sessions
                    .get(&**client)
                    .and_then(|s| s.live.as_ref())
                    .is_some_and(|l| Some(l.id) == from)
            {
                continue;
            }
            let qos = msg.qos.min(o.qos);
            // Forwarded copies have RETAIN=0 unless the subscriber asked otherwise
            // [MQTT-3.3.1-9].
            let retain = msg.retain && o.retain_as_published;
            let c = copies.entry(client).or_insert((qos, retain, Vec::new()));
            c.0 = c.0.max(qos);
            c.1 |= retain;
            c.2.extend(o.id);
        }
        for (client, (qos, retain, ids)) in copies {
            let Some(s) = sessions.get_mut(client) else {
                continue;
            };
            if s.live.is_none() && !s.persistent() {
                continue;
            }
            let m = Message {
                qos,
                retain,
                ..msg.clone()
            };
            lsn = lsn.max(self.deliver(client, s, m.for_subscriber(ids), &mut routed));
            s.watch_offline(client, watch);
        }
        // One member per group; connected members first, so an offline persistent member
        // queues only when nobody in its group is there to take the message.
        let turn = *share_turn;
        *share_turn = share_turn.wrapping_add(1);
        for members in groups {
            let live = |m: &&Member| sessions.get(&*m.0).is_some_and(|s| s.live.is_some());
            let n_live = members.iter().filter(live).count();
            let (client, o) = if n_live == 0 {
                &members[turn % members.len()]
            } else {
                members
                    .iter()
                    .filter(live)
                    .nth(turn % n_live)
                    .expect("counted")
            };
            if let Some(s) = sessions.get_mut(&**client) {
                let m = Message {
                    qos: msg.qos.min(o.qos),
                    retain: false,
                    ..msg.clone()
                };
                let m = m.for_subscriber(o.id.into_iter().collect());
                lsn = lsn.max(self.deliver(client, s, m, &mut routed));
                s.watch_offline(client, watch);
            }
        }
        if self.store.wants_compaction() {
            self.compact(st);
        }
        if msg.qos != QoS::AtMostOnce {
            routed.lsn = lsn;
        }
        routed
    }

    /// Hands one message to a session: to its connection's [`Outbox`], and for
    /// persistent sessions at QoS ≥ 1 also to its `owed` queue and the store. Returns the
    /// store sequence number written (0 if none). A queue left above its high
    /// watermark is noted in `backed` (the most backed-up one).
    fn deliver(&self, client: &str, s: &mut Session, msg: Message, routed: &mut Routed) -> u64 {
        let backed = &mut routed.backed;
        let outbox = s.live.as_ref().and_then(|l| l.outbox.as_ref());
        if msg.qos != QoS::AtMostOnce
            && let Some(c) = outbox.and_then(Outbox::backed_up)
            && backed.as_ref().is_none_or(|b| b.backlog() < c.backlog())
        {
            *backed = Some(c.clone());
        }
        if s.persistent() && msg.qos != QoS::AtMostOnce {
            if s.owed.len() >= self.limits.session_queue_capacity {
                self.metrics.dropped_session_queue_full.inc();
                return 0;
            }
            // The byte bounds: this session's, then everybody's. Refused, counted and
            // logged (never silently): the newest goes, as for the count above.
            let cost = msg.cost();
            if s.owed_bytes.saturating_add(cost) > self.limits.session_queue_bytes {
                self.budget.refused(Overflow::Session, client);
                return 0;
            }
            if !self.budget.try_take(cost) {
                self.budget.refused(Overflow::Total, client);
                routed.over_budget = true;
                return 0;
            }
            s.owed_bytes += cost;
            let seq = s.next_seq;
            // Not sent when the connection is gone (or has no queue yet): it stays owed.
            let dispatched = outbox.is_some_and(|o| {
                o.send_owed(Outgoing {
                    msg: msg.clone(),
                    seq: Some(seq),
                    dup: false,
                    released: false,
                })
            });
            s.next_seq += 1;
            // The subscriber's PUBACK needs this lock, so it cannot overtake the record.
            let lsn = self.store.append(&Record::Enq {
                client,
                seq,
                msg: &msg,
            });
            s.owed_may_expire |= msg.expires();
            s.owed.push_back(Owed {
                seq,
                msg,
                dispatched,
                released: false,
            });
            return lsn;
        }
        // QoS 0, or a clean session: queued within the connection's bounds. An offline
        // persistent session does not queue QoS 0 (MQTT 5 §3.1.2.5 leaves it to the
        // server; it is not durable).
        if let Some(o) = outbox {
            let out_qos = msg.qos;
            let out = Outgoing {
                msg,
                seq: None,
                dup: false,
                released: false,
            };
            match o.offer(out) {
                Ok(()) => {}
                Err(Refused::Qos0Full) => {
                    self.metrics.dropped_queue_full.inc();
                    // A subscriber that reads, only slower than its publishers: they
                    // wait (as a single-threaded broker's would) rather than have more
                    // dropped. One that stalled is on its own.
                    if o.counts().qos0_backed_up() && backed.is_none() {
                        *backed = Some(o.counts().clone());
                    }
                }
                Err(Refused::SessionFull) => self.metrics.dropped_session_queue_full.inc(),
                Err(Refused::Bytes(why)) => {
                    self.budget.refused(why, client);
                    if why == Overflow::Total && out_qos != QoS::AtMostOnce {
                        routed.over_budget = true;
                    }
                }
                Err(Refused::Closed) => self.metrics.dropped_disconnected.inc(),
            }
        } else if s.live.is_some() {
            // Routed before the connection's queue exists: only a resumed session's
            // QoS 0 in the instant between CONNECT and its queue can get here.
            self.metrics.dropped_disconnected.inc();
        }
        0
    }
}

mod durable;
mod index;
mod sessions;
mod small_map;
mod stamps;
mod stats;

pub use stamps::STAMPS_REMEMBERED;

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;

/// The retained messages a subscription to `pattern` may match: the one topic for a
/// filter without wildcards, those under its literal prefix for one with them (a board
/// subscribing to its own command topic does not look at every retained message).
fn retained_candidates<'a>(
    retained: &'a BTreeMap<ByteString, Message>,
    pattern: &'a str,
) -> Box<dyn Iterator<Item = (&'a ByteString, &'a Message)> + 'a> {
    let wild = pattern.split('/').position(|l| l == "+" || l == "#");
    let Some(at) = wild else {
        return Box::new(retained.get_key_value(pattern).into_iter());
    };
    // The literal levels before the first wildcard, without the `/` after them: `a/#`
    // also matches `a` itself [MQTT-4.7.1-2].
    let prefix_len: usize = pattern.split('/').take(at).map(|l| l.len() + 1).sum();
    let prefix = &pattern[..prefix_len.saturating_sub(1)];
    Box::new(
        retained
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(t, _)| t.starts_with(prefix)),
    )
}

/// See `session/mod.rs` `per_connection_state_stays_small`.
#[cfg(test)]
pub fn assert_session_small() {
    let size = std::mem::size_of::<Session>();
    assert!(size <= 320, "Session {size}");
}
