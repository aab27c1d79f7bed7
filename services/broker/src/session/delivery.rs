//! The outbound flow: queued messages into the output while the in-flight window and
//! the socket allow, packet ids, the acknowledgements that complete each flow, stalls.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ntex_bytes::BytePages;
use ntex_mqtt::QoS;

use super::{Active, Proto};
use crate::net::Cx;
use crate::net::conn::Output;
use crate::outbox::{self, Inbox};
use crate::router::{ConnId, Message, Router};

/// Output beyond which the outbound flow waits for the socket: a subscriber slower
/// than its publishers fills its queue (whose bounds drop or hold back, `outbox.rs`),
/// not this buffer.
const OUTPUT_HIGH: usize = 64 * 1024;

/// How long a subscriber may make no progress before its backlog is its own problem
/// rather than broker overload (see `outbox.rs`).
pub const STALLED: Duration = Duration::from_millis(500);

impl Active {
    /// Creates the connection's queue before its first subscription takes effect.
    pub fn ensure_delivery(&mut self, cx: &Cx<'_>) {
        if self.delivery.is_some() {
            return;
        }
        let mut inbox = None;
        let router = &cx.shared.router;
        router.attach(self.id, || {
            let (o, i) = outbox::channel(
                cx.shared.bounds,
                router.pressure().clone(),
                router.budget().clone(),
                cx.ready_notifier(),
            );
            inbox = Some(i);
            o
        });
        if let Some(inbox) = inbox {
            self.start_delivery(inbox);
        }
    }

    /// Starts the outbound flow.
    pub fn start_delivery(&mut self, inbox: Inbox) {
        self.delivery = Some(Box::new(Delivery {
            inbox,
            inflight: HashMap::new(),
            window: usize::from(self.window.max(1)),
            next_pid: 0,
            blocked_since: None,
            bound: false,
            listed: false,
        }));
    }

    /// Moves queued messages into the output while the window and the socket allow.
    pub fn pump(&mut self, out: &mut Output, cx: &mut Cx<'_>) {
        let Some(d) = self.delivery.as_deref_mut() else {
            return;
        };
        let metrics = cx.shared.router.metrics();
        let mut sent_any = false;
        let blocked = loop {
            if out.len() >= OUTPUT_HIGH {
                break true;
            }
            let room = d.inflight.len() < d.window;
            let inflight = &d.inflight;
            let Some(m) = d.inbox.pop_if(|o| {
                o.msg.qos == QoS::AtMostOnce
                    || (room && o.seq.is_none_or(|s| !inflight.contains_key(&packet_id(s))))
            }) else {
                if !d.inbox.is_empty() {
                    break true;
                }
                if d.inbox.idle() {
                    break false;
                }
                continue;
            };
            let qos = m.msg.qos;
            if qos == QoS::AtMostOnce {
                d.inbox.counts.qos0_taken();
            } else {
                d.inbox.counts.taken();
            }
            // Expired before onward delivery started: not sent, and no longer owed
            // [MQTT-3.3.2-5]. A resend (DUP) had started, and goes out.
            if !m.dup && m.msg.expired(cx.now) {
                d.complete(&cx.shared.router, self.id, m.seq, qos);
                continue;
            }
            if m.released
                && let Some(seq) = m.seq
            {
                // Its PUBREC came on an earlier connection: the PUBREL is owed, with
                // the same packet id [MQTT-4.4.0-1].
                let pid = packet_id(seq);
                self.proto.encode_pubrel(out.pages(), pid);
                let sent = Sent {
                    seq: m.seq,
                    qos,
                    released: true,
                };
                d.inflight.insert(pid, sent);
                sent_any = true;
                continue;
            }
            let pid = (qos != QoS::AtMostOnce).then(|| match m.seq {
                Some(seq) => packet_id(seq),
                None => d.alloc_pid(),
            });
            let bytes = m.msg.payload.len() as u64;
            match self.proto.encode_publish(out.pages(), m.msg, pid, m.dup) {
                Ok(()) => {
                    sent_any = true;
                    metrics.delivered.inc();
                    metrics.bytes_sent.add(bytes);
                    if let Some(pid) = pid {
                        d.inflight.insert(
                            pid,
                            Sent {
                                seq: m.seq,
                                qos,
                                released: false,
                            },
                        );
                    }
                }
                Err(NotEncoded) => {
                    // Larger than the client's Maximum Packet Size: discarded as if it
                    // had been sent [MQTT-3.1.2-25].
                    metrics.dropped_send_error.inc();
                    d.complete(&cx.shared.router, self.id, m.seq, qos);
                }
            }
        };
        if sent_any && d.bound {
            d.inbox.counts.client_bound(false);
            d.bound = false;
        }
        if sent_any || !blocked {
            d.blocked_since = None;
        }
        if blocked && d.blocked_since.is_none() {
            d.blocked_since = Some(cx.now);
            if !d.listed {
                d.listed = true;
                cx.lists.blocked.push(cx.key.index as usize);
            }
        }
    }

    /// The outbound flow stopped with messages waiting (window or output full).
    pub fn waits_for_output(&self) -> bool {
        self.delivery
            .as_deref()
            .is_some_and(|d| d.blocked_since.is_some())
    }

