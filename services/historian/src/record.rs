//! One MQTT delivery → what to store, pure (no I/O, `now` passed in).
//!
//! Every delivery ends in one of three outcomes, and all three are acknowledged after the
//! batch they belong to commits: a [`Record`] to write, something to skip on purpose, or
//! an invalid payload. Invalid payloads are acknowledged too — they can never succeed, so
//! leaving them unacknowledged would make the broker redeliver them forever — but never
//! dropped silently: the consumer keeps each as a dead letter and reports it on the
//! device's error topic.
//!
//! Telemetry without `ts` is normally stamped by the first hop (ingest, or the Lentera
//! broker for boards publishing to MQTT). On another broker it arrives without one and is
//! stamped here with the same [`lentera_protocol::Stamper`] rule; a redelivery of such a message then gets a
//! new time, which is the one thing that degrades there (see docs/architecture.md).

use chrono::{DateTime, Utc};
use lentera_db::write::{Record, Rejected};
use lentera_protocol::{
    DeviceStatus, LampCommand, LampMode, Limits, Reading, ReadingError, Rejection, TopicKind,
    Topics,
};

/// Error codes counted in `lentera_historian_invalid_payloads_total{code=…}`: the
/// protocol's reading codes ([`ReadingError::CODES`]) plus these, for the other topics.
pub const OWN_CODES: &[&str] = &[
    "invalid_topic",
    "invalid_lamp_command",
    "invalid_lamp_state",
    "invalid_lamp_mode",
    "invalid_status",
];

/// Every code an [`Outcome::Invalid`] may carry.
pub fn invalid_codes() -> impl Iterator<Item = &'static str> {
    ReadingError::CODES.iter().chain(OWN_CODES).copied()
}

/// The device a topic names, valid or not, for a dead letter (`""` if none).
pub fn topic_device(topics: &Topics, topic: &str) -> String {
    topic
        .strip_prefix(topics.prefix())
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|r| r.split('/').next())
        .unwrap_or_default()
        .to_owned()
}

