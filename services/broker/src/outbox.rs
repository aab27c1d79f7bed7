//! The queue between the router and one connection's delivery task, and its bounds.
//!
//! The channel itself is unbounded — it never refuses a message the router wants to
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
//!   router (the same `session_queue_capacity`), so the channel takes them unconditionally.
//!
//! So the router never blocks and never waits for a subscriber: a stalled one costs at
//! most its two bounds in memory, and publishers and the other subscribers go on.
//!
//! # Overload: [`Pressure`]
//! Bounds alone would drop QoS ≥ 1 messages whenever publishers outrun the broker
//! itself (e.g. 4 publishers × 4 subscribers on one topic need four deliveries per
//! publish; acknowledging publishes is far cheaper than delivering them). So QoS ≥ 1
//! messages waiting in the queues of subscribers that are **not** waiting on their
//! client are counted broker-wide, and while that backlog is above a high watermark a
//! QoS ≥ 1 PUBLISH is routed (and acknowledged) only once it falls below the low one:
//! publishers slow down to what the broker delivers, the way a single-threaded broker
//! behaves by construction.
//!
//! A subscriber that stops making progress — nothing could be sent to it for 500 ms
//! (in-flight window full, socket not draining; `session.rs`) — takes its messages out
//! of that count while it waits, and adds new ones only once it moves again. So a
//! stalled subscriber holds publishers back for half a second at most and then only
//! fills its own bound; a subscriber that keeps reading, however slowly, is served
//! without loss, at the price of slowing the publishers it hears from.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ntex_mqtt::QoS;

use crate::router::Outgoing;

/// Per-connection queue limits (from the settings).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// QoS 0 messages waiting per connection.
    pub qos0: usize,
    /// QoS ≥ 1 messages of a clean session queued or unacknowledged.
    pub untracked: usize,
}

/// The broker-wide backlog of QoS ≥ 1 messages queued to subscribers that are keeping
/// up with their clients (see the module docs), and the publishers waiting for it.
pub struct Pressure {
    queued: AtomicUsize,
    high: usize,
    low: usize,
    /// Called when the backlog falls below the low watermark: the network workers
    /// resume the publishers they hold (`net/worker.rs`).
    drained: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

/// The longest a QoS ≥ 1 publisher is held back, so that a counting slip can cost
/// latency but never stop publishing.
pub const MAX_HOLD: Duration = Duration::from_secs(1);

impl Pressure {
    /// Publishers wait above `high` until the backlog is below `high / 2`.
    pub fn new(high: usize) -> Self {
        Self {
            queued: AtomicUsize::new(0),
            high: high.max(2),
            low: high.max(2) / 2,
            drained: OnceLock::new(),
        }
    }

    /// Sets what is called when the backlog drains (once; later calls are ignored).
    pub fn on_drained(&self, f: impl Fn() + Send + Sync + 'static) {
        let _ = self.drained.set(Box::new(f));
    }

    /// Whether a QoS ≥ 1 publisher has to wait now.
    pub fn overloaded(&self) -> bool {
        self.queued() > self.high
    }

    /// The backlog now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    fn add(&self, n: usize) {
        self.queued.fetch_add(n, Ordering::Relaxed);
    }

    fn sub(&self, n: usize) {
        let before = self.queued.fetch_sub(n, Ordering::Relaxed);
        if before >= self.low
            && before - n < self.low
            && let Some(f) = self.drained.get()
        {
            f();
        }
    }

    /// Whether a publisher held back for `held` may go on: the backlog has drained
    /// below the low watermark, or it has waited [`MAX_HOLD`].
    pub fn may_resume(&self, held: Duration) -> bool {
        self.queued() < self.low || held >= MAX_HOLD
    }
}

/// What both ends count.
pub struct Counts {
    qos0: AtomicUsize,
    untracked: AtomicUsize,
    /// QoS ≥ 1 messages of this queue included in [`Pressure`].
    pressing: AtomicUsize,
    /// The delivery task is waiting for the client (window full, socket not draining).
    client_bound: AtomicBool,
    pressure: Arc<Pressure>,
}

