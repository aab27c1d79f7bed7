//! The MQTT client every Lentera service uses (rumqttc underneath).
//!
//! rumqttc leaves three things to the application that every service here needs, so they
//! are solved once:
//!
//! - **Knowing when a QoS 1 publish is acknowledged.** [`Client::publish_acked`] resolves
//!   only on the broker's PUBACK. We assign packet ids ourselves (rumqttc keeps a preset
//!   id), so an acknowledgement maps to its waiter exactly, with no reliance on ordering.
//! - **Subscriptions after a reconnect.** Without a resumed session rumqttc does not
//!   restore them; the event loop re-subscribes on every CONNACK.
//! - **Readiness.** The connection state drives a [`lentera_bootstrap::Check`].
//! - **Manual acknowledgements that are never lost.** [`Client::ack`] does not wait;
//!   what rumqttc's request queue cannot take waits in order in the client, because a
//!   dropped acknowledgement holds a slot of the broker's in-flight window for good.
//!
//! Incoming PUBLISH packets arrive on a bounded channel; when the consumer falls behind,
//! the event loop waits, which stops reading the socket and lets TCP flow control and the
//! broker's inflight window push back, instead of buffering without limit.

mod client;
mod settings;

pub use client::{Client, Delivery, PublishError};
pub use rumqttc::{Publish, QoS};
pub use settings::MqttSettings;
