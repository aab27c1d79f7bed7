//! The on-disk record format of the broker's log: one framed record per state change.
//!
//! Frame: `len: u32 LE | crc32(body): u32 LE | body`. The CRC lets recovery tell a torn
//! tail (the broker died mid-write) from a valid record: replay stops at the first frame
//! that is short or does not check out, and everything before it is kept.
//!
//! Body: a tag byte, then the fields. Strings and byte strings are `u32 LE length | bytes`.
//! Hand-written rather than serde + a format crate: ten record kinds do not justify a
//! new dependency, and encoding straight into the shared write buffer allocates nothing.
//!
//! A kind is only ever added (tag 10, `Stamp`, came last): an older broker stops its
//! replay at the first tag it does not know, as at a torn tail, so going back to an
//! older version after a newer one wrote its log loses what follows that record.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ntex_bytes::{ByteString, Bytes};
use ntex_mqtt::QoS;

use crate::message::{Message, Properties};

/// One state change, borrowing from the router's state (encoding) or owning (decoding).
#[derive(Debug)]
pub enum Record<'a> {
    /// The retained message of `msg.topic` is now `msg`.
    Retain(&'a Message),
    /// The topic's retained message was deleted.
    Unretain(&'a str),
    /// A persistent session exists (created, or its expiry interval changed).
    Session {
        client: &'a str,
        expiry: u32,
    },
    /// The session and everything it owned is gone (clean start, expiry, expiry 0).
    EndSession {
        client: &'a str,
    },
    Sub {
        client: &'a str,
        filter: &'a str,
        qos: QoS,
        no_local: bool,
        retain_as_published: bool,
        id: Option<u32>,
    },
    Unsub {
        client: &'a str,
        filter: &'a str,
    },
    /// Message number `seq` is owed to the session until acknowledged.
    Enq {
        client: &'a str,
        seq: u64,
        msg: &'a Message,
    },
    /// The subscriber acknowledged `seq` (PUBACK / PUBCOMP).
    Ack {
        client: &'a str,
        seq: u64,
    },
    /// The subscriber sent PUBREC for QoS 2 message `seq`: what is owed now is the
    /// PUBREL, not the PUBLISH [MQTT-4.4.0-1].
    Rel {
        client: &'a str,
        seq: u64,
    },
    /// The session's client published telemetry that the broker stamped; a resend of
    /// it gets the same stamp (`router/stamps.rs`).
    Stamp {
        client: &'a str,
        stamp: Stamp,
    },
}

/// What the broker remembers of a reading it stamped, so a resend of the same PUBLISH
/// gets the same `ts` (`router/stamps.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    /// The receive time written into the payload (Unix microseconds).
    pub at: i64,
    /// [`publish_hash`] of the PUBLISH as the client sent it.
    pub hash: u32,
    pub packet_id: u16,
}

/// CRC-32 of a PUBLISH's topic and payload as the client sent them: what tells a resend
/// of a packet id (the same message) from its reuse for another message.
pub fn publish_hash(topic: &str, payload: &[u8]) -> u32 {
    !crc32_update(
        crc32_update(crc32_update(!0, topic.as_bytes()), &[0]),
        payload,
    )
}

/// A decoded record: strings owned, messages rebuilt.
#[derive(Debug)]
pub enum Owned {
    Retain(Message),
    Unretain(String),
    Session {
        client: String,
        expiry: u32,
    },
    EndSession {
        client: String,
    },
    Sub {
        client: String,
        filter: String,
        qos: QoS,
        no_local: bool,
        retain_as_published: bool,
        id: Option<u32>,
    },
    Unsub {
        client: String,
        filter: String,
    },
    Enq {
        client: String,
        seq: u64,
        msg: Message,
    },
    Ack {
        client: String,
        seq: u64,
    },
    Rel {
        client: String,
        seq: u64,
    },
    Stamp {
        client: String,
        stamp: Stamp,
    },
}

