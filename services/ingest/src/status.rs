//! Retained `online` / `offline` for boards bound over TCP, published until acknowledged.
//!
//! A `HELLO` must be answered at once, even while the broker is away, so a status change
//! is recorded here and published by one background task: QoS 1, retained, and kept
//! until the broker's PUBACK. A publish that fails (broker down, connection lost before
//! the PUBACK) is retried with backoff, so the retained value catches up once the broker
//! is back. Only the newest status per device matters — it is what a late subscriber
//! must see — so a change replaces one not yet published, and a device never has two
//! publishes in flight (an older `online` can never land after a newer `offline`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use lentera_mqtt::Client;
use lentera_protocol::{DeviceId, DeviceStatus, Topics};
use tokio::sync::Notify;
use tokio::time::Instant;

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The statuses not yet acknowledged, and the task that publishes them.
#[derive(Clone)]
pub struct StatusBoard {
    inner: Arc<Inner>,
}

struct Inner {
    /// Device → (newest status, its version). The version tells the task whether the
    /// status it just published is still the newest, or changed meanwhile.
    pending: Mutex<HashMap<DeviceId, (DeviceStatus, u64)>>,
    next_version: AtomicU64,
    wake: Notify,
}

impl StatusBoard {
    /// Starts the publishing task on the current tokio runtime.
    pub fn start(client: Client, topics: Topics) -> StatusBoard {
        let board = StatusBoard {
            inner: Arc::new(Inner {
                pending: Mutex::default(),
                next_version: AtomicU64::new(0),
                wake: Notify::new(),
            }),
        };
        tokio::spawn(board.clone().run(client, topics));
        board
    }

    /// Records `status` as the device's newest; returns at once.
    pub fn set(&self, device: &DeviceId, status: DeviceStatus) {
        let version = self.inner.next_version.fetch_add(1, Ordering::Relaxed);
        self.inner
            .pending
            .lock()
            .unwrap()
            .insert(device.clone(), (status, version));
        self.inner.wake.notify_one();
    }

    /// Statuses not yet acknowledged by the broker.
    pub fn pending(&self) -> usize {
        self.inner.pending.lock().unwrap().len()
    }

    /// Waits (at most `limit`) until every recorded status is acknowledged; used at
    /// shutdown so the boards just disconnected are announced `offline` before ingest
    /// leaves the broker. True when nothing is left.
    pub async fn flush(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.pending() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    async fn run(self, client: Client, topics: Topics) {
        let mut backoff = RETRY_MIN;
        loop {
            let round: Vec<(DeviceId, DeviceStatus, u64)> = self
                .inner
                .pending
                .lock()
                .unwrap()
                .iter()
                .map(|(d, (s, v))| (d.clone(), *s, *v))
                .collect();
            if round.is_empty() {
                // `notify_one` leaves a permit when nobody waits, so a `set` between the
                // snapshot and this wait is not missed.
                self.inner.wake.notified().await;
                continue;
            }
            let results = join_all(round.iter().map(|(device, status, _)| {
                client.publish_acked(topics.status(device), true, status.as_str())
            }))
            .await;
            let mut failed = 0;
            {
                let mut pending = self.inner.pending.lock().unwrap();
                for ((device, status, version), result) in round.iter().zip(results) {
                    match result {
                        Ok(()) => {
                            if pending.get(device).is_some_and(|(_, v)| v == version) {
                                pending.remove(device);
                            }
                        }
                        Err(e) => {
                            failed += 1;
                            tracing::debug!(%device, status = status.as_str(), error = %e, "status not acknowledged; will retry");
                        }
                    }
                }
            }
            if failed == 0 {
                backoff = RETRY_MIN;
                continue;
            }
            tracing::warn!(failed, retry_in = ?backoff, "device status not published; retrying");
            // A new status does not cut the pause short: the broker is the problem.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }
}
