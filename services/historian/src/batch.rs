//! When to flush: the batching decision, pure and clock-free (the caller passes `now`).
//!
//! A batch is flushed when it is full or when its oldest item has waited `max_wait`, so
//! a busy stream gets big efficient transactions and a quiet one still lands within
//! `max_wait`. The consume loop owns the I/O; this module only keeps the items and
//! answers "flush now?" and "until when may I wait?".

use std::time::{Duration, Instant};

/// Flush thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    pub max_items: usize,
    pub max_wait: Duration,
}

impl BatchPolicy {
    pub fn new(max_items: usize, max_wait: Duration) -> Self {
        // A zero-sized batch would never accept an item; treat it as "flush every item".
        Self {
            max_items: max_items.max(1),
            max_wait,
        }
    }
}

/// Items waiting to be written, with the instant the first one arrived.
#[derive(Debug)]
pub struct Batch<T> {
    policy: BatchPolicy,
    items: Vec<T>,
    opened_at: Option<Instant>,
}

impl<T> Batch<T> {
    pub fn new(policy: BatchPolicy) -> Self {
        Self {
            policy,
            items: Vec::with_capacity(policy.max_items),
            opened_at: None,
        }
    }

    pub fn push(&mut self, item: T, now: Instant) {
        if self.items.is_empty() {
            self.opened_at = Some(now);
        }
        self.items.push(item);
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// No more items may be added before a flush (the caller stops reading, which
    /// pushes back on the broker instead of buffering without limit).
    pub fn is_full(&self) -> bool {
        self.items.len() >= self.policy.max_items
    }

    /// The instant the batch becomes due by age; `None` while empty (nothing to wait for).
    pub fn deadline(&self) -> Option<Instant> {
        self.opened_at.map(|t| t + self.policy.max_wait)
    }

    /// True when the batch should be written now.
    pub fn is_due(&self, now: Instant) -> bool {
        self.is_full() || self.deadline().is_some_and(|d| now >= d)
    }

    pub fn items(&self) -> &[T] {
        &self.items
    }

    /// Empties the batch after a successful write.
    pub fn take(&mut self) -> Vec<T> {
        self.opened_at = None;
        std::mem::take(&mut self.items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BatchPolicy {
        BatchPolicy::new(3, Duration::from_millis(100))
    }

    #[test]
    fn empty_batch_is_never_due_and_has_no_deadline() {
        let b: Batch<u8> = Batch::new(policy());
        let t = Instant::now();
        assert!(!b.is_due(t + Duration::from_secs(3600)));
        assert_eq!(b.deadline(), None);
    }

    #[test]
    fn a_full_batch_is_due_immediately() {
        let mut b = Batch::new(policy());
        let t = Instant::now();
        b.push(1, t);
        b.push(2, t);
        assert!(!b.is_due(t));
        b.push(3, t);
        assert!(b.is_full());
        assert!(b.is_due(t));
    }

    #[test]
    fn a_partial_batch_is_due_when_its_oldest_item_has_waited_max_wait() {
        let mut b = Batch::new(policy());
        let t = Instant::now();
        b.push(1, t);
        // A later item does not extend the deadline: latency is bounded by the oldest.
        b.push(2, t + Duration::from_millis(90));
        assert_eq!(b.deadline(), Some(t + Duration::from_millis(100)));
        assert!(!b.is_due(t + Duration::from_millis(99)));
        assert!(b.is_due(t + Duration::from_millis(100)));
    }

    #[test]
    fn take_empties_and_resets_the_clock() {
        let mut b = Batch::new(policy());
        let t = Instant::now();
        b.push(1, t);
        b.push(2, t);
        assert_eq!(b.take(), vec![1, 2]);
        assert!(b.is_empty());
        assert_eq!(b.deadline(), None);
        let later = t + Duration::from_secs(10);
        b.push(3, later);
        assert!(!b.is_due(later + Duration::from_millis(50)));
    }

    #[test]
    fn zero_size_means_flush_every_item() {
        let mut b = Batch::new(BatchPolicy::new(0, Duration::from_secs(1)));
        let t = Instant::now();
        b.push(1, t);
        assert!(b.is_due(t));
    }
}
