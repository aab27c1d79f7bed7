//! The queue between the router and one connection, and its bounds.
//!
//! The queue itself is unbounded — it never refuses a message the router wants to
//! keep — and the bounds are counted here instead, per kind of message:
//!
//! - **QoS 0**: at most `queue_capacity` waiting; beyond it a slow subscriber's QoS 0
//!   messages are dropped (`messages_dropped_total{reason="queue_full"}`), as MQTT allows.
//! - **QoS ≥ 1 of a clean session** ("untracked": no owed queue, nothing on disk): at
//!   most `session_queue_capacity` queued *or* sent and not yet acknowledged; beyond it
//!   the newest is dropped (`reason="session_queue_full"`). Below the bound nothing is
//!   ever dropped, however slowly the subscriber reads: the publisher already has its
//!   PUBACK, so the broker owes the message.
//! - **QoS ≥ 1 of a persistent session**: bounded by the session's owed queue in the
//!   router (the same `session_queue_capacity`), so the queue takes them unconditionally.
//!
//! - **Bytes**: topic + payload of the QoS 0 and untracked messages waiting here count
//!   against `session_queue_bytes` for this queue and `queued_bytes_total` for the
//!   broker ([`Budget`]). At either bound the oldest QoS 0 message waiting here gives
//!   way first (`reason="qos0_evicted"`); a message that still does not fit is refused
//!   (`reason="queue_bytes"` / `"queued_bytes_total"`). Owed messages are counted by
//!   the router, which keeps them.
//!
//! So the router never blocks and never waits for a subscriber: a stalled one costs at
//! most its two bounds in memory, and publishers and the other subscribers go on.
//!
//! # Backlog: holding back the publishers a subscriber hears from
//! Bounds alone would drop QoS ≥ 1 messages whenever publishers outrun the delivery to
//! a subscriber — because the broker itself is the bottleneck (4 publishers × 4
//! subscribers on one topic need four deliveries per publish; acknowledging is far
//! cheaper than delivering) or because the subscriber reads slowly. So each queue counts
//! its QoS ≥ 1 **backlog** (queued, not yet written), and a publish that lands in a
//! queue whose backlog is above [`Pressure`]'s high watermark holds *that publisher*
//! back: its next QoS ≥ 1 PUBLISH waits (before routing, so its PUBACK too) until the
//! backlog is below the low watermark, or [`MAX_HOLD`]. Publishers slow to what their
//! subscribers take; publishers whose subscribers keep up are never held.
//!
//! A subscriber that stops making progress — nothing could be sent to it for 500 ms
//! (in-flight window full, socket not draining; `session/delivery.rs`) — takes its messages out
//! of its backlog while it waits, and counts new ones only once it moves again. So a
//! stalled subscriber holds its publishers back for half a second at most and then only
//! fills its own bound; a subscriber that keeps reading, however slowly, is served
//! without loss, at the price of slowing the publishers it hears from.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use std::time::Duration;

use ntex_mqtt::QoS;

use crate::message::Outgoing;
use crate::quota::{Budget, Overflow};

/// Per-connection queue limits (from the settings).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// QoS 0 messages waiting per connection.
    pub qos0: usize,
    /// QoS ≥ 1 messages of a clean session queued or unacknowledged.
    pub untracked: usize,
    /// Bytes of QoS 0 and untracked messages waiting (`session_queue_bytes`).
    pub bytes: usize,
}

/// The backlog watermarks shared by every queue, and how held publishers are woken.
pub struct Pressure {
    high: usize,
    low: usize,
    /// Publishers held back right now, broker-wide (the wake-up is skipped without).
    holders: AtomicUsize,
    /// Called when a backlog falls below the low watermark while someone is held: the
    /// network workers look at the publishers they hold (`net/worker.rs`).
    drained: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

/// The longest a QoS ≥ 1 publisher is held back, so that a counting slip can cost
/// latency but never stop publishing.
pub const MAX_HOLD: Duration = Duration::from_secs(1);

impl Pressure {
    /// Publishers are held above `high` until the backlog is below `high / 2`.
    pub fn new(high: usize) -> Self {
        Self {
            high: high.max(2),
            low: high.max(2) / 2,
            holders: AtomicUsize::new(0),
            drained: OnceLock::new(),
        }
    }

