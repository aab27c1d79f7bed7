//! Turning validated readings into acknowledged MQTT messages.
//!
//! Both entries (HTTP and TCP) end here, so "accepted" means the same thing everywhere:
//! the broker has sent PUBACK for every reading's canonical payload.

use futures_util::future::join_all;
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
    /// Also starts the status task, so call it inside a tokio runtime.
    pub fn new(client: Client, topics: Topics) -> Self {
        let statuses = StatusBoard::start(client.clone(), topics.clone());
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
