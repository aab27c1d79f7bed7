//! One connection's MQTT session on its worker, protocol-neutral. `v3.rs` and `v5.rs`
//! decode packets and decide what they mean; this module keeps the state they share,
//! one job per file:
//!
//! - `connect.rs`: CONNECT and authentication, then registration with the router.
//! - `replies.rs`: **replies in order.** A PUBACK/PUBREC (and a persistent session's
//!   SUBACK) leaves only once the store has the records it answers for on disk;
//!   replies behind it wait too, so acknowledgements go out in the order of the packets
//!   [MQTT-4.6.0-2]. Input goes on meanwhile, up to `receive_maximum` waiting replies.
//! - `delivery.rs`: **outbound.** The connection's [`Inbox`] (see `outbox.rs`) is
//!   drained into its output while the client's in-flight window has room and the
//!   socket takes bytes; QoS 1 and QoS 2 flows run side by side, acknowledged in any
//!   order. Messages of a persistent session carry a sequence number: their packet id
//!   derives from it (stable across reconnects and restarts, so a DUP resend reuses the
//!   id), and the final acknowledgement is reported to the router, which then forgets
//!   the message. **Stalls:** a subscriber that cannot take anything for [`STALLED`]
//!   (window full, socket not draining) tells its [`Counts`]: its backlog stops counting
//!   as broker overload, so it holds no publisher back for longer than that.
//! - `hold.rs`: **overload holds**, a publisher waiting for the backed-up queue its last
//!   message landed in (`outbox.rs`).
//! - `packets.rs`: checks of a packet's content that both protocol versions make the
//!   same way (topic filters of SUBSCRIBE / UNSUBSCRIBE, user names).
//! - [`wire`]: what ntex-mqtt's decoders get wrong, fixed on the raw bytes.
//!
//! [`Inbox`]: crate::outbox::Inbox
//! [`Counts`]: crate::outbox::Counts

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ntex_bytes::Bytes;

use crate::auth::{Authenticator, Authorizer};
use crate::error::Close;
use crate::net::conn::Output;
use crate::outbox::{Bounds, Counts};
use crate::router::{ConnId, Router};

mod connect;
mod delivery;
mod hold;
mod packets;
mod replies;
pub mod wire;

pub use connect::{Connection, Pending, PendingConnect, authenticated, frame, register};
pub use delivery::{Delivery, NotEncoded, STALLED, packet_id};
pub use packets::{FilterRefused, check_filters, subscription_filter, user_name_ok};

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
    /// `max_keep_alive_secs` (0: no cap).
    pub max_keep_alive: u16,
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
    pub max_keep_alive: u16,
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
            max_keep_alive: limits.max_keep_alive,
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

/// What a packet handler tells the read loop.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    /// Packet handled; go on with the next.
    Continue,
    /// Not handled: keep it (and what follows) until the connection resumes.
    Pause,
}

/// The protocol-specific part of an active connection.
pub enum Proto {
    V3(crate::v3::State),
    V5(Box<crate::v5::State>),
}

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

    /// 1.5 × the client's keep-alive [MQTT-3.1.2-22/-24]; `None` when it asked for none.
    pub fn keep_alive(&self) -> Option<Duration> {
        (self.keep_alive_ms > 0).then(|| Duration::from_millis(self.keep_alive_ms.into()))
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
            metrics.dropped_disconnected.add(d.drain_untracked() as u64);
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
