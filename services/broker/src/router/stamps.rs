//! Stamps given again: a resend of a board's reading gets the `ts` its first copy got.
//!
//! The broker stamps a QoS ≥ 1 reading without `ts` (`telemetry.rs`), logs it and
//! routes it; the PUBACK leaves once that is durable. When the PUBACK does not reach the
//! board — the connection dropped, or the broker was killed — the board resends the
//! PUBLISH with the same packet id and bytes, and a second stamp would make it a second
//! reading to the historian (unique by device and `ts`). So each session remembers what
//! it was given for the last [`STAMPS_REMEMBERED`] stamped PUBLISHes of its client: packet
//! id, a CRC-32 of topic and payload as sent ([`publish_hash`]), and the receive time.
//! A PUBLISH whose packet id and hash match an entry is a resend and gets that time again
//! (same `ts`, same bytes, stored once) when
//!
//! - it says DUP=1; or
//! - the entry was made on an *earlier* connection (or before a restart) and this
//!   connection has not yet sent a new reading. rumqttc 0.25 resends its unacknowledged
//!   publishes after a reconnect with DUP=0 (against [MQTT-3.3.1-1]), so the flag alone
//!   does not tell. A client may not reuse a packet id before its PUBACK [MQTT-2.3.1-2],
//!   resends go in their original order [MQTT-4.6.0-1] and, in every client we know,
//!   before anything new, so the first new reading on a connection (one that matches
//!   nothing) ends them: from then on only DUP=1 matches.
//!
//! Anything else is a new reading and is stamped anew; its entry replaces the one of its
//! packet id, or the oldest. What this cannot tell: a client that reconnects, starts its
//! packet ids afresh and sends, as its very first reading, the same bytes as the one it
//! last sent with that id among the last 16 — that reading gets the old `ts` and is
//! stored once. And a client with more than 16 stamped readings unacknowledged when its
//! connection ended has the oldest of them stamped anew.
//!
//! Durable for persistent sessions: a `Stamp` record is appended (under the router lock)
//! *before* the message's own records, so any log prefix that has the message has its
//! stamp; replay keeps the same bound (`store/recover.rs`), compaction writes each
//! persistent session's entries again (`router/durable.rs`). The PUBACK does not wait for
//! the record unless routing wrote something durable too: a message nothing durable holds
//! is gone after a crash, and its resend is then its only copy. A clean session keeps its
//! entries in memory for as long as it lasts (in-connection DUP=1 resends); they end with
//! it, as the client's own in-flight state must [MQTT-3.1.2-6] — rumqttc drops its
//! pending publishes when the CONNACK says no session is present.
//!
//! Bound: one allocation of 264 bytes per session whose client published a stamped QoS ≥
//! 1 reading, nothing for any other; 10,000 boards cost 2.6 MB. A persistent session's
//! entries are at most 16 records (38 bytes + client id each) in a compacted log.

use chrono::DateTime;
use ntex_bytes::Bytes;
use std::num::NonZeroU16;

use super::{ConnId, Router};
use crate::store::Record;
use crate::store::record::{Stamp, publish_hash};
use crate::telemetry::RefusedReading;

/// Stamped PUBLISHes remembered per session.
pub const STAMPS_REMEMBERED: usize = 16;

/// A session's remembered stamps, oldest first.
#[derive(Debug, Default)]
pub(super) struct Stamps {
    entries: [Stamp; STAMPS_REMEMBERED],
    len: u8,
    /// Bit `i`: `entries[i]` was made on an earlier connection, and no new reading has
    /// come on this one yet.
    earlier: u16,
}

impl Stamps {
    /// The stamps recovered for a session (oldest first), all from before the restart.
    pub(super) fn recovered(stamps: &[Stamp]) -> Option<Box<Self>> {
        if stamps.is_empty() {
            return None;
        }
        let mut s = Box::<Self>::default();
        for st in stamps {
            s.remember(*st);
        }
        s.reconnected();
        Some(s)
    }

    fn live(&self) -> &[Stamp] {
        &self.entries[..usize::from(self.len)]
    }

    /// Oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Stamp> {
        self.live().iter()
    }

    /// The time a PUBLISH with `packet_id` and `hash` gets again, if it is a resend.
    fn again(&self, packet_id: u16, hash: u32, dup: bool) -> Option<i64> {
        let i = self.live().iter().position(|s| s.packet_id == packet_id)?;
        let e = &self.entries[i];
        (e.hash == hash && (dup || self.earlier & (1 << i) != 0)).then_some(e.at)
    }

    /// A new reading: replaces its packet id's entry, or the oldest; ends the resends.
    fn remember(&mut self, stamp: Stamp) {
        self.earlier = 0;
        let len = usize::from(self.len);
        let at = match self
            .live()
            .iter()
            .position(|s| s.packet_id == stamp.packet_id)
        {
            Some(i) => i,
            None if len < STAMPS_REMEMBERED => {
                self.len += 1;
                len
            }
            None => 0,
        };
        // Oldest first: the entry moves to the end.
        self.entries[at..usize::from(self.len)].rotate_left(1);
        self.entries[usize::from(self.len) - 1] = stamp;
    }

    /// A new connection resumed the session: what the last one was given may not have
    /// been acknowledged to the client.
    pub(super) fn reconnected(&mut self) {
        self.earlier = u16::MAX;
    }
}

