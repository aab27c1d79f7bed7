//! `lentera-broker`: the platform's embedded MQTT 3.1.1 + 5.0 broker. Packets are
//! ntex-mqtt's (its v3 and v5 codecs); connections are served by our own `epoll`
//! workers, which keep an idle connection under a kilobyte (`net/mod.rs` says why).
//!
//! # Message flow
//!
//! ```text
//! client ──PUBLISH──▶ net/worker.rs ──▶ v3.rs / v5.rs ──▶ router.rs (shared table)
//!                      (read, frame)     (validate,       │ retained store updated;
//!                                         ACL, QoS 2)     │ router/index.rs: the topic
//!     PUBACK/PUBREC once the store's                      │ trie finds the matching
//!     group commit covers it ◀── session/replies.rs       │ sessions; persistent +
//!                                                         │ QoS ≥ 1 ⇒ owed queue + log
//!                                                         ▼ outbox (bounded per kind)
//!              subscriber's worker: session/delivery.rs pump ──▶ socket
//!                                          ◀── PUBACK/PUBCOMP ── router.ack
//! ```
//!
//! `ARCHITECTURE.md` tells the whole story on one page.
//!
//! # Layout
//!
//! - [`startup`]: binds the listeners, starts the workers and the admin server, writes
//!   the ready file, shuts down.
//! - [`net`]: the workers' event loop, framing, output buffers, cross-thread
//!   mailboxes; the TLS listener and its certificate (`net/tls.rs`); MQTT over
//!   WebSocket (`/mqtt`), bridged to the MQTT listener (`net/ws.rs`).
//! - [`session`]: one connection's session state, a file per job: `connect` (CONNECT
//!   and authentication), `replies` (replies that wait for the store), `delivery` (the
//!   outbound flow: window, packet ids, acknowledgements), `hold` (overload holds),
//!   `packets` (checks both protocol versions make alike), `wire` (raw-byte fixes of
//!   what ntex-mqtt's decoders get wrong).
//! - [`v3`], [`v5`]: what each packet means in each protocol version.
//! - [`outbox`]: the queue between the router and a connection, and its bounds
//!   (QoS 0 may be dropped for a slow subscriber; QoS ≥ 1 only beyond
//!   `session_queue_capacity`, counted), and the backlog that holds back the
//!   publishers feeding a queue that is not keeping up.
//! - [`router`]: sessions (clean and persistent, with their owed QoS 1/2 queues),
//!   subscriptions (a topic trie, `router/index.rs`: a publish costs its matches, not
//!   the number of sessions), shared subscriptions, retained messages, wills.
//! - [`message`]: what travels between router, outboxes and store (`Message`,
//!   `Outgoing`, `Subscription`).
//! - [`store`]: the on-disk append-only log (group commit, recovery, compaction).
//! - [`topic_filter`]: pure topic validation and wildcard matching.
//! - [`auth`]: who may connect (CONNECT hook), and each connection's publish/subscribe
//!   rights (`auth/acl.rs`), users from the auth file (`auth/file.rs`, `auth/password.rs`).
//! - [`telemetry`]: the first hop of a board's own reading (`{prefix}/{device}/telemetry`):
//!   checked against `[limits]`, stamped with a microsecond-unique receive time when it
//!   has no `ts` (a resend after a lost PUBACK stamped as before, `router/stamps.rs`),
//!   refusals reported on `{prefix}/{device}/error`.
//! - [`sys`]: `$SYS/broker/…` statistics, published retained by the broker itself.
//! - [`quota`]: broker-wide bounds — bytes queued for all sessions, connections per
//!   source address.
//! - [`metrics`], [`settings`], [`error`].
//!
//! Not yet: persisting inbound QoS 2 packet ids and delayed (not yet due) wills across a
//! restart (both are kept per session in memory); outbound topic aliases (none are sent,
//! which MQTT 5 allows); enhanced authentication (AUTH, refused with 0x8C). A message
//! queued to a connection that closed before writing it is resent with DUP=1 ("might
//! be a re-delivery", which MQTT allows). `max_connections` is checked at CONNECT, so
//! connections still authenticating may overshoot it by their number.

pub mod auth;
pub mod error;
pub mod message;
pub mod metrics;
pub mod net;
pub mod outbox;
pub mod quota;
pub mod router;
pub mod session;
pub mod settings;
pub mod startup;
pub mod store;
pub mod sys;
pub mod telemetry;
pub mod topic_filter;
pub mod v3;
pub mod v5;
