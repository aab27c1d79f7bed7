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

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ntex_mqtt::QoS;
use tokio::sync::mpsc;

use crate::router::Outgoing;

/// Per-connection queue limits (from the settings).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// QoS 0 messages waiting per connection.
    pub qos0: usize,
    /// QoS ≥ 1 messages of a clean session queued or unacknowledged.
    pub untracked: usize,
}

/// What both ends count.
#[derive(Default)]
pub struct Counts {
    qos0: AtomicUsize,
    untracked: AtomicUsize,
}

impl Counts {
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

/// The router's end of one connection's queue (`Send`).
pub struct Outbox {
    tx: mpsc::UnboundedSender<Outgoing>,
    counts: Arc<Counts>,
    bounds: Bounds,
}

/// The delivery task's end.
pub struct Inbox {
    pub rx: mpsc::UnboundedReceiver<Outgoing>,
    pub counts: Arc<Counts>,
}

pub fn channel(bounds: Bounds) -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let counts = Arc::new(Counts::default());
    let outbox = Outbox {
        tx,
        counts: counts.clone(),
        bounds,
    };
    (outbox, Inbox { rx, counts })
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
        count.fetch_add(1, Ordering::Relaxed);
        self.tx.send(out).map_err(|_| {
            count.fetch_sub(1, Ordering::Relaxed);
            Refused::Closed
        })
    }

    /// Queues a message of a persistent session's owed queue (bounded there). Returns
    /// false when the connection is gone (the message stays owed).
    pub fn send_owed(&self, out: Outgoing) -> bool {
        self.tx.send(out).is_ok()
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
        let (ob, mut ib) = channel(Bounds {
            qos0: 2,
            untracked: 3,
        });
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

        // Taking a QoS 0 message off frees QoS 0 room; a QoS 1 one only when acknowledged.
        ib.rx.try_recv().unwrap();
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
