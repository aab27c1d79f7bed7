//! A refused message, as the platform reports it after its sender was answered.
//!
//! A board that publishes straight to MQTT gets its PUBACK before anything downstream
//! has looked at the payload (an MQTT 3.1.1 PUBACK cannot refuse), and a reading that
//! PostgreSQL refuses was acknowledged long before. Such refusals are never silent: the
//! historian keeps them in the dead-letter table (`GET /api/v1/devices/{device}/rejected`)
//! and they are published on `{prefix}/{device}/error` in this shape:
//!
//! `{"reason":"out_of_range","detail":"metric \"lux\" = 1e308 …","source":"mqtt",
//!   "topic":"lentera/gh-1/telemetry","at":"2026-11-22T01:00:00.000000Z","payload":"{\"lux\":1e308}"}`

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::reading::format_ts;

/// Longest payload excerpt reported; the dead-letter table keeps the whole payload.
pub const EXCERPT_BYTES: usize = 256;

/// One refusal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    /// Stable reason code: a [`crate::ReadingError::code`] or `storage_refused`.
    pub reason: String,
    /// Human-readable detail.
    pub detail: String,
    /// Which door it came through: `mqtt`, `http`, `tcp`, `broker`.
    pub source: String,
    /// The MQTT topic it was published on.
    pub topic: String,
    #[serde(serialize_with = "ser_ts")]
    #[serde(deserialize_with = "de_ts")]
    pub at: DateTime<Utc>,
    /// [`excerpt`] of the payload.
    pub payload: String,
}

impl Rejection {
    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("strings and a timestamp always serialise")
    }

    pub fn from_payload(payload: &[u8]) -> Option<Self> {
        serde_json::from_slice(payload).ok()
    }
}

fn ser_ts<S: serde::Serializer>(ts: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_ts(*ts))
}

fn de_ts<'de, D: serde::Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let s = String::deserialize(d)?;
    DateTime::parse_from_rfc3339(&s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(serde::de::Error::custom)
}

/// At most [`EXCERPT_BYTES`] of `payload` as text: invalid UTF-8 replaced, control
/// characters escaped (`\u{1b}`), so an excerpt is safe in a log line, a terminal and
/// JSON alike, and `…` marks a cut.
pub fn excerpt(payload: &[u8]) -> String {
    let cut = payload.len() > EXCERPT_BYTES;
    let text = String::from_utf8_lossy(&payload[..payload.len().min(EXCERPT_BYTES)]);
    let mut out = String::with_capacity(text.len() + 3);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    if cut {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn excerpts_are_short_and_printable() {
        assert_eq!(excerpt(b"{\"lux\":1}"), "{\"lux\":1}");
        assert_eq!(excerpt(b"a\nb\x1b[31m\0"), "a\\u{a}b\\u{1b}[31m\\u{0}");
        let long = vec![b'x'; 1000];
        let e = excerpt(&long);
        assert!(e.ends_with('…') && e.len() < 300, "{}", e.len());
        assert_eq!(excerpt(&[0xff, b'a']), "\u{fffd}a");
    }

    #[test]
    fn the_payload_names_every_field() {
        let r = Rejection {
            reason: "out_of_range".into(),
            detail: "too big".into(),
            source: "mqtt".into(),
            topic: "lentera/gh-1/telemetry".into(),
            at: Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap(),
            payload: excerpt(br#"{"lux":1e308}"#),
        };
        let v: serde_json::Value = serde_json::from_slice(&r.to_payload()).unwrap();
        assert_eq!(v["reason"], "out_of_range");
        assert_eq!(v["at"], "2026-11-22T01:00:00.000000Z");
        assert_eq!(v["payload"], r#"{"lux":1e308}"#);
        assert_eq!(v["source"], "mqtt");
        assert_eq!(Rejection::from_payload(&r.to_payload()), Some(r));
    }
}