/// Appends one framed record to `out`.
pub fn encode(rec: &Record<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]); // length and CRC, filled in below
    match rec {
        Record::Retain(m) => {
            out.push(1);
            message(m, out);
        }
        Record::Unretain(t) => {
            out.push(2);
            bytes(t.as_bytes(), out);
        }
        Record::Session { client, expiry } => {
            out.push(3);
            bytes(client.as_bytes(), out);
            out.extend_from_slice(&expiry.to_le_bytes());
        }
        Record::EndSession { client } => {
            out.push(4);
            bytes(client.as_bytes(), out);
        }
        Record::Sub {
            client,
            filter,
            qos,
            no_local,
            retain_as_published,
            id,
        } => {
            out.push(5);
            bytes(client.as_bytes(), out);
            bytes(filter.as_bytes(), out);
            out.push(
                u8::from(*qos)
                    | u8::from(*no_local) << 4
                    | u8::from(*retain_as_published) << 5
                    | u8::from(id.is_some()) << 6,
            );
            if let Some(id) = id {
                out.extend_from_slice(&id.to_le_bytes());
            }
        }
        Record::Unsub { client, filter } => {
            out.push(6);
            bytes(client.as_bytes(), out);
            bytes(filter.as_bytes(), out);
        }
        Record::Enq { client, seq, msg } => {
            out.push(7);
            bytes(client.as_bytes(), out);
            out.extend_from_slice(&seq.to_le_bytes());
            message(msg, out);
        }
        Record::Ack { client, seq } => {
            out.push(8);
            bytes(client.as_bytes(), out);
            out.extend_from_slice(&seq.to_le_bytes());
        }
        Record::Rel { client, seq } => {
            out.push(9);
            bytes(client.as_bytes(), out);
            out.extend_from_slice(&seq.to_le_bytes());
        }
        Record::Stamp { client, stamp } => {
            out.push(10);
            bytes(client.as_bytes(), out);
            out.extend_from_slice(&stamp.packet_id.to_le_bytes());
            out.extend_from_slice(&stamp.hash.to_le_bytes());
            out.extend_from_slice(&stamp.at.to_le_bytes());
        }
    }
    let body = &out[start + 8..];
    let len = body.len() as u32;
    let crc = crc32(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the frame at the start of `buf`: `Some((record, frame length))`, or `None` for a
/// torn or corrupt tail.
pub fn decode(buf: &[u8]) -> Option<(Owned, usize)> {
    let len = u32::from_le_bytes(buf.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(buf.get(4..8)?.try_into().ok()?);
    let body = buf.get(8..8 + len)?;
    if crc32(body) != crc {
        return None;
    }
    let mut r = Reader(body);
    let rec = match r.u8()? {
        1 => Owned::Retain(r.message()?),
        2 => Owned::Unretain(r.string()?),
        3 => Owned::Session {
            client: r.string()?,
            expiry: r.u32()?,
        },
        4 => Owned::EndSession {
            client: r.string()?,
        },
        5 => {
            let (client, filter) = (r.string()?, r.string()?);
            let bits = r.u8()?;
            Owned::Sub {
                client,
                filter,
                qos: qos(bits & 3)?,
                no_local: bits & 0x10 != 0,
                retain_as_published: bits & 0x20 != 0,
                // Bit 6 (and the id) came with subscription identifiers; older logs
                // never set it.
                id: if bits & 0x40 != 0 {
                    Some(r.u32()?)
                } else {
                    None
                },
            }
        }
        6 => Owned::Unsub {
            client: r.string()?,
            filter: r.string()?,
        },
        7 => Owned::Enq {
            client: r.string()?,
            seq: r.u64()?,
            msg: r.message()?,
        },
        8 => Owned::Ack {
            client: r.string()?,
            seq: r.u64()?,
        },
        9 => Owned::Rel {
            client: r.string()?,
            seq: r.u64()?,
        },
        10 => Owned::Stamp {
            client: r.string()?,
            stamp: Stamp {
                packet_id: r.u16()?,
                hash: r.u32()?,
                at: r.u64()? as i64,
            },
        },
        _ => return None,
    };
    Some((rec, 8 + len))
}

fn bytes(b: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn opt(b: Option<&[u8]>, out: &mut Vec<u8>) {
    match b {
        Some(b) => {
            out.push(1);
            bytes(b, out);
        }
        None => out.push(0),
    }
}

fn message(m: &Message, out: &mut Vec<u8>) {
    bytes(m.topic.as_bytes(), out);
    bytes(&m.payload, out);
    // Bit 6: expiry and subscription identifiers follow the properties (absent from logs
    // written before they existed).
    let ext = m
        .properties
        .as_ref()
        .is_some_and(|p| p.expires_at.is_some() || !p.subscription_ids.is_empty());
    out.push(
        u8::from(m.qos)
            | u8::from(m.retain) << 4
            | u8::from(m.properties.is_some()) << 5
            | u8::from(ext) << 6,
    );
    if let Some(p) = &m.properties {
        out.push(u8::from(p.is_utf8_payload));
        out.extend_from_slice(&(p.user_properties.len() as u32).to_le_bytes());
        for (k, v) in &p.user_properties {
            bytes(k.as_bytes(), out);
            bytes(v.as_bytes(), out);
        }
        opt(p.content_type.as_ref().map(|s| &s.as_bytes()[..]), out);
        opt(p.response_topic.as_ref().map(|s| &s.as_bytes()[..]), out);
        opt(p.correlation_data.as_deref(), out);
        if ext {
            // An instant means nothing after a restart: the deadline is stored as wall
            // clock time (Unix milliseconds), so time spent down counts as waiting.
            let deadline = p.expires_at.map_or(0, |t| {
                let left = t.saturating_duration_since(Instant::now());
                (SystemTime::now() + left)
                    .duration_since(UNIX_EPOCH)
                    .map_or(1, |d| d.as_millis().max(1) as u64)
            });
            out.extend_from_slice(&deadline.to_le_bytes());
            out.extend_from_slice(&(p.subscription_ids.len() as u32).to_le_bytes());
            for id in &p.subscription_ids {
                out.extend_from_slice(&id.to_le_bytes());
            }
        }
    }
}

fn qos(b: u8) -> Option<QoS> {
    match b {
        0 => Some(QoS::AtMostOnce),
        1 => Some(QoS::AtLeastOnce),
        2 => Some(QoS::ExactlyOnce),
        _ => None,
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&[u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
    fn bstring(&mut self) -> Option<ByteString> {
        Some(ByteString::from(self.string()?))
    }
    fn opt_bytes(&mut self) -> Option<Option<&[u8]>> {
        Some(match self.u8()? {
            0 => None,
            _ => Some(self.bytes()?),
        })
    }
    fn message(&mut self) -> Option<Message> {
        let topic = self.bstring()?;
        let payload = Bytes::copy_from_slice(self.bytes()?);
        let bits = self.u8()?;
        let properties = if bits & 0x20 != 0 {
            let is_utf8_payload = self.u8()? != 0;
            let n = self.u32()? as usize;
            let mut user_properties = Vec::with_capacity(n.min(64));
            for _ in 0..n {
                user_properties.push((self.bstring()?, self.bstring()?));
            }
            let text = |b: Option<&[u8]>| {
                b.and_then(|b| std::str::from_utf8(b).ok())
                    .map(ByteString::from)
            };
            let mut p = Properties {
                user_properties,
                content_type: text(self.opt_bytes()?),
                response_topic: text(self.opt_bytes()?),
                correlation_data: self.opt_bytes()?.map(Bytes::copy_from_slice),
                is_utf8_payload,
                ..Properties::default()
            };
            if bits & 0x40 != 0 {
                let deadline = self.u64()?;
                if deadline != 0 {
                    let at = UNIX_EPOCH + Duration::from_millis(deadline);
                    let left = at.duration_since(SystemTime::now()).unwrap_or_default();
                    p.expires_at = Some(Instant::now() + left);
                }
                let n = self.u32()? as usize;
                p.subscription_ids = (0..n).map(|_| self.u32()).collect::<Option<_>>()?;
            }
            Some(Arc::new(p))
        } else {
            None
        };
        Some(Message {
            topic,
            payload,
            qos: qos(bits & 3)?,
            retain: bits & 0x10 != 0,
            properties,
        })
    }
}

/// CRC-32 (IEEE), table-driven; the table is built at compile time.
pub fn crc32(data: &[u8]) -> u32 {
    !crc32_update(!0, data)
}

/// The CRC-32 register `c` after `data` (start with `!0`, finish with `!`).
fn crc32_update(mut c: u32, data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    for &b in data {
        c = TABLE[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_reference_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    /// Subscription identifiers and the expiry deadline survive the log (as wall-clock
    /// time), and a `Sub` record keeps its identifier.
    #[test]
    fn mqtt5_extensions_round_trip() {
        let in_a_minute = Instant::now() + Duration::from_secs(60);
        let msg = Message {
            topic: ByteString::from_static("a"),
            payload: Bytes::from_static(b"p"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Some(Arc::new(Properties {
                expires_at: Some(in_a_minute),
                subscription_ids: vec![3, 268_435_455],
                ..Default::default()
            })),
        };
        let mut buf = Vec::new();
        encode(&Record::Retain(&msg), &mut buf);
        let sub = Record::Sub {
            client: "c",
            filter: "a/#",
            qos: QoS::AtMostOnce,
            no_local: true,
            retain_as_published: false,
            id: Some(42),
        };
        encode(&sub, &mut buf);
        let (Owned::Retain(m), n) = decode(&buf).unwrap() else {
            panic!("not a Retain")
        };
        let p = m.properties.unwrap();
        assert_eq!(p.subscription_ids, [3, 268_435_455]);
        let at = p.expires_at.unwrap();
        let drift = at.max(in_a_minute) - at.min(in_a_minute);
        assert!(
            drift < Duration::from_millis(50),
            "deadline moved by {drift:?}"
        );
        assert!(matches!(
            decode(&buf[n..]),
            Some((
                Owned::Sub {
                    id: Some(42),
                    no_local: true,
                    ..
                },
                _
            ))
        ));
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_rejected() {
        let msg = Message {
            topic: ByteString::from_static("a/b"),
            payload: Bytes::from_static(b"hello"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: Some(Arc::new(Properties {
                user_properties: vec![("k".into(), "v".into())],
                correlation_data: Some(Bytes::from_static(b"c")),
                ..Default::default()
            })),
        };
        let mut buf = Vec::new();
        encode(
            &Record::Enq {
                client: "h",
                seq: 7,
                msg: &msg,
            },
            &mut buf,
        );
        encode(
            &Record::Ack {
                client: "h",
                seq: 7,
            },
            &mut buf,
        );
        let stamp = Stamp {
            at: 1_764_000_000_123_456,
            hash: publish_hash("lentera/gh-1/telemetry", b"{}"),
            packet_id: 65_535,
        };
        let stamp_at = buf.len();
        encode(&Record::Stamp { client: "h", stamp }, &mut buf);
        assert!(matches!(
            decode(&buf[stamp_at..]),
            Some((Owned::Stamp { client, stamp: s }, _)) if client == "h" && s == stamp
        ));
        buf.truncate(stamp_at);
        let (rec, n) = decode(&buf).unwrap();
        let Owned::Enq {
            client,
            seq,
            msg: m,
        } = rec
        else {
            panic!("wrong record {rec:?}")
        };
        assert_eq!(
            (client.as_str(), seq, &m.payload[..], m.qos, m.retain),
            ("h", 7, &b"hello"[..], QoS::ExactlyOnce, true)
        );
        let p = m.properties.unwrap();
        assert_eq!(p.user_properties[0].1, "v");
        assert_eq!(p.correlation_data.as_deref(), Some(&b"c"[..]));
        assert!(matches!(
            decode(&buf[n..]),
            Some((Owned::Ack { seq: 7, .. }, _))
        ));
        assert!(
            decode(&buf[n..buf.len() - 1]).is_none(),
            "torn record accepted"
        );
        let mut bad = buf[n..].to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(decode(&bad).is_none(), "corrupt record accepted");
    }
}
