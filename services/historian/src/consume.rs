//! The consume loop: deliveries → batch → one transaction → acknowledgements.
//!
//! The guarantee this file exists for: a delivery is acknowledged only after the
//! transaction holding it has committed, so a crash at any point loses nothing (the
//! broker redelivers, and `write::store` makes redelivery idempotent for readings). A
//! batch PostgreSQL refuses for what is in it is taken apart by [`crate::isolate`], the
//! refused deliveries kept as dead letters. A failed write — PostgreSQL down, or slower
//! than `historian.write_timeout_ms`, e.g. behind a lock — keeps the batch, marks the
//! database check not-ready and retries with backoff; while it retries the loop fills at most [`WRITES_IN_FLIGHT`] more batches and
//! then reads no more deliveries, so the pressure goes back to the broker, not into
//! memory. It also watches the batches' shape for the broker's in-flight window capping
//! them ([`WindowWatch`]) and warns once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lentera_bootstrap::{Check, Counter, Gauge, Observability};
use lentera_db::write::{Record, Rejected};
use lentera_mqtt::{Client, Delivery, QoS};
use lentera_protocol::{Limits, Stamper, Topics};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::batch::{Batch, BatchPolicy, WindowWatch};
use crate::maintenance::retention_cutoff;
use crate::record::{self, Outcome};

/// First and longest pause between attempts to write a failed batch.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Batches being written at once, each on its own pool connection (see [`Consumer::run`]).
const WRITES_IN_FLIGHT: usize = 2;
/// How long shutdown keeps retrying the last batch before leaving it to redelivery.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The historian's metrics, registered once.
#[derive(Clone)]
pub struct Metrics {
    readings_stored: Counter,
    batches: Counter,
    batch_errors: Counter,
    acked: Counter,
    capped: Counter,
    skipped: Counter,
    last_batch_size: Gauge,
    pending: Gauge,
    invalid: HashMap<&'static str, Counter>,
    replaced: Counter,
    refused: Counter,
    dead_letters: Counter,
    dead_letters_lost: Counter,
    /// Month partitions dropped by retention.
    pub partitions_dropped: Counter,
}

impl Metrics {
    pub fn new(obs: &Observability) -> Self {
        let invalid = record::invalid_codes()
            .map(|code| {
                let c = obs.counter(
                    "invalid_payloads_total",
                    "Deliveries that can never be stored as sent, by code: acknowledged, kept as dead letters and reported on the device's error topic.",
                    &[("code", code)],
                );
                (code, c)
            })
            .collect();
        Self {
            readings_stored: obs.counter(
                "readings_stored_total",
                "Reading rows inserted (redelivered duplicates excluded).",
                &[],
            ),
            batches: obs.counter("batches_total", "Batches committed.", &[]),
            acked: obs.counter(
                "deliveries_acked_total",
                "Deliveries acknowledged to the broker (each only after its batch committed).",
                &[],
            ),
            capped: obs.counter(
                "batches_window_capped_total",
                "Batches that closed by age at the same size as the ones before, idle, as when the broker's in-flight window is below batch_size.",
                &[],
            ),
            batch_errors: obs.counter(
                "batch_errors_total",
                "Failed attempts to write a batch (each is retried).",
                &[],
            ),
            skipped: obs.counter(
                "skipped_total",
                "Valid deliveries deliberately not stored (retained replays, readings older than the retention period).",
                &[],
            ),
            last_batch_size: obs
                .gauge("last_batch_size", "Deliveries in the last committed batch."),
            pending: obs.gauge(
                "pending_deliveries",
                "Deliveries in the batch being built, not yet committed nor acknowledged.",
            ),
            invalid,
            replaced: obs.counter(
                "readings_replaced_total",
                "Stored readings replaced by a later one with the same device, metric and ts but another value (corrections).",
                &[],
            ),
            refused: obs.counter(
                "storage_refused_total",
                "Deliveries PostgreSQL refused for what they hold (not an outage), kept as dead letters.",
                &[],
            ),
            dead_letters: obs.counter(
                "dead_letters_total",
                "Rows written to rejected_readings (invalid payloads, storage refusals, refusals the broker reported).",
                &[],
            ),
            dead_letters_lost: obs.counter(
                "dead_letters_lost_total",
                "Dead letters PostgreSQL refused too, logged and dropped (should stay 0).",
                &[],
            ),
            partitions_dropped: obs.counter(
                "partitions_dropped_total",
                "Month partitions of readings dropped by retention.",
                &[],
            ),
        }
    }
}

