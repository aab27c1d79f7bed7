//! Per-key token buckets (per-device message quotas, the registry's miss lookups).
//!
//! A bucket holds up to `burst` tokens and refills at `rate_per_sec`; each message takes
//! one. The map is split into shards, each behind its own mutex, so doors on several
//! threads rarely contend. Memory is bounded: a full bucket is the same as no bucket, so
//! full buckets are dropped by a periodic sweep, and a shard that is still over its share
//! of `max_keys` after a sweep drops its fullest buckets (those keys merely get a fresh
//! burst, the safe direction to err for a bound that only strangers can reach).

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

const SHARDS: usize = 16;
/// Keys kept by [`RateLimiter::new`], all shards together.
pub const DEFAULT_MAX_KEYS: usize = 100_000;
/// Calls to a shard between two sweeps of its full buckets.
const SWEEP_EVERY: u32 = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Debug, Default)]
struct Shard {
    buckets: HashMap<String, Bucket>,
    calls: u32,
}

/// Token buckets by key. `Send + Sync`; share it behind an `Arc`.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    max_per_shard: usize,
    hasher: RandomState,
    shards: Vec<Mutex<Shard>>,
}

impl RateLimiter {
    /// `rate_per_sec` sustained, `burst` at once (at least 1). A rate of 0 (or not a
    /// positive finite number) means unlimited: [`check`](Self::check) always passes.
    pub fn new(rate_per_sec: f64, burst: u32) -> Self {
        Self::with_max_keys(rate_per_sec, burst, DEFAULT_MAX_KEYS)
    }

    /// Like [`new`](Self::new), keeping at most about `max_keys` buckets.
    pub fn with_max_keys(rate_per_sec: f64, burst: u32, max_keys: usize) -> Self {
        Self {
            rate: rate_per_sec,
            burst: f64::from(burst.max(1)),
            max_per_shard: max_keys.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn unlimited(&self) -> bool {
        !(self.rate.is_finite() && self.rate > 0.0)
    }

    /// Takes one token from `key`'s bucket, or says how long until one is available
    /// (for `Retry-After`, see [`retry_after_secs`]).
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        if self.unlimited() {
            return Ok(());
        }
        let shard = &self.shards[self.hasher.hash_one(key) as usize % SHARDS];
        let mut shard = shard.lock();
        shard.calls = shard.calls.wrapping_add(1);
        if shard.calls.is_multiple_of(SWEEP_EVERY) || shard.buckets.len() >= self.max_per_shard {
            self.sweep(&mut shard, now);
        }
        match shard.buckets.get_mut(key) {
            Some(b) => {
                b.tokens = self.refilled(b, now);
                b.last = now;
                if b.tokens >= 1.0 {
                    b.tokens -= 1.0;
                    Ok(())
                } else {
                    Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
                }
            }
            None => {
                shard.buckets.insert(
                    key.to_owned(),
                    Bucket {
                        tokens: self.burst - 1.0,
                        last: now,
                    },
                );
                Ok(())
            }
        }
    }

    fn refilled(&self, b: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        (b.tokens + elapsed * self.rate).min(self.burst)
    }

    fn sweep(&self, shard: &mut Shard, now: Instant) {
        shard.buckets.retain(|_, b| {
            (b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * self.rate)
                < self.burst
        });
        let over = (shard.buckets.len() + 1).saturating_sub(self.max_per_shard);
        if over > 0 {
            // Still full of active keys: drop the fullest (closest to a fresh bucket).
            let mut levels: Vec<(f64, String)> = shard
                .buckets
                .iter()
                .map(|(k, b)| (self.refilled(b, now), k.clone()))
                .collect();
            levels.sort_by(|a, b| b.0.total_cmp(&a.0));
            for (_, k) in levels.into_iter().take(over.max(self.max_per_shard / 4)) {
                shard.buckets.remove(&k);
            }
        }
    }

    /// Buckets currently kept (for tests and metrics).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().buckets.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whole seconds for an HTTP `Retry-After` header: rounded up, at least 1.
pub fn retry_after_secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_sustained_rate_with_retry_after() {
        let l = RateLimiter::new(2.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check_at("a", t0).is_ok());
        }
        let wait = l.check_at("a", t0).unwrap_err();
        // Empty bucket at 2/s: the next token in 0.5 s.
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        assert_eq!(retry_after_secs(wait), 1);
        // Another key is not affected.
        assert!(l.check_at("b", t0).is_ok());
        // Half a second later exactly one more.
        let t1 = t0 + Duration::from_millis(500);
        assert!(l.check_at("a", t1).is_ok());
        assert!(l.check_at("a", t1).is_err());
        // A long pause refills up to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(l.check_at("a", t2).is_ok());
        }
        assert!(l.check_at("a", t2).is_err());
    }

    #[test]
    fn slow_rates_give_long_retry_after() {
        let l = RateLimiter::new(0.1, 1);
        let t0 = Instant::now();
        assert!(l.check_at("k", t0).is_ok());
        let wait = l.check_at("k", t0).unwrap_err();
        assert_eq!(retry_after_secs(wait), 10);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let l = RateLimiter::new(0.0, 1);
        for _ in 0..1000 {
            assert!(l.check("x").is_ok());
        }
        assert!(l.is_empty());
    }

    #[test]
    fn memory_is_bounded_and_full_buckets_are_forgotten() {
        let l = RateLimiter::with_max_keys(1.0, 5, 160);
        let t0 = Instant::now();
        for i in 0..10_000 {
            let _ = l.check_at(&format!("k{i}"), t0);
        }
        assert!(l.len() <= 160 + SHARDS, "{}", l.len());
        // Later, every bucket is full again: a sweep drops them all.
        let later = t0 + Duration::from_secs(10);
        for shard in &l.shards {
            l.sweep(&mut shard.lock(), later);
        }
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn a_limited_key_stays_limited_while_strangers_churn() {
        // The flooding key's empty bucket is the last to be evicted.
        let l = RateLimiter::with_max_keys(1.0, 2, 32);
        let t0 = Instant::now();
        assert!(l.check_at("flood", t0).is_ok());
        assert!(l.check_at("flood", t0).is_ok());
        for i in 0..1000 {
            let _ = l.check_at(&format!("s{i}"), t0);
            assert!(l.check_at("flood", t0).is_err(), "after {i} strangers");
        }
    }
}