#[derive(Debug)]
pub enum Outcome {
    Store(Record),
    /// Valid but deliberately not stored; the reason is for logs.
    Skip(&'static str),
    /// The payload can never be stored; the code is one of [`invalid_codes`].
    Invalid(&'static str, String),
}

/// Classifies one delivery. `retained` is the PUBLISH retain flag: the broker sets it on
/// copies it replays to a new subscription, which the historian sees on every reconnect.
/// Telemetry must also pass `limits`: boards may publish straight to MQTT, bypassing
/// ingest, and must not get implausible values into history that way.
///
/// A refusal that the broker reported on `{prefix}/{device}/error` (source `broker`:
/// a board's publish it acknowledged but did not pass on) becomes a dead letter here;
/// the historian's own reports on that topic are skipped, having been stored already.
pub fn classify(
    topics: &Topics,
    limits: &Limits,
    topic: &str,
    payload: &[u8],
    retained: bool,
    now: DateTime<Utc>,
    stamp: &mut dyn FnMut(&str) -> DateTime<Utc>,
) -> Outcome {
    if let Some(device) = topics.parse_error(topic) {
        return match Rejection::from_payload(payload) {
            Some(r) if r.source == "broker" => Outcome::Store(Record::Rejected(Rejected {
                device: device.to_string(),
                at: r.at,
                reason: r.reason,
                detail: r.detail,
                source: r.source,
                topic: r.topic,
                payload: r.payload.into_bytes(),
            })),
            _ => Outcome::Skip("error_report"),
        };
    }
    let Some((device, kind)) = topics.parse(topic) else {
        return Outcome::Invalid("invalid_topic", topic.to_owned());
    };
    let text = || String::from_utf8_lossy(payload).into_owned();
    match kind {
        TopicKind::Telemetry => {
            match Reading::from_payload_stamped(payload, &device, |d| stamp(d.as_str()))
                .and_then(|r| limits.check(&r, now).map(|()| r))
            {
                Ok(r) => Outcome::Store(Record::Reading(r)),
                Err(e) => Outcome::Invalid(e.code(), e.to_string()),
            }
        }
        // A retained lamp/state or lamp/mode copy repeats a message this persistent
        // session already stored live; storing it again would add a duplicate lamp event
        // on every reconnect.
        TopicKind::LampState | TopicKind::LampMode if retained => Outcome::Skip("retained_replay"),
        TopicKind::LampSet => match LampCommand::from_payload(payload) {
            Some(command) => Outcome::Store(Record::LampCommand {
                device: device.to_string(),
                at: now,
                command,
            }),
            None => Outcome::Invalid("invalid_lamp_command", text()),
        },
        TopicKind::LampState => match LampCommand::from_payload(payload) {
            Some(state) => Outcome::Store(Record::LampState {
                device: device.to_string(),
                at: now,
                state,
            }),
            None => Outcome::Invalid("invalid_lamp_state", text()),
        },
        TopicKind::LampMode => match LampMode::from_payload(payload) {
            Ok(mode) => Outcome::Store(Record::LampMode {
                device: device.to_string(),
                at: now,
                mode,
            }),
            Err(e) => Outcome::Invalid("invalid_lamp_mode", e.to_string()),
        },
        // Status is an idempotent upsert of the device row, so a retained copy is harmless.
        TopicKind::Status => match DeviceStatus::from_payload(payload) {
            Some(status) => Outcome::Store(Record::Status {
                device: device.to_string(),
                at: now,
                status,
            }),
            None => Outcome::Invalid("invalid_status", text()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use lentera_protocol::Stamper;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap()
    }

    fn classify(topic: &str, payload: &[u8], retained: bool) -> Outcome {
        super::classify(
            &Topics::default(),
            &Limits::default(),
            topic,
            payload,
            retained,
            now(),
            &mut |d| Stamper::default().stamp(d, now()),
        )
    }

    #[test]
    fn telemetry_becomes_a_reading() {
        match classify("lentera/gh-1/telemetry", br#"{"lux":3.5}"#, false) {
            Outcome::Store(Record::Reading(r)) => {
                assert_eq!(r.device.as_str(), "gh-1");
                assert_eq!(r.ts, now());
                assert_eq!(r.metrics["lux"], 3.5);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_invalid_outcome_uses_a_registered_code() {
        let cases: &[(&str, &[u8], &str)] = &[
            ("lentera/gh-1/telemetry", b"{", "malformed_json"),
            (
                "lentera/gh-1/telemetry",
                br#"{"t":"hot"}"#,
                "non_numeric_value",
            ),
            ("lentera/bad.id/telemetry", b"{}", "invalid_topic"),
            (
                "lentera/gh-1/telemetry",
                br#"{"humidity":140}"#,
                "out_of_range",
            ),
            (
                "lentera/gh-1/telemetry",
                br#"{"lux":1,"ts":"2099-01-01T00:00:00Z"}"#,
                "timestamp_in_future",
            ),
            (
                "lentera/gh-1/telemetry",
                br#"{"lux":1,"ts":"1970-01-01T00:00:00Z"}"#,
                "timestamp_too_old",
            ),
            ("lentera/l1/lamp/set", b"dim", "invalid_lamp_command"),
            ("lentera/l1/lamp/state", b"blink", "invalid_lamp_state"),
            (
                "lentera/l1/lamp/mode",
                b"{\"mode\":\"x\"}",
                "invalid_lamp_mode",
            ),
            ("lentera/l1/status", b"sleepy", "invalid_status"),
        ];
        for (topic, payload, code) in cases {
            match classify(topic, payload, false) {
                Outcome::Invalid(c, _) => {
                    assert_eq!(c, *code, "{topic}");
                    assert!(invalid_codes().any(|k| k == c), "{c} not registered");
                }
                other => panic!("{topic}: {other:?}"),
            }
        }
    }

    #[test]
    fn lamp_topics_become_lamp_records() {
        assert!(matches!(
            classify("lentera/l1/lamp/set", b"on", false),
            Outcome::Store(Record::LampCommand {
                command: LampCommand::On,
                ..
            })
        ));
        assert!(matches!(
            classify("lentera/l1/lamp/state", b"OFF\n", false),
            Outcome::Store(Record::LampState {
                state: LampCommand::Off,
                ..
            })
        ));
        assert!(matches!(
            classify("lentera/l1/lamp/mode", br#"{"mode":"on"}"#, false),
            Outcome::Store(Record::LampMode { .. })
        ));
        assert!(matches!(
            classify("lentera/l1/status", b"offline", true),
            Outcome::Store(Record::Status {
                status: DeviceStatus::Offline,
                ..
            })
        ));
    }

    #[test]
    fn retained_lamp_replays_are_skipped() {
        assert!(matches!(
            classify("lentera/l1/lamp/state", b"on", true),
            Outcome::Skip(_)
        ));
        assert!(matches!(
            classify("lentera/l1/lamp/mode", br#"{"mode":"auto"}"#, true),
            Outcome::Skip(_)
        ));
    }
}
