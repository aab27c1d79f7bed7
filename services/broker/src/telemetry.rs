//! The first hop of a reading a board publishes straight to MQTT.
//!
//! A reading's identity is `(device, metric, ts)`, and a reading without `ts` gets its
//! receive time where it first enters the platform: ingest for HTTP and TCP, the broker
//! for `{prefix}/{device}/telemetry`. So on every such PUBLISH (wills included) the
//! broker, before it stores or routes anything:
//!
//! - validates the payload as a reading of the topic's device
//!   ([`lentera_protocol::reading::stamp_payload`]) and against `[limits]` at the
//!   receive time;
//! - when it has no `ts`, replaces it with the board's own bytes with
//!   `"ts":"<receive time>"` spliced in after the opening brace, the time unique per
//!   device to the microsecond ([`Stamper`], one for the broker). That payload is what
//!   the store logs and every subscriber gets, so a redelivery after a restart of the
//!   historian — or of the broker — carries the same `ts` and is stored once;
//! - a resend of a QoS ≥ 1 reading it stamped — the same client, packet id and bytes,
//!   after a lost PUBACK (a dropped connection, a broker crash) — gets the same time
//!   again, so it too is stored once (`router/stamps.rs`: the last 16 stamps per
//!   session, logged with the message for a persistent one);
//! - a payload with its own `ts` goes on byte for byte;
//! - a refused one is not routed at all (nothing downstream has to cope with it): the
//!   publisher gets PUBACK/PUBREC 0x99 Payload format invalid (MQTT 5) or its usual
//!   acknowledgement (MQTT 3.1.1 cannot refuse), and a [`Rejection`] is published on
//!   `{prefix}/{device}/error` (QoS 1, not retained) through the broker's own routing,
//!   where the historian keeps it as a dead letter and the board can see it.
//!
//! Untouched: other topics, `$`-topics, deeper levels (`lentera/gh-1/telemetry/x`),
//! device ids that are not ids, and an empty retained payload (it deletes the retained
//! message). `broker.telemetry.prefix = ""` turns all of this off.
//!
//! Cost: one JSON parse per telemetry PUBLISH, outside the router's lock; the
//! stamper's own lock is held for one map lookup.

use chrono::{DateTime, Utc};
use lentera_bootstrap::Counter;
use lentera_protocol::reading::stamp_payload;
use lentera_protocol::rejection::excerpt;
use lentera_protocol::{DeviceId, Limits, ReadingError, Rejection, Stamper, TopicKind, Topics};
use ntex_bytes::{ByteString, Bytes};
use ntex_mqtt::QoS;
use parking_lot::Mutex;

use crate::message::Message;
use crate::metrics::Metrics;
use crate::settings::TelemetryCheck;

/// What the broker checks and stamps; one per broker, shared by its workers.
pub struct Telemetry {
    /// `None`: checking is off (`broker.telemetry.prefix = ""`).
    topics: Option<Topics>,
    limits: Limits,
    stamper: Mutex<Stamper>,
    stamped: Counter,
    metrics: Metrics,
}

/// A reading the broker stamped.
#[derive(Debug)]
pub struct Stamped {
    /// The board's bytes with `"ts":"<at>",` spliced in.
    pub payload: Bytes,
    pub at: DateTime<Utc>,
}

/// A telemetry PUBLISH the broker will not route.
#[derive(Debug)]
pub struct RefusedReading {
    pub error: ReadingError,
    /// The report for `{prefix}/{device}/error`.
    pub report: Message,
}

impl RefusedReading {
    /// The reason string for an MQTT 5 PUBACK/PUBREC 0x99.
    pub fn reason(&self) -> String {
        format!("{}: {}", self.error.code(), self.error)
    }
}

impl Telemetry {
    /// Settings were validated at start-up (`TelemetryCheck::validate`,
    /// `Limits::validate`).
    pub fn new(check: &TelemetryCheck, limits: Limits, metrics: &Metrics) -> Self {
        Self {
            topics: (!check.prefix.is_empty()).then(|| Topics::new(&check.prefix)),
            limits,
            stamper: Mutex::new(Stamper::new(check.stamp_offset, check.stamp_stride)),
            stamped: metrics.telemetry_stamped.clone(),
            metrics: metrics.clone(),
        }
    }