/// A delivery waiting for its batch to commit; `record` is `None` for deliveries that
/// are only to be acknowledged (invalid or skipped) — they still wait, so that
/// acknowledgements go out in the order the broker sent the messages.
pub struct Pending {
    pub delivery: Delivery,
    pub record: Option<Record>,
}

pub struct Consumer {
    pub pool: PgPool,
    pub client: Client,
    pub topics: Topics,
    /// `[limits]`, applied to telemetry that boards publish straight to MQTT.
    pub limits: Limits,
    /// `historian.retention_days`: older readings are not stored (0 = keep all).
    pub retention_days: u32,
    pub policy: BatchPolicy,
    /// `historian.write_timeout_ms`: a batch write taking longer fails and is retried.
    pub write_timeout: Option<Duration>,
    pub metrics: Metrics,
    /// False while the database refuses writes.
    pub db_ready: Check,
    /// Receive times for telemetry that arrives without `ts` (from another broker).
    pub stamper: Mutex<Stamper>,
}

impl Consumer {
    /// Runs until `stop` turns true, then writes and acknowledges the batch in hand.
    ///
    /// Batches are written while the next one is read, up to [`WRITES_IN_FLIGHT`] at
    /// once on their own connections: on two cores PostgreSQL then works on one batch's
    /// `COPY` while it commits the one before, and the JSON parsing and the MQTT path
    /// overlap both. Each write acknowledges its deliveries only after the write before
    /// it has acknowledged its own, so acknowledgements still go out in the order the
    /// broker delivered the messages (MQTT requires it), whatever order the commits end.
    pub async fn run(self, mut rx: mpsc::Receiver<Delivery>, mut stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let mut batch = Batch::new(this.policy);
        let mut writing: VecDeque<tokio::task::JoinHandle<bool>> = VecDeque::new();
        // Resolves once the newest write has acknowledged (or given up: dropped unsent).
        let mut acked: Option<oneshot::Receiver<()>> = None;
        let mut window = WindowWatch::default();
        let mut warned = false;
        loop {
            let deadline = batch.deadline();
            tokio::select! {
                biased;
                _ = stopped(&mut stop) => break,
                d = rx.recv(), if !batch.is_full() => match d {
                    Some(d) => this.accept(&mut batch, d),
                    None => break,
                },
                _ = sleep_until(deadline), if deadline.is_some() => {}
            }
            let now = Instant::now().into_std();
            if batch.is_due(now) {
                if let Some(size) = batch
                    .shape(now)
                    .and_then(|b| window.observe(b, this.policy))
                {
                    this.metrics.capped.inc();
                    if !warned {
                        warned = true;
                        tracing::warn!(
                            size,
                            batch_size = this.policy.max_items,
                            "batches keep closing at {size} deliveries, idle until batch_interval_ms: the broker \
                             probably allows only {size} unacknowledged messages in flight to this client \
                             (Lentera broker.max_inflight, Mosquitto max_inflight_messages); raise it to at \
                             least historian.batch_size, or throughput stays near {size} per batch_interval_ms"
                        );
                    }
                }
                if writing.len() >= WRITES_IN_FLIGHT
                    && let Some(w) = writing.pop_front()
                    && !w.await.unwrap_or(false)
                {
                    return;
                }
                let items = batch.take();
                this.metrics.pending.set(0);
                let (done, next) = oneshot::channel();
                let previous = acked.replace(next);
                let (this, mut stop) = (this.clone(), stop.clone());
                writing.push_back(tokio::spawn(async move {
                    this.flush(items, previous, done, &mut stop).await
                }));
            }
        }
        for w in writing {
            if !w.await.unwrap_or(false) {
                return;
            }
        }
        if !batch.is_empty() {
            tracing::info!(size = batch.len(), "shutting down: writing the last batch");
            let (done, _) = oneshot::channel();
            this.flush(batch.take(), acked, done, &mut stop).await;
        }
    }

