//! Receive times that identify a reading.
//!
//! A reading's identity is `(device, metric, ts)`. A board that sends no `ts` gets its
//! receive time, fixed once at the first hop (ingest for HTTP/TCP, the broker for MQTT)
//! and carried in the payload from then on, so a redelivery keeps it. Two readings of
//! one device must never share it, or the second would be taken for a retry or a
//! correction of the first: [`Stamper`] hands out microseconds that are unique per
//! device — a reading that would collide gets the next free microsecond.
//!
//! Several stamping processes (ingest instances, the broker) must not hand out the same
//! microsecond to one device either. Each owns one residue class: with `stride` n and
//! `offset` k a stamper only hands out microseconds ≡ k (mod n), so no coordination is
//! needed at run time. With n instances a device can still take 1,000,000 / n readings a
//! second from each of them, far beyond any board.

use std::collections::HashMap;

use chrono::{DateTime, TimeZone, Utc};

/// Hands out microsecond receive times, unique per device; see the module docs.
#[derive(Debug)]
pub struct Stamper {
    stride: i64,
    offset: i64,
    /// Last microsecond handed out per device. Only entries at or ahead of the clock can
    /// still cause a collision, so the older ones are pruned as the map grows.
    last: HashMap<String, i64>,
    /// Size at which the next prune runs (twice the size the last one left).
    prune_at: usize,
}

impl Default for Stamper {
    fn default() -> Self {
        Self::new(0, 1)
    }
}

impl Stamper {
    /// A stamper owning the microseconds ≡ `offset` (mod `stride`).
    ///
    /// # Panics
    /// When `stride` is 0 or `offset >= stride` (settings validate this first).
    pub fn new(offset: u32, stride: u32) -> Self {
        assert!(stride > 0 && offset < stride, "offset must be below stride");
        Self {
            stride: i64::from(stride),
            offset: i64::from(offset),
            last: HashMap::new(),
            prune_at: 1024,
        }
    }

    /// The receive time for one reading of `device` received at `now`: the first
    /// microsecond of this stamper's class at or after `now` that `device` has not been
    /// given yet.
    pub fn stamp(&mut self, device: &str, now: DateTime<Utc>) -> DateTime<Utc> {
        let now_us = now.timestamp_micros();
        let mut us = self.align(now_us);
        match self.last.get_mut(device) {
            Some(last) => {
                if us <= *last {
                    us = *last + self.stride;
                }
                *last = us;
            }
            None => {
                if self.last.len() >= self.prune_at {
                    self.prune(now_us);
                }
                self.last.insert(device.to_owned(), us);
            }
        }
        Utc.timestamp_micros(us).single().unwrap_or(now)
    }

    /// Devices remembered (for tests and metrics).
    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    /// The first microsecond ≥ `us` in this stamper's residue class.
    fn align(&self, us: i64) -> i64 {
        let r = (us - self.offset).rem_euclid(self.stride);
        if r == 0 { us } else { us + self.stride - r }
    }

    /// Forgets devices whose last stamp is behind the clock: their next stamp is `now`
    /// or later anyway. Entries ahead of it (a burst, or a clock stepped back) are kept.
    fn prune(&mut self, now_us: i64) {
        self.last.retain(|_, last| *last >= now_us);
        self.prune_at = (self.last.len() * 2).max(1024);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn t(us: i64) -> DateTime<Utc> {
        Utc.timestamp_micros(us).unwrap()
    }

    #[test]
    fn a_burst_in_one_microsecond_gets_consecutive_ones() {
        let mut s = Stamper::default();
        let now = t(1_800_000_000_000_000);
        let got: Vec<i64> = (0..5)
            .map(|_| s.stamp("gh-1", now).timestamp_micros())
            .collect();
        assert_eq!(
            got,
            (0..5)
                .map(|i| now.timestamp_micros() + i)
                .collect::<Vec<_>>()
        );
        // Another device is independent.
        assert_eq!(s.stamp("gh-2", now), now);
    }

    #[test]
    fn the_clock_stepping_back_never_repeats_a_stamp() {
        let mut s = Stamper::default();
        let a = s.stamp("gh-1", t(1_000_000));
        let b = s.stamp("gh-1", t(500_000));
        assert!(b > a);
    }

    #[test]
    fn strided_stampers_never_meet() {
        let mut seen = HashSet::new();
        let mut stampers: Vec<Stamper> = (0..3).map(|k| Stamper::new(k, 3)).collect();
        for i in 0..1000 {
            let now = t(1_000_000 + i / 7);
            for s in &mut stampers {
                assert!(seen.insert(s.stamp("gh-1", now)), "collision at {i}");
            }
        }
        assert_eq!(
            Stamper::new(2, 3).stamp("x", t(9)).timestamp_micros() % 3,
            2
        );
    }

    #[test]
    fn pruning_keeps_what_can_still_collide() {
        let mut s = Stamper::default();
        for i in 0..5000 {
            s.stamp(&format!("d{i}"), t(10));
        }
        // d0..d4999 stamped at 10; the clock moved on, so they were pruned as it grew.
        s.stamp("burst", t(1_000));
        s.stamp("burst", t(1_000));
        for i in 0..5000 {
            s.stamp(&format!("e{i}"), t(2_000));
        }
        assert!(s.len() < 10_000, "{}", s.len());
        // A device stamped ahead of the clock is remembered across prunes.
        let ahead = s.stamp("e1", t(2_000));
        assert_eq!(ahead, t(2_001));
    }
}