impl Counts {
    fn new(pressure: Arc<Pressure>) -> Self {
        Self {
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
            self.pressure.add(1);
        }
    }

    /// The delivery task took a QoS ≥ 1 message off the queue.
    pub fn taken(&self) {
        if self
            .pressing
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            self.pressure.sub(1);
        }
    }

    /// The delivery task starts (`true`) or stops waiting for its client: while it
    /// waits, its queue does not count as broker overload.
    pub fn client_bound(&self, waiting: bool) {
        self.client_bound.store(waiting, Ordering::Relaxed);
        if waiting {
            let n = self.pressing.swap(0, Ordering::Relaxed);
            if n > 0 {
                self.pressure.sub(n);
            }
        }
    }

    /// The delivery task took a QoS 0 message off the channel.
    pub fn qos0_taken(&self) {
        self.qos0.fetch_sub(1, Ordering::Relaxed);
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
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Outgoing>> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
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

/// The connection's end, drained by its worker (`session.rs`).
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
            items.pop_front()
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
        std::mem::take(&mut *self.q.lock())
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.q.closed.store(true, Ordering::Release);
        // Whatever is left no longer weighs on the broker.
        self.counts.client_bound(true);
    }
}

/// A queue whose pushes call `notify` (at most once until the worker finds it empty).
pub fn channel(
    bounds: Bounds,
    pressure: Arc<Pressure>,
    notify: impl Fn() + Send + Sync + 'static,
) -> (Outbox, Inbox) {
    let q = Arc::new(Queue {
        items: Mutex::new(VecDeque::new()),
        scheduled: AtomicBool::new(false),
        closed: AtomicBool::new(false),
        notify: Box::new(notify),
    });
    let counts = Arc::new(Counts::new(pressure));
    let outbox = Outbox {
        q: q.clone(),
        counts: counts.clone(),
        bounds,
    };
    (outbox, Inbox { q, counts })
}

impl Outbox {
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

    /// Queues a message of a persistent session's owed queue (bounded there). Returns
    /// false when the connection is gone (the message stays owed).
    pub fn send_owed(&self, out: Outgoing) -> bool {
        let sent = self.q.push(out);
        if sent {
            self.counts.queued();
        }
        sent
    }

    /// Like [`Outbox::send_owed`] for a resumed session's backlog: not counted as broker
    /// overload — it is old news, and one client resuming with thousands of owed
    /// messages must not hold back every publisher while it catches up.
    pub fn resend_owed(&self, out: Outgoing) -> bool {
        self.q.push(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::Message;

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
            },
            Arc::new(Pressure::new(100)),
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
mod pressure_tests {
    use super::*;
    use crate::router::Message;

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
        }
    }

    #[test]
    fn backlog_counts_subscribers_keeping_up_and_not_those_waiting_for_their_client() {
        let p = Arc::new(Pressure::new(4));
        let bounds = Bounds {
            qos0: 10,
            untracked: 10,
        };
        let (busy, busy_in) = channel(bounds, p.clone(), || {});
        let (slow, slow_in) = channel(bounds, p.clone(), || {});
        for _ in 0..3 {
            busy.offer(q1()).unwrap();
            assert!(slow.send_owed(q1()));
        }
        assert_eq!(p.queued(), 6);
        // A resumed session's backlog is not overload.
        assert!(busy.resend_owed(q1()));
        assert_eq!(p.queued(), 6);
        // The slow one's client stops taking messages: its backlog is its own problem.
        slow_in.counts.client_bound(true);
        assert_eq!(p.queued(), 3);
        slow.offer(q1()).unwrap();
        assert_eq!(p.queued(), 3, "queued while waiting for the client");
        slow_in.counts.client_bound(false);
        slow_in.counts.taken();
        assert_eq!(p.queued(), 3, "taking an uncounted message changes nothing");
        busy_in.counts.taken();
        assert_eq!(p.queued(), 2);
        drop(busy_in);
        assert_eq!(p.queued(), 0, "a closed queue releases its share");
    }
}