    /// Checking off: every payload is routed as it came (tests of the router alone).
    pub fn disabled(metrics: &Metrics) -> Self {
        let off = TelemetryCheck {
            prefix: String::new(),
            ..TelemetryCheck::default()
        };
        Self::new(&off, Limits::none(), metrics)
    }

    /// Looks at one PUBLISH: `Ok(None)` routes it as it is, `Ok(Some(payload))` routes
    /// it with `payload` instead (stamped), `Err` routes only the report.
    pub fn inspect(
        &self,
        topic: &str,
        payload: &[u8],
        retain: bool,
    ) -> Result<Option<Bytes>, Box<RefusedReading>> {
        Ok(self
            .inspect_at(topic, payload, retain, None)?
            .map(|s| s.payload))
    }

    /// [`Telemetry::inspect`], also saying the time stamped; `again`: stamp that time
    /// (a resend of a reading stamped before, `router/stamps.rs`) rather than a new one.
    pub fn inspect_at(
        &self,
        topic: &str,
        payload: &[u8],
        retain: bool,
        again: Option<DateTime<Utc>>,
    ) -> Result<Option<Stamped>, Box<RefusedReading>> {
        let Some(device) = self.telemetry_device(topic) else {
            return Ok(None);
        };
        if retain && payload.is_empty() {
            // Deletes the topic's retained message [MQTT-3.3.1-10]: not a reading.
            return Ok(None);
        }
        let now = Utc::now();
        let checked = stamp_payload(payload, &device, |d| {
            again.unwrap_or_else(|| self.stamper.lock().stamp(d.as_str(), now))
        })
        .and_then(|(reading, stamped)| {
            self.limits.check(&reading, now)?;
            Ok(stamped.map(|s| (s, reading.ts)))
        });
        match checked {
            Ok(Some((stamped, at))) => {
                // Once per PUBLISH: a resend's second look is not another stamp.
                if again.is_none() {
                    self.stamped.inc();
                }
                Ok(Some(Stamped {
                    payload: Bytes::from(stamped),
                    at,
                }))
            }
            Ok(None) => Ok(None),
            Err(error) => Err(Box::new(self.refuse(topic, &device, payload, error, now))),
        }
    }

    /// The device of `topic` when it is a telemetry topic the broker checks.
    fn telemetry_device(&self, topic: &str) -> Option<DeviceId> {
        let topics = self.topics.as_ref()?;
        if topic.starts_with('$') {
            return None;
        }
        match topics.parse(topic)? {
            (device, TopicKind::Telemetry) => Some(device),
            _ => None,
        }
    }

