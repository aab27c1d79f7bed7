//! Turning validated readings into acknowledged MQTT messages.
//!
//! Both entries (HTTP and TCP) end here, so "accepted" means the same thing everywhere:
//! the broker has sent PUBACK for every reading's canonical payload.

use lentera_mqtt::{Client, PublishError};
use lentera_protocol::{DeviceId, DeviceStatus, Reading, Topics};

use crate::status::StatusBoard;

/// Cheap to clone: the MQTT handle, topic builder and status board are shared.
#[derive(Clone)]
pub struct Publisher {
    client: Client,
    topics: Topics,
    statuses: StatusBoard,
}

impl Publisher {
    /// `statuses` publishes the TCP boards' `online`/`offline` (see [`StatusBoard`]).
    pub fn new(client: Client, topics: Topics, statuses: StatusBoard) -> Self {
        Self {
            client,
            topics,
            statuses,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Publishes every reading (QoS 1) as one batch and resolves when all are
    /// acknowledged: they go out back to back, not one round trip each. On failure the
    /// most actionable error is returned — `Overloaded` only when nothing worse happened,
    /// because "broker gone" needs a different client reaction than "slow down". Some
    /// readings may have been delivered; a retry re-sends them, which the historian's
    /// (device, metric, ts) key makes harmless when the board sent `ts`, and for a
    /// reading without `ts` when the door kept its receive time for the retry
    /// (`Stamps::failed`, see [`crate::in_doubt`]).
    pub async fn readings(&self, readings: &[Reading]) -> Result<(), PublishError> {
        let items = readings
            .iter()
            .map(|r| (self.topics.telemetry(&r.device), r.to_payload()))
            .collect();
        self.client.publish_batch_acked(items).await
    }

    /// The stable code both entries report for a failed publish.
    pub fn error_code(e: &PublishError) -> &'static str {
        match e {
            PublishError::Overloaded => "overloaded",
            _ => "broker_unavailable",
        }
    }

    /// Records a device's retained `online`/`offline` without waiting: a TCP `HELLO` must
    /// be answered even while the broker is away. The status task publishes it (QoS 1,
    /// retained) until the broker acknowledges it; see [`StatusBoard`].
    pub fn status(&self, device: &DeviceId, status: DeviceStatus) {
        self.statuses.set(device, status);
    }

    pub fn statuses(&self) -> &StatusBoard {
        &self.statuses
    }
}