    fn accept(&self, batch: &mut Batch<Pending>, delivery: Delivery) {
        let p = &delivery.publish;
        // Read once per delivery: clock reads showed in the profile at 200k/s.
        let now = chrono::Utc::now();
        let outcome = record::classify(
            &self.topics,
            &self.limits,
            &p.topic,
            &p.payload,
            p.retain,
            now,
            // Locked only for a reading that has no `ts` (rare behind our broker).
            &mut |device| self.stamper.lock().unwrap().stamp(device, now),
        );
        let expired = |r: &Record| match (r, retention_cutoff(self.retention_days, now)) {
            (Record::Reading(reading), Some(cutoff)) => reading.ts < cutoff,
            _ => false,
        };
        let record = match outcome {
            // Storing it would re-create a month that retention already dropped (or is
            // about to); it is acknowledged and counted instead, like a retained replay.
            Outcome::Store(r) if expired(&r) => {
                tracing::debug!(topic = %p.topic, "reading older than the retention period, skipped");
                self.metrics.skipped.inc();
                None
            }
            Outcome::Store(r) => Some(r),
            Outcome::Skip(why) => {
                tracing::debug!(topic = %p.topic, why, "skipped");
                self.metrics.skipped.inc();
                None
            }
            Outcome::Invalid(code, detail) => {
                tracing::warn!(topic = %p.topic, code, detail, "invalid payload, kept as a dead letter");
                if let Some(c) = self.metrics.invalid.get(code) {
                    c.inc();
                }
                Some(Record::Rejected(Rejected {
                    device: record::topic_device(&self.topics, &p.topic),
                    at: now,
                    reason: code.to_owned(),
                    detail,
                    source: "mqtt".into(),
                    topic: p.topic.clone(),
                    payload: p.payload.to_vec(),
                }))
            }
        };
        batch.push(Pending { delivery, record }, Instant::now().into_std());
        self.metrics.pending.set(batch.len() as i64);
    }

    /// Writes the batch, retrying with backoff until it commits, then — once the write
    /// before it has acknowledged (`previous`) — acknowledges every delivery in it and
    /// says so on `acked`. Once `stop` is set it retries for at most [`SHUTDOWN_GRACE`]
    /// and returns false if the batch is still unwritten (the broker will redeliver it);
    /// it also returns false, unacknowledged, when the write before it gave up, since
    /// acknowledging past an unacknowledged message would break MQTT's order.
    async fn flush(
        &self,
        mut batch: Vec<Pending>,
        previous: Option<oneshot::Receiver<()>>,
        acked: oneshot::Sender<()>,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut backoff = RETRY_MIN;
        let mut give_up_at = None;
        loop {
            match crate::isolate::write(&self.pool, &self.topics, &mut batch, self.write_timeout)
                .await
            {
                Ok(written) => {
                    if let Some(previous) = previous
                        && previous.await.is_err()
                    {
                        tracing::warn!(
                            size = batch.len(),
                            "committed, but the batch before was given up: left unacknowledged for redelivery"
                        );
                        return false;
                    }
                    let done = batch;
                    for p in &done {
                        self.client.ack(&p.delivery);
                    }
                    let _ = acked.send(());
                    self.db_ready.set(true);
                    let inserted = written.stored.inserted;
                    self.metrics.readings_stored.add(inserted);
                    self.metrics.replaced.add(written.stored.replaced);
                    self.metrics.dead_letters.add(written.stored.rejected);
                    self.metrics.refused.add(written.refused);
                    self.metrics.dead_letters_lost.add(written.lost);
                    for (topic, payload) in written.reports {
                        // Best effort: the dead letter is the record; this tells the board.
                        let _ = self.client.publish(topic, QoS::AtLeastOnce, false, payload);
                    }
                    self.metrics.batches.inc();
                    self.metrics.acked.add(done.len() as u64);
                    self.metrics.last_batch_size.set(done.len() as i64);
                    tracing::debug!(size = done.len(), inserted, "batch committed");
                    return true;
                }
                Err(e) => {
                    self.metrics.batch_errors.inc();
                    self.db_ready.set(false);
                    tracing::warn!(error = %e, size = batch.len(), retry_in = ?backoff, "batch write failed; keeping it");
                }
            }
            if *stop.borrow() {
                let limit = *give_up_at.get_or_insert_with(|| Instant::now() + SHUTDOWN_GRACE);
                if Instant::now() >= limit {
                    tracing::error!(
                        size = batch.len(),
                        "giving up on the last batch at shutdown; unacknowledged, the broker will redeliver it"
                    );
                    return false;
                }
                tokio::time::sleep(backoff.min(limit - Instant::now())).await;
            } else {
                // A stop signal cuts the pause short; the next attempt then runs under the grace limit.
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopped(stop) => {}
                }
            }
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }
}

/// Resolves once the stop flag is set (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
