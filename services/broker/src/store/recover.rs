//! Start-up recovery: replays the log's records, in order, into the retained messages and
//! persistent sessions the router starts with.
//!
//! Replay is last-writer-wins per key, which is why the log can be a plain sequence of
//! changes: `Session` after `EndSession` starts the session afresh, an `Ack` removes the
//! matching `Enq`, `Unretain` removes a retained topic.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ntex_bytes::ByteString;

use super::record::{self, Owned, Stamp};
use crate::message::{Message, Subscription};
use crate::topic_filter::Filter;

/// A persistent session as it was when the broker stopped.
#[derive(Debug, Default)]
pub struct RecoveredSession {
    pub expiry: u32,
    /// Raw filter → subscription.
    pub subs: HashMap<String, Subscription>,
    /// Messages owed, by sequence number (so in delivery order).
    pub owed: BTreeMap<u64, Message>,
    /// Owed QoS 2 messages the subscriber has PUBREC'd: a PUBREL is owed, not them.
    pub released: BTreeSet<u64>,
    /// The last readings the session's client published that the broker stamped, oldest
    /// first, one per packet id, at most [`crate::router::STAMPS_REMEMBERED`].
    pub stamps: Vec<Stamp>,
}

#[derive(Debug, Default)]
pub struct Recovered {
    pub retained: BTreeMap<ByteString, Message>,
    pub sessions: HashMap<String, RecoveredSession>,
}

/// Decodes every valid record; returns them and the length of the valid prefix.
pub fn read_all(data: &[u8]) -> (Vec<Owned>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some((rec, n)) = record::decode(&data[at..]) {
        out.push(rec);
        at += n;
    }
    (out, at)
}

/// Applies the records in order.
pub fn replay(records: Vec<Owned>) -> Recovered {
    let mut r = Recovered::default();
    for rec in records {
        match rec {
            Owned::Retain(m) => {
                r.retained.insert(m.topic.clone(), m);
            }
            Owned::Unretain(t) => {
                r.retained.remove(t.as_str());
            }
            Owned::Session { client, expiry } => {
                r.sessions.entry(client).or_default().expiry = expiry;
            }
            Owned::EndSession { client } => {
                r.sessions.remove(&client);
            }
            Owned::Sub {
                client,
                filter,
                qos,
                no_local,
                retain_as_published,
                id,
            } => {
                // Filters were validated when subscribed; one that no longer parses
                // (a stricter future version) is skipped rather than failing start-up.
                if let (Some(s), Ok(f)) = (r.sessions.get_mut(&client), Filter::parse(&filter)) {
                    let sub = Subscription {
                        filter: f,
                        qos,
                        no_local,
                        retain_as_published,
                        id,
                    };
                    s.subs.insert(filter, sub);
                }
            }
            Owned::Unsub { client, filter } => {
                if let Some(s) = r.sessions.get_mut(&client) {
                    s.subs.remove(&filter);
                }
            }
            Owned::Enq { client, seq, msg } => {
                if let Some(s) = r.sessions.get_mut(&client) {
                    s.owed.insert(seq, msg);
                }
            }
            Owned::Ack { client, seq } => {
                if let Some(s) = r.sessions.get_mut(&client) {
                    s.owed.remove(&seq);
                    s.released.remove(&seq);
                }
            }
            Owned::Rel { client, seq } => {
                if let Some(s) = r.sessions.get_mut(&client)
                    && s.owed.contains_key(&seq)
                {
                    s.released.insert(seq);
                }
            }
            Owned::Stamp { client, stamp } => {
                // As the router keeps them: a packet id's new message replaces its old
                // one, the oldest goes beyond the bound.
                if let Some(s) = r.sessions.get_mut(&client) {
                    s.stamps.retain(|old| old.packet_id != stamp.packet_id);
                    s.stamps.push(stamp);
                    let over = s
                        .stamps
                        .len()
                        .saturating_sub(crate::router::STAMPS_REMEMBERED);
                    s.stamps.drain(..over);
                }
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Record;
    use ntex_bytes::Bytes;
    use ntex_mqtt::QoS;

    fn msg(topic: &'static str, p: &'static str) -> Message {
        Message {
            topic: ByteString::from_static(topic),
            payload: Bytes::from_static(p.as_bytes()),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: None,
        }
    }

    #[test]
    fn replay_keeps_unacked_messages_in_order_and_forgets_ended_sessions() {
        let mut buf = Vec::new();
        let (a, b, c) = (msg("t", "a"), msg("t", "b"), msg("t", "c"));
        for rec in [
            Record::Session {
                client: "gone",
                expiry: 10,
            },
            Record::Enq {
                client: "gone",
                seq: 1,
                msg: &a,
            },
            Record::EndSession { client: "gone" },
            Record::Session {
                client: "h",
                expiry: u32::MAX,
            },
            Record::Sub {
                client: "h",
                filter: "t",
                qos: QoS::ExactlyOnce,
                no_local: false,
                retain_as_published: false,
                id: Some(7),
            },
            Record::Enq {
                client: "h",
                seq: 1,
                msg: &a,
            },
            Record::Enq {
                client: "h",
                seq: 2,
                msg: &b,
            },
            Record::Enq {
                client: "h",
                seq: 3,
                msg: &c,
            },
            Record::Ack {
                client: "h",
                seq: 1,
            },
            Record::Retain(&msg("r", "on")),
            Record::Retain(&msg("r2", "x")),
            Record::Unretain("r2"),
        ] {
            record::encode(&rec, &mut buf);
        }
        buf.extend_from_slice(&[9, 0, 0]); // a torn tail
        let (records, valid) = read_all(&buf);
        assert_eq!(valid, buf.len() - 3);
        let r = replay(records);
        assert_eq!(r.sessions.len(), 1);
        let h = &r.sessions["h"];
        let owed: Vec<_> = h.owed.values().map(|m| &m.payload[..]).collect();
        assert_eq!(owed, [&b"b"[..], &b"c"[..]]);
        assert_eq!(h.subs["t"].qos, QoS::ExactlyOnce);
        assert_eq!(r.retained.keys().collect::<Vec<_>>(), ["r"]);
    }

    /// A session's stamps replay as the router keeps them: one per packet id, the last
    /// [`crate::router::STAMPS_REMEMBERED`], gone with the session.
    #[test]
    fn replay_keeps_the_last_stamps_per_packet_id_within_the_bound() {
        let stamp = |packet_id: u16, at: i64| record::Stamp {
            at,
            hash: 1,
            packet_id,
        };
        let mut buf = Vec::new();
        for client in ["b", "gone"] {
            let session = Record::Session { client, expiry: 60 };
            record::encode(&session, &mut buf);
        }
        for at in 0..40 {
            let stamp = stamp(at as u16 % 20 + 1, at);
            record::encode(&Record::Stamp { client: "b", stamp }, &mut buf);
            record::encode(
                &Record::Stamp {
                    client: "gone",
                    stamp,
                },
                &mut buf,
            );
        }
        record::encode(&Record::EndSession { client: "gone" }, &mut buf);
        let r = replay(read_all(&buf).0);
        let b: Vec<_> = r.sessions["b"].stamps.iter().map(|s| s.at).collect();
        assert_eq!(b, (24..40).collect::<Vec<_>>());
        assert!(!r.sessions.contains_key("gone"));
    }
}