    /// Sets what is called when a backlog drains (once; later calls are ignored).
    pub fn on_drained(&self, f: impl Fn() + Send + Sync + 'static) {
        let _ = self.drained.set(Box::new(f));
    }

    /// A publisher starts (`true`) or stops being held.
    pub fn holding(&self, held: bool) {
        if held {
            self.holders.fetch_add(1, Ordering::Relaxed);
        } else {
            let _ = self
                .holders
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    fn drained(&self) {
        if self.holders.load(Ordering::Relaxed) > 0
            && let Some(f) = self.drained.get()
        {
            f();
        }
    }
}

/// What both ends count.
pub struct Counts {
    qos0: AtomicUsize,
    untracked: AtomicUsize,
    /// QoS ≥ 1 messages queued and not yet written: the backlog publishers are held
    /// back on (not counted while the client is the bottleneck).
    pressing: AtomicUsize,
    /// The worker is waiting for the client (window full, socket not draining).
    client_bound: AtomicBool,
    /// `queue_capacity`: a publisher whose QoS 0 message found the queue full waits
    /// until it is half empty.
    qos0_bound: usize,
    pressure: Arc<Pressure>,
}

impl Counts {
    fn new(pressure: Arc<Pressure>, qos0_bound: usize) -> Self {
        Self {
            qos0_bound,
            qos0: AtomicUsize::new(0),
            untracked: AtomicUsize::new(0),
            pressing: AtomicUsize::new(0),
            client_bound: AtomicBool::new(false),
            pressure,
        }
    }

    /// A QoS ≥ 1 message was queued.
    fn queued(&self) {
        if !self.client_bound.load(Ordering::Relaxed) {
            self.pressing.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The worker took a QoS ≥ 1 message off the queue.
    pub fn taken(&self) {
        if let Ok(before) = self
            .pressing
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            && before == self.pressure.low
        {
            self.pressure.drained();
        }
    }

    /// The worker starts (`true`) or stops waiting for its client: while it waits, its
    /// queue holds no publisher back.
    pub fn client_bound(&self, waiting: bool) {
        self.client_bound.store(waiting, Ordering::Relaxed);
        if waiting && self.pressing.swap(0, Ordering::Relaxed) >= self.pressure.low {
            self.pressure.drained();
        }
    }

    /// QoS ≥ 1 messages waiting to be written (0 while the client is the bottleneck).
    pub fn backlog(&self) -> usize {
        self.pressing.load(Ordering::Relaxed)
    }

    /// The backlog is above the high watermark: whoever published into it waits.
    pub fn backed_up(&self) -> bool {
        self.backlog() > self.pressure.high
    }

    /// Whether a publisher held back on this queue for `held` may go on: the QoS ≥ 1
    /// backlog is below the low watermark and the QoS 0 queue at most half full (or the
    /// client is the bottleneck), or it has waited [`MAX_HOLD`].
    pub fn may_resume(&self, held: Duration) -> bool {
        let qos0_room = self.qos0.load(Ordering::Relaxed) <= self.qos0_bound / 2
            || self.client_bound.load(Ordering::Relaxed);
        (self.backlog() < self.pressure.low && qos0_room) || held >= MAX_HOLD
    }

    /// A QoS 0 message found the queue full while the subscriber keeps reading: its
    /// publisher should wait rather than have more dropped.
    pub fn qos0_backed_up(&self) -> bool {
        !self.client_bound.load(Ordering::Relaxed)
    }

    pub fn pressure(&self) -> &Pressure {
        &self.pressure
    }

    /// The worker took a QoS 0 message off the queue.
    pub fn qos0_taken(&self) {
        if self.qos0.fetch_sub(1, Ordering::Relaxed) == self.qos0_bound / 2 + 1 {
            self.pressure.drained();
        }
    }

    /// An untracked QoS ≥ 1 message was acknowledged, completed or failed.
    pub fn untracked_done(&self) {
        // Saturating: an acknowledgement we cannot attribute must not wrap the count.
        let _ = self
            .untracked
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// QoS ≥ 1 messages of a clean session queued or unacknowledged right now.
    pub fn untracked(&self) -> usize {
        self.untracked.load(Ordering::Relaxed)
    }
}

/// Why [`Outbox::offer`] refused a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// QoS 0 and `queue_capacity` messages already waiting.
    Qos0Full,
    /// QoS ≥ 1 and `session_queue_capacity` already outstanding.
    SessionFull,
    /// Did not fit under a byte bound, even after the oldest QoS 0 gave way.
    Bytes(Overflow),
    /// The connection is gone.
    Closed,
}

/// The queue itself, shared by both ends. A `Mutex<VecDeque>`: the router pushes under
/// its own lock (so there is one pusher at a time) and the worker pops, each holding
/// the mutex for a push or a pop only.
struct Queue {
    items: Mutex<VecDeque<Outgoing>>,
    /// The worker has been told there is something to send and has not yet found the
    /// queue empty since: further pushes need not tell it again (one wake-up per burst,
    /// not per message).
    scheduled: AtomicBool,
    /// The receiving end is gone (the connection closed).
    closed: AtomicBool,
    /// Tells the connection's worker thread that this queue has messages.
    notify: Box<dyn Fn() + Send + Sync>,
    /// Bytes of the waiting messages that are not owed (those the router counts).
    bytes: AtomicUsize,
    budget: Arc<Budget>,
}

impl Drop for Queue {
    fn drop(&mut self) {
        // Whatever was still waiting gives its bytes back.
        let left = self.bytes.swap(0, Ordering::Relaxed);
        self.budget.give(left);
    }
}

impl Queue {
    fn lock(&self) -> parking_lot::MutexGuard<'_, VecDeque<Outgoing>> {
        self.items.lock()
    }

    /// A message not owed left the queue: its bytes are free again.
    fn release(&self, o: &Outgoing) {
        if o.seq.is_none() {
            let n = o.msg.cost();
            let _ = self
                .bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    Some(b.saturating_sub(n))
                });
            self.budget.give(n);
        }
    }

    fn push(&self, out: Outgoing) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        self.lock().push_back(out);
        if !self.scheduled.swap(true, Ordering::SeqCst) {
            (self.notify)();
        }
        true
    }
}

/// The router's end of one connection's queue (`Send`).
pub struct Outbox {
    q: Arc<Queue>,
    counts: Arc<Counts>,
    bounds: Bounds,
}

/// The connection's end, drained by its worker (`session/delivery.rs`).
pub struct Inbox {
    q: Arc<Queue>,
    pub counts: Arc<Counts>,
}

impl Inbox {
    /// Takes the first message if `allowed` says it may go now (e.g. QoS ≥ 1 only
    /// while the in-flight window has room). `None` with [`Inbox::is_empty`] false
    /// means the head is waiting; the queue stays scheduled, so the worker must call
    /// again when it can send more, without being told.
    pub fn pop_if(&self, allowed: impl FnOnce(&Outgoing) -> bool) -> Option<Outgoing> {
        let mut items = self.q.lock();
        if items.front().is_some_and(allowed) {
            let o = items.pop_front();
            drop(items);
            if let Some(o) = &o {
                self.q.release(o);
            }
            o
        } else {
            None
        }
    }

