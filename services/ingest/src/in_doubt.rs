//! Receive times of readings that may be stored although their board was told to retry.
//!
//! A reading without `ts` gets its receive time here ([`crate::stamps`]). When its
//! publish was sent but not acknowledged (PUBACK timeout, connection lost), ingest answers
//! `503` / `ERR broker_unavailable` — yet the broker may have passed it on before it went
//! away, so it may be stored. The board then sends the same reading again; stamped anew,
//! it would be a second row. So the receive time of such a reading is kept here, by
//! device and values, and the device's next reading without `ts` with exactly the same
//! metrics and values gets it again: the board's retry becomes a retry to storage too
//! (same `(device, metric, ts)`, same value → stored once).
//!
//! Bounded three ways: an entry expires `ttl` after the failed answer, a device keeps at
//! most `per_device` entries (its newest), all devices together at most `capacity` (the
//! oldest are dropped first). An entry is taken once. A reading that merely repeats
//! values after a success finds nothing here and gets a fresh time; one that repeats the
//! values of an in-doubt reading within `ttl` is taken for its retry (the ambiguity a
//! board without a clock leaves; a board that sends `ts` never gets here).
//!
//! Pure: the caller passes the clock (`now`), so the rules are unit-tested below.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// A reading's metrics and values, compared exactly (a retry sends the same text).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Values(Vec<(String, u64)>);

impl Values {
    fn of(metrics: &BTreeMap<String, f64>) -> Self {
        Values(
            metrics
                .iter()
                .map(|(name, v)| (name.clone(), v.to_bits()))
                .collect(),
        )
    }
}

/// One device's in-doubt readings.
#[derive(Debug, Default)]
struct Device {
    /// Sequence numbers of entries with these values, oldest first.
    by_values: HashMap<Values, VecDeque<u64>>,
    /// Every entry by sequence number (oldest first): its values and receive time.
    by_seq: BTreeMap<u64, (Values, DateTime<Utc>)>,
}

/// The in-doubt receive times; see the module docs.
#[derive(Debug)]
pub struct InDoubt {
    ttl: Duration,
    per_device: usize,
    capacity: usize,
    devices: HashMap<String, Device>,
    /// Every entry by age: sequence number → (device, expiry). The first is the oldest.
    order: BTreeMap<u64, (String, Instant)>,
    next: u64,
}

impl InDoubt {
    /// Keeps entries for `ttl`, at most `per_device` per device and `capacity` in all.
    /// A zero `ttl` or `capacity` keeps nothing (every retry is stamped anew).
    pub fn new(ttl: Duration, per_device: usize, capacity: usize) -> Self {
        Self {
            ttl,
            per_device: per_device.max(1),
            capacity,
            devices: HashMap::new(),
            order: BTreeMap::new(),
            next: 0,
        }
    }

    /// Keeps `ts`, the receive time of a reading of `device` with `metrics` that was
    /// answered with a retryable error at `now` while the broker may have it.
    pub fn keep(
        &mut self,
        device: &str,
        metrics: &BTreeMap<String, f64>,
        ts: DateTime<Utc>,
        now: Instant,
    ) {
        if self.ttl.is_zero() || self.capacity == 0 {
            return;
        }
        self.expire(now);
        let seq = self.next;
        self.next += 1;
        let values = Values::of(metrics);
        let entry = self.devices.entry(device.to_owned()).or_default();
        entry
            .by_values
            .entry(values.clone())
            .or_default()
            .push_back(seq);
        entry.by_seq.insert(seq, (values, ts));
        let oldest_of_device = (entry.by_seq.len() > self.per_device)
            .then(|| entry.by_seq.keys().next().copied())
            .flatten();
        self.order.insert(seq, (device.to_owned(), now + self.ttl));
        if let Some(old) = oldest_of_device {
            self.remove(old);
        }
        while self.order.len() > self.capacity {
            let Some(&old) = self.order.keys().next() else {
                break;
            };
            self.remove(old);
        }
    }

    /// The receive time kept for a reading of `device` with exactly `metrics`, if one is
    /// (the oldest such); it is given out once.
    pub fn take(
        &mut self,
        device: &str,
        metrics: &BTreeMap<String, f64>,
        now: Instant,
    ) -> Option<DateTime<Utc>> {
        if self.order.is_empty() {
            return None;
        }
        self.expire(now);
        let entry = self.devices.get(device)?;
        let seq = *entry.by_values.get(&Values::of(metrics))?.front()?;
        self.remove(seq).map(|(_, ts)| ts)
    }

    /// Entries kept (all devices).
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Drops the entries whose time is up.
    fn expire(&mut self, now: Instant) {
        while let Some((&seq, (_, expires))) = self.order.first_key_value() {
            if *expires > now {
                break;
            }
            self.remove(seq);
        }
    }

