//! Overload holds: a publisher whose last message landed in a backed-up subscriber
//! queue waits before its next QoS ≥ 1 PUBLISH (`outbox.rs` says when and for how long).

use std::time::Instant;

use super::Active;
use crate::net::Cx;
use crate::router::Message;

impl Active {
    /// Whether a PUBLISH must wait because this publisher's last one landed in a
    /// backed-up subscriber queue (QoS ≥ 1 backlog, or a full QoS 0 queue of a
    /// subscriber that still reads); if so the connection is listed as held and the
    /// packet stays unread.
    pub fn hold_publish(&mut self, cx: &mut Cx<'_>) -> bool {
        if std::mem::take(&mut self.admit_next) {
            return false;
        }
        let Some(counts) = &self.hold_on else {
            return false;
        };
        if counts.may_resume(std::time::Duration::ZERO) {
            self.hold_on = None;
            return false;
        }
        counts.pressure().holding(true);
        cx.shared.router.metrics().publishes_held.inc();
        self.held_since = Some(cx.now);
        cx.lists.held.push(cx.key.index as usize);
        true
    }

    /// Called for a held connection: whether its PUBLISH may go now (the backlog it
    /// waited on drained, or it waited long enough).
    pub fn try_release(&mut self, now: Instant) -> bool {
        let (Some(since), Some(counts)) = (self.held_since, &self.hold_on) else {
            return self.held_since.take().is_some();
        };
        if !counts.may_resume(now.duration_since(since)) {
            return false;
        }
        counts.pressure().holding(false);
        self.held_since = None;
        self.hold_on = None;
        self.admit_next = true;
        true
    }

    /// Routes a message this connection published; remembers a backed-up subscriber
    /// queue it landed in. Returns the store sequence number the reply must wait for,
    /// and whether `queued_bytes_total` kept it from some session (MQTT 5: 0x97).
    pub fn route(&mut self, cx: &Cx<'_>, msg: Message) -> (u64, bool) {
        let routed = cx.shared.router.publish_held(Some(self.id), msg);
        self.hold_on = routed.backed;
        (routed.lsn, routed.over_budget)
    }
}
