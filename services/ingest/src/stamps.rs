//! Receive times for readings that come without `ts`, one source for every door.
//!
//! HTTP (`/api/v1/readings`, SenML, `/sensor`) and TCP lines all stamp through one
//! [`Stamps`]: a [`lentera_protocol::Stamper`] behind a mutex, so three readings of one
//! device in one request get three distinct microseconds (they were one millisecond, and
//! the historian's `(device, metric, ts)` key kept one of them). With several ingest
//! instances each owns one residue class (`ingest.instance` of `ingest.instances`), so two
//! instances never hand one device the same microsecond either.
//!
//! A request takes the lock once ([`Stamps::receipt`]) and stamps all its readings under
//! it; the receipt holds no lock across an `.await`.
//!
//! The same lock guards the in-doubt receive times ([`crate::in_doubt`]): a door that
//! answers a retryable error after its publish may have reached the broker calls
//! [`Stamps::failed`], and the next request's [`Receipt::settle`] gives a reading with
//! the same device and values its first receive time again, so a board's retry is stored
//! once. Every door does the same three steps: stamp while validating, settle, publish
//! (and on failure, `failed`).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lentera_bootstrap::Counter;
use lentera_mqtt::PublishError;
use lentera_protocol::{DeviceId, Reading, Stamper};

use crate::in_doubt::InDoubt;

/// Where a reading's `ts` came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The board sent it.
    Board,
    /// A new receive time from this request.
    Fresh,
    /// The receive time of an in-doubt reading with the same values: this is its retry.
    Reused,
}

/// One request's (or line's) readings, with where each one's `ts` came from.
#[derive(Debug, Default)]
pub struct Received {
    pub readings: Vec<Reading>,
    /// One per reading.
    pub origins: Vec<Origin>,
}

impl Received {
    /// A request of one reading.
    pub fn one(reading: Reading, origin: Origin) -> Self {
        let mut r = Self::default();
        r.push(reading, origin);
        r
    }

    pub fn push(&mut self, reading: Reading, origin: Origin) {
        self.readings.push(reading);
        self.origins.push(origin);
    }

    pub fn len(&self) -> usize {
        self.readings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.readings.is_empty()
    }
}

/// How long and how many in-doubt receive times are kept ([`crate::in_doubt`]).
#[derive(Debug, Clone, Copy)]
pub struct InDoubtLimits {
    /// Zero keeps none.
    pub ttl: Duration,
    pub per_device: usize,
    pub capacity: usize,
}

impl Default for InDoubtLimits {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(120),
            per_device: 1000,
            capacity: 100_000,
        }
    }
}

struct Inner {
    stamper: Stamper,
    in_doubt: InDoubt,
}

/// `lentera_ingest_stamps_reused_total` and `_in_doubt_total`, when wired to metrics.
#[derive(Clone, Default)]
struct Counters {
    reused: Option<Counter>,
    in_doubt: Option<Counter>,
}

/// Cheap to clone; every clone shares the one stamper and its in-doubt times.
#[derive(Clone)]
pub struct Stamps {
    inner: Arc<Mutex<Inner>>,
    counters: Counters,
}

impl std::fmt::Debug for Stamps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stamps").finish_non_exhaustive()
    }
}

impl Default for Stamps {
    fn default() -> Self {
        Self::new(0, 1)
    }
}

impl Stamps {
    /// The stamper of instance `instance` of `instances` (validated by the settings), with
    /// the default in-doubt limits.
    pub fn new(instance: u32, instances: u32) -> Self {
        Self::with_limits(instance, instances, InDoubtLimits::default())
    }

