//! The values that travel between the router, the connections' outboxes and the store:
//! an application message with its MQTT 5 properties, one message for one connection,
//! one subscription. Kept apart so those three modules depend on these types, not on
//! each other.

use std::sync::Arc;
use std::time::Instant;

use ntex_bytes::{ByteString, Bytes};
use ntex_mqtt::QoS;

use crate::topic_filter::Filter;

/// Identifies one network connection (not a client id: a client id outlives connections).
pub type ConnId = u64;

/// An application message on its way to subscribers.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: ByteString,
    pub payload: Bytes,
    /// As published; lowered per subscriber to the granted QoS.
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 properties forwarded unchanged (user properties carry trace context).
    pub properties: Option<Arc<Properties>>,
}

/// The MQTT 5 PUBLISH properties a broker forwards to subscribers (MQTT 5 §3.3.2.3).
#[derive(Debug, Default, Clone)]
pub struct Properties {
    pub user_properties: Vec<(ByteString, ByteString)>,
    pub content_type: Option<ByteString>,
    pub response_topic: Option<ByteString>,
    pub correlation_data: Option<Bytes>,
    pub is_utf8_payload: bool,
    /// From the Message Expiry Interval: after this the message is not delivered
    /// [MQTT-3.3.2-5], before it the forwarded interval is what is left [MQTT-3.3.2-6].
    pub expires_at: Option<Instant>,
    /// Set on one subscriber's copy only: the identifiers of its matching subscriptions
    /// [MQTT-3.3.4-3/-4].
    pub subscription_ids: Vec<u32>,
}

impl Properties {
    /// What is left of the Message Expiry Interval at `now`, in whole seconds rounded
    /// up (so a message is never forwarded with 0, which would mean "absent"); `None`
    /// when the message does not expire.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        let left = self.expires_at?.saturating_duration_since(now);
        Some(
            left.as_secs()
                .saturating_add(u64::from(left.subsec_nanos() > 0))
                .clamp(1, u32::MAX.into()) as u32,
        )
    }
}

impl Message {
    /// What the message costs in a queue, as the byte bounds count it: topic + payload.
    pub fn cost(&self) -> usize {
        self.topic.len() + self.payload.len()
    }

    /// Whether the message has a Message Expiry Interval at all.
    pub fn expires(&self) -> bool {
        self.properties
            .as_ref()
            .is_some_and(|p| p.expires_at.is_some())
    }

    /// Whether the message's expiry interval has passed at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.properties
            .as_ref()
            .and_then(|p| p.expires_at)
            .is_some_and(|t| t <= now)
    }

    /// This message as sent to one subscriber whose matching subscriptions carry `ids`.
    pub(crate) fn for_subscriber(mut self, ids: Vec<u32>) -> Self {
        if !ids.is_empty() {
            let mut p = self.properties.as_deref().cloned().unwrap_or_default();
            p.subscription_ids = ids;
            self.properties = Some(Arc::new(p));
        }
        self
    }
}

/// One message for one connection (its worker writes it, `session/delivery.rs`).
#[derive(Debug)]
pub struct Outgoing {
    pub msg: Message,
    /// Sequence number in a persistent session's `owed` queue: the task reports the
    /// acknowledgement back with [`Router::ack`] and derives the packet id from it.
    pub seq: Option<u64>,
    /// May have been sent before (on an earlier connection) [MQTT-3.3.1-1].
    pub dup: bool,
    /// QoS 2 whose PUBREC came on an earlier connection: send PUBREL for it, not the
    /// message [MQTT-4.4.0-1].
    pub released: bool,
}

/// One subscription of one session.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub filter: Filter,
    /// Granted QoS.
    pub qos: QoS,
    /// MQTT 5: do not send the connection its own publications.
    pub no_local: bool,
    /// MQTT 5: keep the publisher's RETAIN flag instead of clearing it [MQTT-3.3.1-12].
    pub retain_as_published: bool,
    /// MQTT 5 Subscription Identifier, sent back with every message it matches.
    pub id: Option<u32>,
}