    fn refuse(
        &self,
        topic: &str,
        device: &DeviceId,
        payload: &[u8],
        error: ReadingError,
        at: DateTime<Utc>,
    ) -> RefusedReading {
        if let Some(c) = self.metrics.telemetry_rejected(error.code()) {
            c.inc();
        }
        tracing::debug!(%topic, reason = error.code(), detail = %error, "telemetry refused");
        let rejection = Rejection {
            reason: error.code().to_owned(),
            detail: error.to_string(),
            source: "broker".to_owned(),
            topic: topic.to_owned(),
            at,
            payload: excerpt(payload),
        };
        let topics = self.topics.as_ref().expect("only checked with a prefix");
        RefusedReading {
            error,
            report: Message {
                topic: ByteString::from(topics.error(device)),
                payload: Bytes::from(rejection.to_payload()),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lentera_bootstrap::Observability;

    fn telemetry() -> (Telemetry, Metrics) {
        let metrics = Metrics::new(&Observability::new("test"));
        let t = Telemetry::new(&TelemetryCheck::default(), Limits::default(), &metrics);
        (t, metrics)
    }

    fn ts_of(payload: &[u8]) -> String {
        let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
        v["ts"].as_str().unwrap().to_owned()
    }

    #[test]
    fn a_reading_without_ts_gets_a_unique_microsecond_in_the_boards_bytes() {
        let (t, m) = telemetry();
        let a = t
            .inspect("lentera/gh-1/telemetry", br#"{"lux": 3.50}"#, false)
            .unwrap()
            .unwrap();
        let b = t
            .inspect("lentera/gh-1/telemetry", br#"{"lux": 3.50}"#, false)
            .unwrap()
            .unwrap();
        let text = std::str::from_utf8(&a).unwrap();
        assert!(text.starts_with(r#"{"ts":""#), "{text}");
        assert!(text.ends_with(r#"Z","lux": 3.50}"#), "{text}");
        // 2026-12-03T14:15:39.123456Z: microseconds, UTC.
        assert_eq!(ts_of(&a).len(), 27, "{text}");
        assert_ne!(ts_of(&a), ts_of(&b));
        assert_eq!(m.telemetry_stamped.get(), 2);
    }

    #[test]
    fn what_is_not_a_boards_reading_passes_untouched() {
        let (t, m) = telemetry();
        let with_ts = format!(r#"{{"lux":1,"ts":"{}"}}"#, Utc::now().to_rfc3339());
        for (topic, payload, retain) in [
            ("lentera/gh-1/telemetry", with_ts.as_bytes(), false),
            ("lentera/gh-1/telemetry/x", &b"junk"[..], false),
            ("lentera/gh-1/status", &b"online"[..], true),
            ("lentera/bad.id/telemetry", &b"junk"[..], false),
            ("other/gh-1/telemetry", &b"junk"[..], false),
            ("$SYS/broker/uptime", &b"1"[..], true),
            ("lentera/gh-1/telemetry", &b""[..], true),
        ] {
            assert_eq!(t.inspect(topic, payload, retain).unwrap(), None, "{topic}");
        }
        assert_eq!(m.telemetry_stamped.get(), 0);
        let off = Telemetry::disabled(&m);
        assert_eq!(
            off.inspect("lentera/gh-1/telemetry", b"junk", false)
                .unwrap(),
            None
        );
    }

    #[test]
    fn refusals_say_why_on_the_devices_error_topic_and_are_counted() {
        let (t, m) = telemetry();
        for (payload, code) in [
            (&br#"{"lux":1e308}"#[..], "out_of_range"),
            (b"{not json", "malformed_json"),
            (b"[1]", "not_an_object"),
            (br#"{"lux":"x"}"#, "non_numeric_value"),
            (br#"{"device":"gh-2","lux":1}"#, "device_mismatch"),
            (br#"{"lux":1,"ts":"yesterday"}"#, "invalid_timestamp"),
            (
                br#"{"lux":1,"ts":"2099-01-01T00:00:00Z"}"#,
                "timestamp_in_future",
            ),
            (b"", "malformed_json"),
        ] {
            let r = t
                .inspect("lentera/gh-1/telemetry", payload, false)
                .unwrap_err();
            assert_eq!(r.error.code(), code);
            assert_eq!(&*r.report.topic, "lentera/gh-1/error");
            assert_eq!((r.report.qos, r.report.retain), (QoS::AtLeastOnce, false));
            let v: serde_json::Value = serde_json::from_slice(&r.report.payload).unwrap();
            assert_eq!(v["reason"], code);
            assert_eq!(v["source"], "broker");
            assert_eq!(v["topic"], "lentera/gh-1/telemetry");
            assert_eq!(v["payload"], excerpt(payload));
            assert!(r.reason().starts_with(code));
        }
        assert_eq!(m.telemetry_rejected("out_of_range").unwrap().get(), 1);
        assert_eq!(m.telemetry_rejected("malformed_json").unwrap().get(), 2);
        assert_eq!(
            m.telemetry_stamped.get(),
            0,
            "refused ones are not counted stamped"
        );
    }

    #[test]
    fn the_stamper_keeps_its_residue_class() {
        let metrics = Metrics::new(&Observability::new("test"));
        let check = TelemetryCheck {
            stamp_offset: 2,
            stamp_stride: 3,
            ..TelemetryCheck::default()
        };
        let t = Telemetry::new(&check, Limits::default(), &metrics);
        for _ in 0..10 {
            let p = t
                .inspect("lentera/gh-1/telemetry", br#"{"lux":1}"#, false)
                .unwrap()
                .unwrap();
            let ts = DateTime::parse_from_rfc3339(&ts_of(&p)).unwrap();
            assert_eq!(ts.timestamp_micros() % 3, 2);
        }
    }
}