    pub fn with_limits(instance: u32, instances: u32, limits: InDoubtLimits) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                stamper: Stamper::new(instance, instances),
                in_doubt: InDoubt::new(limits.ttl, limits.per_device, limits.capacity),
            })),
            counters: Counters::default(),
        }
    }

    /// Counts reused receive times on `reused` and readings left in doubt on `in_doubt`.
    pub fn counting(mut self, reused: Counter, in_doubt: Counter) -> Self {
        self.counters = Counters {
            reused: Some(reused),
            in_doubt: Some(in_doubt),
        };
        self
    }

    /// Locks the stamper for one request, received now.
    pub fn receipt(&self) -> Receipt<'_> {
        Receipt {
            inner: self.lock(),
            counters: &self.counters,
            now: Utc::now(),
        }
    }

    /// [`Receipt::settle`] under a lock of its own, for a door that stamped under an
    /// earlier one.
    pub fn settle(&self, received: &mut Received) {
        self.receipt().settle(received);
    }

    /// After the publish of `received` failed with `error` and the board was told to
    /// retry: keeps the receive times the broker may still have — every stamped reading's
    /// when the publish may have been sent (see [`may_have_been_sent`]), and always those
    /// that were themselves a retry's (their first attempt may be stored).
    pub fn failed(&self, received: &Received, error: &PublishError) {
        let sent = may_have_been_sent(error, received.len());
        let now = Instant::now();
        let mut kept = 0;
        {
            let mut inner = self.lock();
            for (r, origin) in received.readings.iter().zip(&received.origins) {
                let keep = match origin {
                    Origin::Board => false,
                    Origin::Fresh => sent,
                    Origin::Reused => true,
                };
                if keep {
                    inner
                        .in_doubt
                        .keep(r.device.as_str(), &r.metrics, r.ts, now);
                    kept += 1;
                }
            }
        }
        if kept > 0 {
            tracing::debug!(kept, %error, "receive times kept for the boards' retries");
            if let Some(c) = &self.counters.in_doubt {
                c.add(kept);
            }
        }
    }

    /// In-doubt receive times kept now (tests, diagnostics).
    pub fn in_doubt(&self) -> usize {
        self.lock().in_doubt.len()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether a publish of `n` readings that failed with `error` may have reached the
/// broker. A PUBACK timeout or a lost connection: the publish was sent. Not connected or
/// overloaded: a single publish was never sent; but a batch goes out in chunks, so an
/// earlier chunk may have been sent (even acknowledged) before a later one failed.
pub fn may_have_been_sent(error: &PublishError, n: usize) -> bool {
    match error {
        PublishError::Timeout | PublishError::ConnectionLost => true,
        PublishError::NotConnected | PublishError::Overloaded => n > 1,
    }
}

/// One request's hold on the stamper, with its receive time.
pub struct Receipt<'a> {
    inner: MutexGuard<'a, Inner>,
    counters: &'a Counters,
    now: DateTime<Utc>,
}

