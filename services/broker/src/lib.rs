//! `lentera-broker`: the platform's embedded MQTT 3.1.1 + 5.0 broker, built on ntex-mqtt.
//!
//! # Message flow
//!
//! ```text
//! client ──PUBLISH──▶ v3.rs / v5.rs ──▶ router.rs (shared table, Arc<Mutex>)
//!                                          │ retained store updated
//!                                          │ try_send to each matching connection's
//!                                          ▼ bounded channel (full ⇒ drop + count)
//!                       session.rs delivery task (on that connection's worker thread)
//!                                          │ MqttSink::publish (QoS 0, or QoS 1 without
//!                                          ▼ waiting for each PUBACK)
//!                                      subscriber
//! ```
//!
//! ntex-mqtt's sinks are `Rc`-based and tied to their worker thread, so connections
//! never touch each other's sinks: the router only holds `Send` channel ends.
//!
//! # Layout
//!
//! - [`startup`]: binds the MQTT and admin listeners, runs ntex on its own thread, writes
//!   the ready file, shuts down.
//! - [`v3`], [`v5`]: per-protocol CONNECT / PUBLISH / SUBSCRIBE / DISCONNECT handling.
//! - [`session`]: per-connection registration and the delivery task, Last Will on
//!   abnormal close, takeover when a client id connects again.
//! - [`router`]: subscriptions, shared subscriptions, retained messages, wills.
//! - [`topic_filter`]: pure topic validation and wildcard matching.
//! - [`transport_ws`]: MQTT over WebSocket (`/mqtt`), bridged to the MQTT listener.
//! - [`transport_tls`]: MQTT over TLS (rustls) on the same ntex server, when configured.
//! - [`metrics`], [`settings`], [`error`].
//!
//! Not yet: persistent sessions (clean_session=false is accepted but starts empty, with
//! `session_present=false`), outbound QoS 2 (subscriptions are granted at most QoS 1),
//! will delay, message expiry, MQTT over WebSocket and TLS.

pub mod error;
pub mod metrics;
pub mod router;
pub mod session;
pub mod settings;
pub mod startup;
pub mod store;
pub mod topic_filter;
pub mod transport_tls;
pub mod transport_ws;
pub mod v3;
pub mod v5;