    /// Removes entry `seq` from every index.
    fn remove(&mut self, seq: u64) -> Option<(Values, DateTime<Utc>)> {
        let (device, _) = self.order.remove(&seq)?;
        let entry = self.devices.get_mut(&device)?;
        let (values, ts) = entry.by_seq.remove(&seq)?;
        if let Some(seqs) = entry.by_values.get_mut(&values) {
            // Removals are nearly always of the oldest, at the front.
            if let Some(i) = seqs.iter().position(|s| *s == seq) {
                seqs.remove(i);
            }
            if seqs.is_empty() {
                entry.by_values.remove(&values);
            }
        }
        if entry.by_seq.is_empty() {
            self.devices.remove(&device);
        }
        Some((values, ts))
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn m(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    fn t(us: i64) -> DateTime<Utc> {
        Utc.timestamp_micros(1_800_000_000_000_000 + us).unwrap()
    }

    const TTL: Duration = Duration::from_secs(120);

    #[test]
    fn a_retry_with_the_same_values_gets_the_kept_time_once() {
        let mut d = InDoubt::new(TTL, 8, 100);
        let now = Instant::now();
        d.keep("gh-1", &m(&[("seq", 7.0)]), t(1), now);
        assert_eq!(d.len(), 1);
        // Another device, other values, another metric name: nothing.
        assert_eq!(d.take("gh-2", &m(&[("seq", 7.0)]), now), None);
        assert_eq!(d.take("gh-1", &m(&[("seq", 8.0)]), now), None);
        assert_eq!(d.take("gh-1", &m(&[("lux", 7.0)]), now), None);
        assert_eq!(d.take("gh-1", &m(&[("seq", 7.0), ("lux", 1.0)]), now), None);
        // The retry.
        assert_eq!(d.take("gh-1", &m(&[("seq", 7.0)]), now), Some(t(1)));
        // A reading repeating the values after that success is a new reading.
        assert_eq!(d.take("gh-1", &m(&[("seq", 7.0)]), now), None);
        assert!(d.is_empty());
        assert!(d.devices.is_empty());
    }

    #[test]
    fn identical_readings_in_doubt_are_given_back_oldest_first() {
        let mut d = InDoubt::new(TTL, 8, 100);
        let now = Instant::now();
        let v = m(&[("temperature", 27.5)]);
        d.keep("gh-1", &v, t(1), now);
        d.keep("gh-1", &v, t(2), now);
        assert_eq!(d.take("gh-1", &v, now), Some(t(1)));
        assert_eq!(d.take("gh-1", &v, now), Some(t(2)));
        assert_eq!(d.take("gh-1", &v, now), None);
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let mut d = InDoubt::new(TTL, 8, 100);
        let now = Instant::now();
        d.keep("gh-1", &m(&[("seq", 1.0)]), t(1), now);
        d.keep(
            "gh-1",
            &m(&[("seq", 2.0)]),
            t(2),
            now + Duration::from_secs(60),
        );
        let later = now + TTL + Duration::from_millis(1);
        assert_eq!(d.take("gh-1", &m(&[("seq", 1.0)]), later), None);
        assert_eq!(d.len(), 1, "the expired one is gone");
        assert_eq!(d.take("gh-1", &m(&[("seq", 2.0)]), later), Some(t(2)));
    }

    #[test]
    fn a_device_keeps_its_newest_entries_only() {
        let mut d = InDoubt::new(TTL, 3, 100);
        let now = Instant::now();
        for i in 0..5 {
            d.keep("gh-1", &m(&[("seq", f64::from(i))]), t(i64::from(i)), now);
        }
        d.keep("gh-2", &m(&[("seq", 0.0)]), t(100), now);
        assert_eq!(d.len(), 4);
        assert_eq!(d.take("gh-1", &m(&[("seq", 1.0)]), now), None);
        assert_eq!(d.take("gh-1", &m(&[("seq", 2.0)]), now), Some(t(2)));
        assert_eq!(d.take("gh-1", &m(&[("seq", 4.0)]), now), Some(t(4)));
        // Another device's entries are not pushed out by gh-1's.
        assert_eq!(d.take("gh-2", &m(&[("seq", 0.0)]), now), Some(t(100)));
    }

    #[test]
    fn all_devices_together_keep_at_most_the_capacity_dropping_the_oldest() {
        let mut d = InDoubt::new(TTL, 8, 1000);
        let now = Instant::now();
        for i in 0..1500_i64 {
            d.keep(&format!("d{i}"), &m(&[("seq", 1.0)]), t(i), now);
        }
        assert_eq!(d.len(), 1000);
        assert_eq!(d.devices.len(), 1000);
        assert_eq!(d.take("d499", &m(&[("seq", 1.0)]), now), None);
        assert_eq!(d.take("d500", &m(&[("seq", 1.0)]), now), Some(t(500)));
        assert_eq!(d.take("d1499", &m(&[("seq", 1.0)]), now), Some(t(1499)));
    }

    #[test]
    fn zero_ttl_or_capacity_keeps_nothing() {
        let now = Instant::now();
        for mut d in [
            InDoubt::new(Duration::ZERO, 8, 100),
            InDoubt::new(TTL, 8, 0),
        ] {
            d.keep("gh-1", &m(&[("seq", 1.0)]), t(1), now);
            assert!(d.is_empty());
            assert_eq!(d.take("gh-1", &m(&[("seq", 1.0)]), now), None);
        }
    }

    #[test]
    fn values_compare_exactly() {
        let mut d = InDoubt::new(TTL, 8, 100);
        let now = Instant::now();
        d.keep("gh-1", &m(&[("temperature", 0.3)]), t(1), now);
        assert_eq!(d.take("gh-1", &m(&[("temperature", 0.1 + 0.2)]), now), None);
        let parsed: f64 = "0.30".parse().unwrap();
        assert_eq!(
            d.take("gh-1", &m(&[("temperature", parsed)]), now),
            Some(t(1))
        );
    }
}