impl Receipt<'_> {
    /// When the request arrived: what the limits compare `ts` with.
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// A receive time for one reading of `device`, unique for the device.
    pub fn stamp(&mut self, device: &DeviceId) -> DateTime<Utc> {
        let now = self.now;
        self.inner.stamper.stamp(device.as_str(), now)
    }

    /// The stamper itself, for code that takes one (`&mut Stamper`).
    pub fn stamper(&mut self) -> &mut Stamper {
        &mut self.inner.stamper
    }

    /// Gives each freshly stamped reading of a request that passed every check the
    /// receive time of an in-doubt reading of its device with the same values, if there
    /// is one: the board is retrying it ([`crate::in_doubt`]). Call it once the whole
    /// request is accepted for publishing, so a refused request takes nothing.
    pub fn settle(&mut self, received: &mut Received) {
        if self.inner.in_doubt.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut reused = 0;
        for (r, origin) in received.readings.iter_mut().zip(&mut received.origins) {
            if *origin != Origin::Fresh {
                continue;
            }
            if let Some(ts) = self.inner.in_doubt.take(r.device.as_str(), &r.metrics, now) {
                r.ts = ts;
                *origin = Origin::Reused;
                reused += 1;
            }
        }
        if reused > 0 {
            tracing::debug!(
                reused,
                "a board's retry gets its readings' first receive times"
            );
            if let Some(c) = &self.counters.reused {
                c.add(reused);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_request_hands_one_device_distinct_microseconds() {
        let stamps = Stamps::default();
        let d = DeviceId::parse("gh-1").unwrap();
        let mut r = stamps.receipt();
        let a = r.stamp(&d);
        let b = r.stamp(&d);
        assert!(b > a);
        assert_eq!((b - a).num_microseconds(), Some(1));
        drop(r);
        // The next request continues after the last stamp, even within one microsecond.
        let c = stamps.receipt().stamp(&d);
        assert!(c > b);
    }

    #[test]
    fn an_instance_stamps_only_its_residue_class() {
        let stamps = Stamps::new(2, 3);
        let d = DeviceId::parse("gh-1").unwrap();
        let mut r = stamps.receipt();
        for _ in 0..10 {
            assert_eq!(r.stamp(&d).timestamp_micros().rem_euclid(3), 2);
        }
    }
    /// One reading without `ts` of `device` with `seq`, stamped by `receipt`.
    fn received(receipt: &mut Receipt<'_>, device: &DeviceId, seq: f64) -> Received {
        let ts = receipt.stamp(device);
        let reading = Reading::new(device.clone(), ts, [("seq".to_owned(), seq)]).unwrap();
        Received::one(reading, Origin::Fresh)
    }

    /// A request as a door handles it: stamp, settle; then the publish's outcome.
    fn request(stamps: &Stamps, seq: f64, outcome: Result<(), PublishError>) -> Received {
        let d = DeviceId::parse("gh-1").unwrap();
        let r = {
            let mut receipt = stamps.receipt();
            let mut r = received(&mut receipt, &d, seq);
            receipt.settle(&mut r);
            r
        };
        if let Err(e) = outcome {
            stamps.failed(&r, &e);
        }
        r
    }

    #[test]
    fn a_retry_after_a_publish_in_doubt_gets_the_first_receive_time() {
        let stamps = Stamps::default();
        let first = request(&stamps, 1.0, Err(PublishError::ConnectionLost));
        assert_eq!(stamps.in_doubt(), 1);
        // Never sent this time, but the first attempt may be stored: still in doubt.
        let second = request(&stamps, 1.0, Err(PublishError::NotConnected));
        assert_eq!(second.origins, [Origin::Reused]);
        assert_eq!(second.readings[0].ts, first.readings[0].ts);
        assert_eq!(stamps.in_doubt(), 1);
        let third = request(&stamps, 1.0, Ok(()));
        assert_eq!(third.origins, [Origin::Reused]);
        assert_eq!(third.readings[0].ts, first.readings[0].ts);
        assert_eq!(stamps.in_doubt(), 0);
        // The same values after a success: a new reading, a new time.
        let fourth = request(&stamps, 1.0, Ok(()));
        assert_eq!(fourth.origins, [Origin::Fresh]);
        assert!(fourth.readings[0].ts > first.readings[0].ts);
    }

    #[test]
    fn a_publish_never_sent_leaves_nothing_in_doubt() {
        let stamps = Stamps::default();
        let first = request(&stamps, 1.0, Err(PublishError::NotConnected));
        request(&stamps, 2.0, Err(PublishError::Overloaded));
        assert_eq!(stamps.in_doubt(), 0);
        let retry = request(&stamps, 1.0, Ok(()));
        assert_eq!(retry.origins, [Origin::Fresh]);
        assert!(retry.readings[0].ts > first.readings[0].ts);
        // A timeout was sent.
        request(&stamps, 3.0, Err(PublishError::Timeout));
        assert_eq!(stamps.in_doubt(), 1);
    }

    #[test]
    fn a_failed_batch_is_in_doubt_whatever_the_error_and_a_board_ts_never_is() {
        assert!(may_have_been_sent(&PublishError::NotConnected, 2));
        assert!(may_have_been_sent(&PublishError::Overloaded, 2));
        assert!(!may_have_been_sent(&PublishError::Overloaded, 1));
        let stamps = Stamps::default();
        let d = DeviceId::parse("gh-1").unwrap();
        let batch = {
            let mut receipt = stamps.receipt();
            let mut r = received(&mut receipt, &d, 1.0);
            let given = Reading::new(d.clone(), receipt.now(), [("seq".to_owned(), 2.0)]);
            r.push(given.unwrap(), Origin::Board);
            r
        };
        stamps.failed(&batch, &PublishError::Overloaded);
        assert_eq!(stamps.in_doubt(), 1);
        // Validated but refused (a later reading was bad): settle is never reached.
        {
            let mut receipt = stamps.receipt();
            received(&mut receipt, &d, 1.0);
        }
        assert_eq!(stamps.in_doubt(), 1);
        let retry = {
            let mut receipt = stamps.receipt();
            let mut r = received(&mut receipt, &d, 1.0);
            receipt.settle(&mut r);
            r
        };
        assert_eq!(retry.readings[0].ts, batch.readings[0].ts);
        assert_eq!(stamps.in_doubt(), 0);
    }
}
