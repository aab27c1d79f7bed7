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
    /// When the newest item arrived: a batch that closes by age long after its last
    /// item sat idle, which [`WindowWatch`] reads as a sign of the broker's window.
    last_at: Option<Instant>,
}

impl<T> Batch<T> {
    pub fn new(policy: BatchPolicy) -> Self {
        Self {
            policy,
            items: Vec::with_capacity(policy.max_items),
            opened_at: None,
            last_at: None,
        }
    }

    pub fn push(&mut self, item: T, now: Instant) {
        if self.items.is_empty() {
            self.opened_at = Some(now);
        }
        self.items.push(item);
        self.last_at = Some(now);
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

    /// What [`WindowWatch`] needs to know about the batch about to be taken.
    pub fn shape(&self, now: Instant) -> Option<Shape> {
        Some(Shape {
            len: self.items.len(),
            full: self.is_full(),
            opened_at: self.opened_at?,
            last_at: self.last_at?,
            closed_at: now,
        })
    }

    /// Empties the batch after a successful write.
    pub fn take(&mut self) -> Vec<T> {
        self.opened_at = None;
        self.last_at = None;
        std::mem::take(&mut self.items)
    }
}

/// A closed batch, as [`WindowWatch`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub len: usize,
    pub full: bool,
    pub opened_at: Instant,
    pub last_at: Instant,
    pub closed_at: Instant,
}

/// Consecutive window-shaped batches before [`WindowWatch`] says so.
pub const WINDOW_STREAK: u32 = 3;

/// Notices batches capped by the broker's in-flight window rather than by the stream.
///
/// The historian acknowledges only after a commit, so a broker that lets fewer than
/// `batch_size` messages be unacknowledged stops sending at its window: every batch then
/// holds exactly that many, goes quiet, closes by age, and the next one fills again as
/// soon as the acknowledgements are out — throughput capped at window ÷ `max_wait`. A
/// batch looks like that when it closed by age, not full, with at least two items; its
/// last item arrived at least a quarter of `max_wait` before the close; it opened within
/// half of `max_wait` after the batch before it closed; and it is as large as that one.
/// [`WINDOW_STREAK`] such batches in a row are reported. A quiet or bursty stream gives
/// batches of varying size, or with pauses between them, and is not reported.
#[derive(Debug, Default)]
pub struct WindowWatch {
    last: Option<Shape>,
    streak: u32,
}

impl WindowWatch {
    /// Observes a batch as it closes; returns its size when it completes (or extends) a
    /// streak of window-shaped batches.
    pub fn observe(&mut self, b: Shape, policy: BatchPolicy) -> Option<usize> {
        let idle = b.closed_at.saturating_duration_since(b.last_at) >= policy.max_wait / 4;
        if b.full || b.len < 2 || !idle {
            self.last = None;
            self.streak = 0;
            return None;
        }
        let follows = self.last.is_some_and(|prev| {
            prev.len == b.len
                && b.opened_at.saturating_duration_since(prev.closed_at) <= policy.max_wait / 2
        });
        self.streak = if follows { self.streak + 1 } else { 0 };
        self.last = Some(b);
        // `streak` counts the batches after the first of the run.
        (self.streak + 1 >= WINDOW_STREAK).then_some(b.len)
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

    fn shape(len: usize, opened: u64, last: u64, closed: u64, base: Instant) -> Shape {
        let at = |ms| base + Duration::from_millis(ms);
        Shape {
            len,
            full: len >= 3000,
            opened_at: at(opened),
            last_at: at(last),
            closed_at: at(closed),
        }
    }

    #[test]
    fn batches_stuck_at_the_same_size_and_idle_are_reported_after_a_streak() {
        let policy = BatchPolicy::new(3000, Duration::from_millis(100));
        let t = Instant::now();
        let mut w = WindowWatch::default();
        // 64 arrive at once, then nothing until the deadline; the next batch opens right
        // after the acknowledgements of the one before.
        assert_eq!(w.observe(shape(64, 0, 2, 100, t), policy), None);
        assert_eq!(w.observe(shape(64, 105, 107, 205, t), policy), None);
        assert_eq!(w.observe(shape(64, 210, 212, 310, t), policy), Some(64));
        assert_eq!(w.observe(shape(64, 315, 317, 415, t), policy), Some(64));
        // A full batch ends the streak.
        assert_eq!(w.observe(shape(3000, 420, 440, 440, t), policy), None);
        assert_eq!(w.observe(shape(64, 445, 447, 545, t), policy), None);
    }

    #[test]
    fn steady_quiet_or_bursty_streams_are_not_reported() {
        let policy = BatchPolicy::new(3000, Duration::from_millis(100));
        let t = Instant::now();
        let mut w = WindowWatch::default();
        // A steady trickle: items until the deadline (never idle).
        for i in 0..10 {
            let o = i * 101;
            assert_eq!(w.observe(shape(20, o, o + 99, o + 100, t), policy), None);
        }
        // Bursts of the same size every 5 s: idle, but nothing waits at the broker.
        let mut w = WindowWatch::default();
        for i in 0..10 {
            let o = i * 5000;
            assert_eq!(w.observe(shape(20, o, o + 2, o + 100, t), policy), None);
        }
        // Single readings.
        let mut w = WindowWatch::default();
        for i in 0..10 {
            let o = i * 101;
            assert_eq!(w.observe(shape(1, o, o, o + 100, t), policy), None);
        }
        // Sizes that vary.
        let mut w = WindowWatch::default();
        for (i, len) in [64, 63, 64, 62, 64].into_iter().enumerate() {
            let o = i as u64 * 105;
            assert_eq!(w.observe(shape(len, o, o + 2, o + 100, t), policy), None);
        }
    }

    #[test]
    fn zero_size_means_flush_every_item() {
        let mut b = Batch::new(BatchPolicy::new(0, Duration::from_secs(1)));
        let t = Instant::now();
        b.push(1, t);
        assert!(b.is_due(t));
    }
}
