//! `lentera-broker`: the platform's embedded MQTT 3.1.1 + 5.0 broker, built on ntex-mqtt.
//!
//! # Message flow
//!
//! ```text
//! client ──PUBLISH──▶ v3.rs / v5.rs ──▶ router.rs (shared table, Arc<Mutex>)
//!                          ▲               │ retained store updated; per matching session:
//!     PUBACK/PUBREC once   │               │ persistent + QoS ≥ 1 ⇒ owed queue + store log
//!     the store's group    │               │ try_send to the connection's bounded channel
//!     commit covers it ────┘               ▼
//!                       session.rs delivery task (on that connection's worker thread)
//!                                          │ MqttSink::publish: QoS 0/1 without waiting
//!                                          ▼ for each PUBACK; QoS 2 one full flow at a time
//!                                      subscriber ──PUBACK/PUBCOMP──▶ router.ack
//! ```
//!
//! ntex-mqtt's sinks are `Rc`-based and tied to their worker thread, so connections
//! never touch each other's sinks: the router only holds `Send` channel ends.
//! `ARCHITECTURE.md` tells the whole story on one page.
//!
//! # Layout
//!
//! - [`startup`]: binds the MQTT and admin listeners, runs ntex on its own thread, writes
//!   the ready file, shuts down.
//! - [`v3`], [`v5`]: per-protocol CONNECT / PUBLISH / SUBSCRIBE / DISCONNECT handling.
//! - [`session`]: per-connection registration, the delivery task (started with the
//!   first subscription), Last Will on abnormal close, takeover when a client id
//!   connects again.
//! - [`outbox`]: the queue between the router and a delivery task, and its bounds
//!   (QoS 0 may be dropped for a slow subscriber; QoS ≥ 1 only beyond
//!   `session_queue_capacity`, counted).
//! - [`router`]: sessions (clean and persistent, with their owed QoS 1/2 queues),
//!   subscriptions, shared subscriptions, retained messages, wills.
//! - [`store`]: the on-disk append-only log (group commit, recovery, compaction).
//! - [`topic_filter`]: pure topic validation and wildcard matching.
//! - [`transport_ws`]: MQTT over WebSocket (`/mqtt`), bridged to the MQTT listener.
//! - [`transport_tls`]: MQTT over TLS (rustls) on the same ntex server, when configured.
//! - [`auth`]: who may connect (CONNECT hook), and each connection's publish/subscribe
//!   rights (`auth/acl.rs`), users from the auth file (`auth/file.rs`, `auth/password.rs`).
//! - [`sys`]: `$SYS/broker/…` statistics, published retained by the broker itself.
//! - [`metrics`], [`settings`], [`error`].
//!
//! Not yet: persisting inbound QoS 2 packet ids and delayed (not yet due) wills across a
//! restart (both are kept per session in memory); outbound topic aliases (none are sent,
//! which MQTT 5 allows); enhanced authentication (AUTH).

pub mod auth;
pub mod error;
pub mod metrics;
pub mod outbox;
pub mod router;
pub mod session;
pub mod settings;
pub mod startup;
pub mod store;
pub mod sys;
pub mod topic_filter;
pub mod transport_tls;
pub mod transport_ws;
pub mod v3;
pub mod v5;