    /// Called when [`Inbox::pop_if`] found nothing: clears the scheduled mark so the
    /// next push notifies the worker again. Returns false if a message arrived in
    /// between (then the caller goes on sending, and the mark stays set).
    pub fn idle(&self) -> bool {
        self.q.scheduled.store(false, Ordering::SeqCst);
        if self.q.lock().is_empty() {
            return true;
        }
        self.q.scheduled.store(true, Ordering::SeqCst);
        false
    }

    pub fn is_empty(&self) -> bool {
        self.q.lock().is_empty()
    }

    /// The next message, whatever it is (tests).
    pub fn try_recv(&self) -> Option<Outgoing> {
        self.pop_if(|_| true)
    }

    /// Takes everything left (the connection is closing).
    pub fn drain(&self) -> VecDeque<Outgoing> {
        let items = std::mem::take(&mut *self.q.lock());
        for o in &items {
            self.q.release(o);
        }
        items
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.q.closed.store(true, Ordering::Release);
        // Whatever is left holds nobody back any more.
        self.counts.client_bound(true);
    }
}

/// A queue whose pushes call `notify` (at most once until the worker finds it empty).
pub fn channel(
    bounds: Bounds,
    pressure: Arc<Pressure>,
    budget: Arc<Budget>,
    notify: impl Fn() + Send + Sync + 'static,
) -> (Outbox, Inbox) {
    let q = Arc::new(Queue {
        items: Mutex::new(VecDeque::new()),
        scheduled: AtomicBool::new(false),
        closed: AtomicBool::new(false),
        notify: Box::new(notify),
        bytes: AtomicUsize::new(0),
        budget,
    });
    let counts = Arc::new(Counts::new(pressure, bounds.qos0));
    let outbox = Outbox {
        q: q.clone(),
        counts: counts.clone(),
        bounds,
    };
    (outbox, Inbox { q, counts })
}

impl Outbox {
    /// The queue's counts, when its backlog is above the high watermark.
    pub fn backed_up(&self) -> Option<&Arc<Counts>> {
        self.counts.backed_up().then_some(&self.counts)
    }

