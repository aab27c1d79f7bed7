//! Turning validated readings into acknowledged MQTT messages.
//!
//! Both entries (HTTP and TCP) end here, so "accepted" means the same thing everywhere:
//! the broker has sent PUBACK for every reading's canonical payload.

use futures_util::future::join_all;
use lentera_mqtt::{Client, PublishError, QoS};
use lentera_protocol::{DeviceId, DeviceStatus, Reading, Topics};

/// Cheap to clone: the MQTT handle and topic builder are shared.
#[derive(Clone)]
pub struct Publisher {
    client: Client,
    topics: Topics,
}

impl Publisher {
    pub fn new(client: Client, topics: Topics) -> Self {
        Self { client, topics }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Publishes every reading concurrently (QoS 1) and resolves when all are acknowledged.
    /// Concurrency matters: one at a time, a 1000-reading batch would take 1000 round trips.
    /// On failure the most actionable error is returned — `Overloaded` only when nothing
    /// worse happened, because "broker gone" needs a different client reaction than "slow
    /// down". Some readings may have been delivered; a retry re-sends them, which the
    /// historian's (device, metric, ts) key makes harmless when the board sent `ts`.
    pub async fn readings(&self, readings: &[Reading]) -> Result<(), PublishError> {
        let results = join_all(readings.iter().map(|r| {
            self.client
                .publish_acked(self.topics.telemetry(&r.device), false, r.to_payload())
        }))
        .await;
        let mut worst = None;
        for e in results.into_iter().filter_map(Result::err) {
            worst = match (worst, e) {
                (None, e) | (Some(PublishError::Overloaded), e) => Some(e),
                (w, _) => w,
            };
        }
        worst.map_or(Ok(()), Err)
    }

    /// The stable code both entries report for a failed publish.
    pub fn error_code(e: &PublishError) -> &'static str {
        match e {
            PublishError::Overloaded => "overloaded",
            _ => "broker_unavailable",
        }
    }

    /// Publishes a device's retained `online`/`offline` without waiting: a TCP `HELLO` must
    /// be answered even while the broker is away, and the next retained status fixes it.
    pub fn status(&self, device: &DeviceId, status: DeviceStatus) {
        if let Err(e) = self.client.publish(
            self.topics.status(device),
            QoS::AtLeastOnce,
            true,
            status.as_str(),
        ) {
            tracing::warn!(%device, status = status.as_str(), error = %e, "status not published");
        }
    }
}