impl Router {
    /// Checks and stamps a client's PUBLISH as [`crate::telemetry::Telemetry::inspect`]
    /// does; a resend of a reading already stamped (see the module docs) gets the same
    /// time again. `packet`: the packet id and DUP flag of a QoS ≥ 1 PUBLISH.
    pub fn inspect_publish(
        &self,
        conn: ConnId,
        topic: &str,
        payload: &[u8],
        retain: bool,
        packet: Option<(NonZeroU16, bool)>,
    ) -> Result<Option<Bytes>, Box<RefusedReading>> {
        let telemetry = &self.telemetry;
        let stamped = telemetry.inspect_at(topic, payload, retain, None)?;
        let (fresh, (id, dup)) = match (stamped, packet) {
            (Some(fresh), Some(packet)) => (fresh, packet),
            (stamped, _) => return Ok(stamped.map(|s| s.payload)),
        };
        let stamp = Stamp {
            at: fresh.at.timestamp_micros(),
            hash: publish_hash(topic, payload),
            packet_id: id.get(),
        };
        let Some(at) = self.stamp_again(conn, stamp, dup) else {
            return Ok(Some(fresh.payload));
        };
        // The same bytes with the first time. Were they refused now (not with today's
        // limits: the time is in the past), the new stamp would stand.
        match DateTime::from_timestamp_micros(at)
            .map(|at| telemetry.inspect_at(topic, payload, retain, Some(at)))
        {
            Some(Ok(Some(again))) => {
                tracing::debug!(%topic, packet_id = id.get(), dup, "resent reading stamped as before");
                Ok(Some(again.payload))
            }
            _ => Ok(Some(fresh.payload)),
        }
    }

    /// Under the lock: the time `stamp`'s PUBLISH was given before if it is a resend;
    /// otherwise remembers (and for a persistent session logs) `stamp`.
    fn stamp_again(&self, conn: ConnId, stamp: Stamp, dup: bool) -> Option<i64> {
        let store = &self.store;
        self.with_live(conn, |client, s| {
            let memo = s.stamps.get_or_insert_default();
            if let Some(at) = memo.again(stamp.packet_id, stamp.hash, dup) {
                return Some(at);
            }
            memo.remember(stamp);
            if s.persistent() {
                // Before the message's own records: see the module docs.
                store.append(&Record::Stamp { client, stamp });
            }
            None
        })
        .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(packet_id: u16, hash: u32, at: i64) -> Stamp {
        Stamp {
            at,
            hash,
            packet_id,
        }
    }

    #[test]
    fn a_resend_matches_by_packet_id_and_hash_dup_or_from_an_earlier_connection() {
        let mut m = Stamps::default();
        m.remember(st(1, 10, 100));
        m.remember(st(2, 20, 200));
        // Same connection: only DUP=1 is a resend.
        assert_eq!(m.again(1, 10, true), Some(100));
        assert_eq!(m.again(1, 10, false), None);
        assert_eq!(m.again(1, 11, true), None, "another payload");
        assert_eq!(m.again(3, 10, true), None, "another packet id");
        m.reconnected();
        assert_eq!(m.again(1, 10, false), Some(100));
        assert_eq!(m.again(2, 20, false), Some(200));
        // A new reading on this connection ends the resends.
        m.remember(st(3, 30, 300));
        assert_eq!(m.again(2, 20, false), None);
        assert_eq!(m.again(2, 20, true), Some(200));
        // A packet id's new message replaces its entry.
        m.remember(st(1, 11, 400));
        assert_eq!(m.again(1, 10, true), None);
        assert_eq!(m.again(1, 11, true), Some(400));
        let order: Vec<_> = m.iter().map(|s| s.packet_id).collect();
        assert_eq!(order, [2, 3, 1]);
    }

    #[test]
    fn the_oldest_goes_beyond_the_bound_and_recovery_keeps_the_order() {
        let mut m = Stamps::default();
        for id in 1..=40u16 {
            m.remember(st(id, u32::from(id), i64::from(id)));
        }
        let ids: Vec<_> = m.iter().map(|s| s.packet_id).collect();
        assert_eq!(ids, (25..=40).collect::<Vec<_>>());
        assert_eq!(m.again(24, 24, true), None);
        assert_eq!(m.again(25, 25, true), Some(25));
        let all: Vec<_> = m.iter().copied().collect();
        let r = Stamps::recovered(&all).unwrap();
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), all);
        assert_eq!(r.again(40, 40, false), Some(40), "from before the restart");
        assert!(Stamps::recovered(&[]).is_none());
        assert!(std::mem::size_of::<Stamps>() <= 264);
    }
}