    pub fn counts(&self) -> &Arc<Counts> {
        &self.counts
    }

    /// Queues a message that is not in a persistent session's owed queue (`seq` is
    /// `None`), within the bounds.
    pub fn offer(&self, out: Outgoing) -> Result<(), Refused> {
        let (count, bound, full) = if out.msg.qos == QoS::AtMostOnce {
            (&self.counts.qos0, self.bounds.qos0, Refused::Qos0Full)
        } else {
            (
                &self.counts.untracked,
                self.bounds.untracked,
                Refused::SessionFull,
            )
        };
        // Only the router (under its lock) increments, so check-then-add cannot overshoot.
        if count.load(Ordering::Relaxed) >= bound {
            return Err(full);
        }
        if self.q.closed.load(Ordering::Acquire) {
            return Err(Refused::Closed);
        }
        self.take_bytes(out.msg.cost())?;
        let qos = out.msg.qos;
        count.fetch_add(1, Ordering::Relaxed);
        if !self.q.push(out) {
            count.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::Closed);
        }
        if qos != QoS::AtMostOnce {
            self.counts.queued();
        }
        Ok(())
    }

    /// Takes `n` bytes under this queue's and the broker's byte bounds, letting the
    /// oldest waiting QoS 0 messages of this queue give way while they do not fit.
    fn take_bytes(&self, n: usize) -> Result<(), Refused> {
        let budget = &self.q.budget;
        if n > self.bounds.bytes {
            // Evicting would not make room.
            return Err(Refused::Bytes(Overflow::Session));
        }
        loop {
            let queued = self.q.bytes.load(Ordering::Relaxed);
            let why = if queued.saturating_add(n) > self.bounds.bytes {
                Overflow::Session
            } else if budget.try_take(n) {
                self.q.bytes.fetch_add(n, Ordering::Relaxed);
                return Ok(());
            } else {
                Overflow::Total
            };
            if !self.evict_oldest_qos0() {
                return Err(Refused::Bytes(why));
            }
        }
    }

    /// Drops the oldest QoS 0 message waiting here; false when there is none.
    fn evict_oldest_qos0(&self) -> bool {
        let mut items = self.q.lock();
        let Some(i) = items
            .iter()
            .position(|o| o.msg.qos == QoS::AtMostOnce && o.seq.is_none())
        else {
            return false;
        };
        let Some(o) = items.remove(i) else {
            return false;
        };
        drop(items);
        self.q.release(&o);
        self.counts.qos0.fetch_sub(1, Ordering::Relaxed);
        self.q.budget.evicted();
        true
    }