    /// Called every tick while listed as blocked: tells the counts once the client has
    /// taken nothing for [`STALLED`]. Returns whether to stay listed.
    pub fn check_stalled(&mut self, now: Instant) -> bool {
        let Some(d) = self.delivery.as_deref_mut() else {
            return false;
        };
        match d.blocked_since {
            Some(since) => {
                if !d.bound && now.duration_since(since) >= STALLED {
                    d.inbox.counts.client_bound(true);
                    d.bound = true;
                }
                true
            }
            None => {
                d.listed = false;
                false
            }
        }
    }

    /// PUBACK: the QoS 1 flow of `pid` is complete.
    pub fn puback(&mut self, pid: u16, out: &mut Output, cx: &mut Cx<'_>) {
        self.finish_flow(pid, QoS::AtLeastOnce, out, cx);
    }

    /// PUBREC: returns whether to answer PUBREL (false for an unknown id, or when the
    /// client refused the message — MQTT 5 reason ≥ 0x80 ends the flow).
    pub fn pubrec(&mut self, pid: u16, refused: bool, out: &mut Output, cx: &mut Cx<'_>) -> bool {
        if refused {
            self.finish_flow(pid, QoS::ExactlyOnce, out, cx);
            return false;
        }
        match self
            .delivery
            .as_deref_mut()
            .and_then(|d| d.inflight.get_mut(&pid))
        {
            Some(s) if s.qos == QoS::ExactlyOnce => {
                s.released = true;
                // Owed now is the PUBREL, also across a reconnect or restart.
                if let Some(seq) = s.seq {
                    cx.shared.router.released(self.id, seq);
                }
                true
            }
            _ => false,
        }
    }

    /// PUBCOMP: the QoS 2 flow of `pid` is complete.
    pub fn pubcomp(&mut self, pid: u16, out: &mut Output, cx: &mut Cx<'_>) {
        // PUBCOMP answers our PUBREL; one before it is not the end of this flow.
        let released = self
            .delivery
            .as_deref()
            .and_then(|d| d.inflight.get(&pid))
            .is_some_and(|s| s.released);
        if released {
            self.finish_flow(pid, QoS::ExactlyOnce, out, cx);
        }
    }

    fn finish_flow(&mut self, pid: u16, qos: QoS, out: &mut Output, cx: &mut Cx<'_>) {
        let Some(d) = self.delivery.as_deref_mut() else {
            return;
        };
        if d.inflight.get(&pid).is_some_and(|s| s.qos == qos) {
            if let Some(s) = d.inflight.remove(&pid) {
                d.complete(&cx.shared.router, self.id, s.seq, qos);
            }
            // Room in the window: send what waits.
            self.pump(out, cx);
        }
    }
}

impl Proto {
    fn encode_pubrel(&self, dst: &mut BytePages, pid: u16) {
        match self {
            Proto::V3(s) => crate::v3::encode_pubrel(s, dst, pid),
            Proto::V5(s) => crate::v5::encode_pubrel(s, dst, pid),
        }
    }

    fn encode_publish(
        &self,
        dst: &mut BytePages,
        msg: Message,
        pid: Option<u16>,
        dup: bool,
    ) -> Result<(), NotEncoded> {
        match self {
            Proto::V3(s) => crate::v3::encode_publish(s, dst, msg, pid, dup),
            Proto::V5(s) => crate::v5::encode_publish(s, dst, msg, pid, dup),
        }
    }
}

/// A PUBLISH the codec would not encode: larger than the client's Maximum Packet Size.
#[derive(Debug)]
pub struct NotEncoded;

/// The outbound flow of one connection.
pub struct Delivery {
    inbox: Inbox,
    /// QoS ≥ 1 messages sent and not yet completely acknowledged, by packet id.
    inflight: HashMap<u16, Sent>,
    window: usize,
    /// Last packet id handed to a message without a sequence number.
    next_pid: u16,
    /// Could not send what waits since then.
    blocked_since: Option<Instant>,
    /// [`Counts::client_bound`] was told the client is the bottleneck.
    bound: bool,
    /// In the worker's blocked list.
    listed: bool,
}

struct Sent {
    seq: Option<u64>,
    qos: QoS,
    /// PUBREC came and PUBREL went (QoS 2).
    released: bool,
}

impl Delivery {
    /// Empties the queue of a connection that ended; returns how many of the messages
    /// were not owed (a persistent session's owed ones go out on its next connection).
    pub(super) fn drain_untracked(&self) -> usize {
        self.inbox
            .drain()
            .iter()
            .filter(|o| o.seq.is_none())
            .count()
    }

    fn alloc_pid(&mut self) -> u16 {
        // The window is below 65,535, so a free id is always found.
        loop {
            self.next_pid = self.next_pid.wrapping_add(1).max(1);
            if !self.inflight.contains_key(&self.next_pid) {
                return self.next_pid;
            }
        }
    }

    /// A message left this connection's hands for good (acknowledged, expired,
    /// undeliverable): a persistent session's is acknowledged to the router; a clean
    /// session's QoS ≥ 1 frees its place in the bound.
    fn complete(&self, router: &Router, conn: ConnId, seq: Option<u64>, qos: QoS) {
        match seq {
            Some(seq) => router.ack(conn, seq),
            None if qos != QoS::AtMostOnce => self.inbox.counts.untracked_done(),
            None => {}
        }
    }
}

/// The packet id of owed message `seq`: 1..=65535, stable for the message.
pub fn packet_id(seq: u64) -> u16 {
    ((seq - 1) % 65_535 + 1) as u16
}