    /// Queues a message of a persistent session's owed queue (bounded there). Returns
    /// false when the connection is gone (the message stays owed).
    pub fn send_owed(&self, out: Outgoing) -> bool {
        let sent = self.q.push(out);
        if sent {
            self.counts.queued();
        }
        sent
    }

    /// Like [`Outbox::send_owed`] for a resumed session's backlog: not counted — it is
    /// old news, and a client resuming with thousands of owed messages must not hold
    /// back its publishers while it catches up.
    pub fn resend_owed(&self, out: Outgoing) -> bool {
        self.q.push(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    fn out(qos: QoS) -> Outgoing {
        Outgoing {
            msg: Message {
                topic: "t".into(),
                payload: Default::default(),
                qos,
                retain: false,
                properties: None,
            },
            seq: None,
            dup: false,
            released: false,
        }
    }

    #[test]
    fn each_kind_is_refused_only_beyond_its_own_bound_and_frees_as_the_task_drains() {
        let notified = Arc::new(AtomicUsize::new(0));
        let n = notified.clone();
        let (ob, ib) = channel(
            Bounds {
                qos0: 2,
                untracked: 3,
                bytes: usize::MAX,
            },
            Arc::new(Pressure::new(100)),
            Budget::unbounded(),
            move || {
                n.fetch_add(1, Ordering::Relaxed);
            },
        );
        for _ in 0..2 {
            ob.offer(out(QoS::AtMostOnce)).unwrap();
        }
        assert_eq!(ob.offer(out(QoS::AtMostOnce)), Err(Refused::Qos0Full));
        // A QoS 0 flood does not take room from QoS 1.
        for _ in 0..3 {
            ob.offer(out(QoS::AtLeastOnce)).unwrap();
        }
        assert_eq!(ob.offer(out(QoS::AtLeastOnce)), Err(Refused::SessionFull));
        // Owed messages are bounded by the router, not here.
        assert!(ob.send_owed(out(QoS::AtLeastOnce)));

        assert_eq!(
            notified.load(Ordering::Relaxed),
            1,
            "one wake-up for a burst"
        );
        // Taking a QoS 0 message off frees QoS 0 room; a QoS 1 one only when acknowledged.
        ib.pop_if(|_| true).unwrap();
        ib.counts.qos0_taken();
        ob.offer(out(QoS::AtMostOnce)).unwrap();
        assert_eq!(ob.offer(out(QoS::AtLeastOnce)), Err(Refused::SessionFull));
        ib.counts.untracked_done();
        ob.offer(out(QoS::AtLeastOnce)).unwrap();
        assert_eq!(ib.counts.untracked(), 3);

        ib.counts.qos0_taken();
        let counts = ib.counts.clone();
        drop(ib);
        assert_eq!(ob.offer(out(QoS::AtMostOnce)), Err(Refused::Closed));
        assert_eq!(
            counts.qos0.load(Ordering::Relaxed),
            1,
            "a refused message is not counted"
        );
    }
}

#[cfg(test)]
mod byte_tests {
    use super::*;
    use crate::message::Message;

    fn sized(qos: QoS, n: usize) -> Outgoing {
        Outgoing {
            msg: Message {
                topic: "t".into(),
                payload: vec![0u8; n - 1].into(),
                qos,
                retain: false,
                properties: None,
            },
            seq: None,
            dup: false,
            released: false,
        }
    }

    #[test]
    fn at_a_byte_bound_the_oldest_qos0_gives_way_and_qos1_is_refused_not_dropped_silently() {
        let obs = lentera_bootstrap::Observability::new("broker-test");
        let metrics = crate::metrics::Metrics::new(&obs);
        let budget = Budget::new(100, 150, &metrics);
        let bounds = Bounds {
            qos0: 100,
            untracked: 100,
            bytes: 100,
        };
        let p = Arc::new(Pressure::new(100));
        let (a, a_in) = channel(bounds, p.clone(), budget.clone(), || {});
        let (b, b_in) = channel(bounds, p, budget.clone(), || {});
        for _ in 0..4 {
            a.offer(sized(QoS::AtMostOnce, 25)).unwrap();
        }
        // The fifth QoS 0 takes the place of the oldest.
        a.offer(sized(QoS::AtMostOnce, 25)).unwrap();
        assert_eq!(metrics.dropped_qos0_evicted.get(), 1);
        // A QoS 1 message makes room by evicting QoS 0 too.
        a.offer(sized(QoS::AtLeastOnce, 50)).unwrap();
        assert_eq!(metrics.dropped_qos0_evicted.get(), 3);
        // Larger than the bound itself: refused, nothing evicted for it.
        assert_eq!(
            a.offer(sized(QoS::AtLeastOnce, 120)),
            Err(Refused::Bytes(Overflow::Session))
        );
        assert_eq!(budget.used(), 100);
        // The other queue meets the broker-wide bound (150) first.
        b.offer(sized(QoS::AtLeastOnce, 50)).unwrap();
        assert_eq!(
            b.offer(sized(QoS::AtLeastOnce, 10)),
            Err(Refused::Bytes(Overflow::Total))
        );
        // Taking messages off gives their bytes back; a closed queue gives back the rest.
        b_in.try_recv().unwrap();
        assert_eq!(budget.used(), 100);
        drop((a, a_in));
        assert_eq!(budget.used(), 0);
        assert_eq!(metrics.queued_bytes.get(), 0);
    }
}

#[cfg(test)]
mod pressure_tests {
    use super::*;
    use crate::message::Message;

    fn q1() -> Outgoing {
        Outgoing {
            msg: Message {
                topic: "t".into(),
                payload: Default::default(),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: None,
            },
            seq: None,
            dup: false,
            released: false,
        }
    }

    #[test]
    fn each_queue_counts_its_own_backlog_and_not_while_waiting_for_its_client() {
        let p = Arc::new(Pressure::new(4));
        let woken = Arc::new(AtomicUsize::new(0));
        let w = woken.clone();
        p.on_drained(move || {
            w.fetch_add(1, Ordering::Relaxed);
        });
        let bounds = Bounds {
            qos0: 10,
            untracked: 10,
            bytes: usize::MAX,
        };
        let (busy, busy_in) = channel(bounds, p.clone(), Budget::unbounded(), || {});
        let (slow, slow_in) = channel(bounds, p.clone(), Budget::unbounded(), || {});
        for _ in 0..5 {
            busy.offer(q1()).unwrap();
        }
        assert!(slow.send_owed(q1()));
        assert_eq!((busy_in.counts.backlog(), slow_in.counts.backlog()), (5, 1));
        assert!(
            busy.backed_up().is_some(),
            "5 is above the high watermark 4"
        );
        assert!(
            slow.backed_up().is_none(),
            "one queue's backlog is not another's"
        );
        // A resumed session's backlog is old news.
        assert!(slow.resend_owed(q1()));
        assert_eq!(slow_in.counts.backlog(), 1);
        // The slow one's client stops taking messages: its backlog is its own problem.
        slow_in.counts.client_bound(true);
        slow.offer(q1()).unwrap();
        assert_eq!(
            slow_in.counts.backlog(),
            0,
            "not counted while waiting for the client"
        );
        slow_in.counts.client_bound(false);

        // Draining below the low watermark (2) wakes held publishers, if there are any.
        for _ in 0..4 {
            busy_in.counts.taken();
        }
        assert_eq!(
            woken.load(Ordering::Relaxed),
            0,
            "nobody held, nobody woken"
        );
        assert!(busy_in.counts.may_resume(Duration::ZERO));
        busy.offer(q1()).unwrap();
        busy.offer(q1()).unwrap();
        p.holding(true);
        busy_in.counts.taken();
        busy_in.counts.taken();
        assert_eq!(woken.load(Ordering::Relaxed), 1);
        assert!(!Arc::new(Counts::new(p.clone(), 10)).backed_up());
        drop(busy_in);
        assert_eq!(busy.offer(q1()), Err(Refused::Closed));
    }
}
