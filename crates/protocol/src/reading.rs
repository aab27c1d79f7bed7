//! The reading: one device's metrics at one instant.
//!
//! Wire form (MQTT `{prefix}/{device}/telemetry` payload and each element of an HTTP body):
//! `{"temperature":27.3,"humidity":61.2,"ts":"2026-11-22T01:00:00Z"}` — any finite numeric
//! metrics, `ts` optional (RFC 3339 string or unix milliseconds), and over HTTP a `device`.
//! Every way in (HTTP, TCP line, MQTT) ends in [`Reading`], so the rules live here once.
//!
//! A reading without `ts` is given its receive time by the first hop (see
//! [`crate::stamp`]), which then carries it in the payload: [`Reading::to_payload`] for
//! ingest, [`stamp_payload`] for the broker, which forwards a board's own bytes.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, SecondsFormat, TimeZone, Utc};
use serde_json::{Map, Value};

use crate::device::DeviceId;

/// Most metrics one reading may carry; a board never needs more, a bug might send thousands.
pub const MAX_METRICS: usize = 64;
/// Longest metric name.
pub const MAX_METRIC_NAME_LEN: usize = 64;

/// A validated reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub device: DeviceId,
    pub ts: DateTime<Utc>,
    /// Sorted by name so the canonical payload is deterministic.
    pub metrics: BTreeMap<String, f64>,
}

/// Why a reading was refused. [`ReadingError::code`] is stable and part of the API.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReadingError {
    #[error("body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("a reading must be a JSON object")]
    NotAnObject,
    #[error("the reading has no \"device\"")]
    MissingDevice,
    #[error("device id must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'")]
    InvalidDevice,
    #[error("\"device\" {0:?} does not match the topic's device")]
    DeviceMismatch(String),
    #[error(
        "metric name {0:?} must be 1-64 characters of A-Z, a-z, 0-9, '_', '.' or '-', and not \"device\" or \"ts\""
    )]
    InvalidMetricName(String),
    #[error("metric {0:?} is not a number")]
    NonNumeric(String),
    #[error("metric {0:?} is not a finite number")]
    NonFinite(String),
    #[error("\"ts\" must be an RFC 3339 string or unix milliseconds")]
    InvalidTimestamp,
    #[error("the reading has no metrics")]
    NoMetrics,
    #[error("a reading may carry at most {MAX_METRICS} metrics")]
    TooManyMetrics,
    #[error("metric {metric:?} = {} is outside its physical range {range}", num(*.value))]
    OutOfRange {
        metric: String,
        value: f64,
        range: String,
    },
    #[error("\"ts\" is more than {0} s ahead of the receiver's clock")]
    TimestampInFuture(i64),
    #[error("\"ts\" is more than {0} days in the past")]
    TimestampTooOld(i64),
    #[error("invalid SenML: {0}")]
    InvalidSenml(String),
    #[error("SenML field {0:?} must be understood and is not supported")]
    UnsupportedSenmlField(String),
}

impl ReadingError {
    /// Every code [`ReadingError::code`] can return, for counters registered up front.
    pub const CODES: &'static [&'static str] = &[
        "malformed_json",
        "not_an_object",
        "missing_device",
        "invalid_device",
        "device_mismatch",
        "invalid_metric_name",
        "non_numeric_value",
        "non_finite_value",
        "invalid_timestamp",
        "no_metrics",
        "too_many_metrics",
        "out_of_range",
        "timestamp_in_future",
        "timestamp_too_old",
        "invalid_senml",
        "unsupported_senml_field",
    ];

    /// Stable machine-readable code, used in HTTP error bodies and TCP `ERR` lines.
    pub fn code(&self) -> &'static str {
        match self {
            ReadingError::MalformedJson(_) => "malformed_json",
            ReadingError::NotAnObject => "not_an_object",
            ReadingError::MissingDevice => "missing_device",
            ReadingError::InvalidDevice => "invalid_device",
            ReadingError::DeviceMismatch(_) => "device_mismatch",
            ReadingError::InvalidMetricName(_) => "invalid_metric_name",
            ReadingError::NonNumeric(_) => "non_numeric_value",
            ReadingError::NonFinite(_) => "non_finite_value",
            ReadingError::InvalidTimestamp => "invalid_timestamp",
            ReadingError::NoMetrics => "no_metrics",
            ReadingError::TooManyMetrics => "too_many_metrics",
            ReadingError::OutOfRange { .. } => "out_of_range",
            ReadingError::TimestampInFuture(_) => "timestamp_in_future",
            ReadingError::TimestampTooOld(_) => "timestamp_too_old",
            ReadingError::InvalidSenml(_) => "invalid_senml",
            ReadingError::UnsupportedSenmlField(_) => "unsupported_senml_field",
        }
    }
}

/// A number as people read it in an error message: `27.5`, but `1e308` rather than 309
/// digits.
pub fn num(v: f64) -> String {
    if v != 0.0 && !(1e-4..1e9).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        v.to_string()
    }
}

/// True when `name` may be a metric name.
pub fn is_valid_metric_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_METRIC_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl Reading {
    /// Builds a reading from already-split parts, applying the metric rules.
    pub fn new(
        device: DeviceId,
        ts: DateTime<Utc>,
        metrics: impl IntoIterator<Item = (String, f64)>,
    ) -> Result<Self, ReadingError> {
        let mut map = BTreeMap::new();
        for (name, value) in metrics {
            check_metric(&name, value)?;
            map.insert(name, value);
            if map.len() > MAX_METRICS {
                return Err(ReadingError::TooManyMetrics);
            }
        }
        if map.is_empty() {
            return Err(ReadingError::NoMetrics);
        }
        Ok(Self {
            device,
            ts,
            metrics: map,
        })
    }

    /// Reads one JSON object. The device comes from `topic_device` when the reading
    /// arrived on a device's own topic (a `device` field, if present, must then agree),
    /// otherwise from the object's `device` field. `now` stamps readings without `ts`.
    pub fn from_object(
        obj: &Map<String, Value>,
        topic_device: Option<&DeviceId>,
        now: DateTime<Utc>,
    ) -> Result<Self, ReadingError> {
        Self::from_object_stamped(obj, topic_device, |_| now)
    }

    /// [`Reading::from_object`] where a reading without `ts` gets `stamp(device)`, called
    /// only then and only once the rest of the reading is valid (so a refused reading
    /// uses up no receive time).
    pub fn from_object_stamped(
        obj: &Map<String, Value>,
        topic_device: Option<&DeviceId>,
        stamp: impl FnOnce(&DeviceId) -> DateTime<Utc>,
    ) -> Result<Self, ReadingError> {
        let device = match (obj.get("device"), topic_device) {
            (None, Some(d)) => d.clone(),
            (None, None) => return Err(ReadingError::MissingDevice),
            (Some(Value::String(s)), Some(d)) if s == d.as_str() => d.clone(),
            (Some(Value::String(s)), Some(_)) => {
                return Err(ReadingError::DeviceMismatch(s.clone()));
            }
            (Some(Value::String(s)), None) => {
                DeviceId::parse(s).map_err(|_| ReadingError::InvalidDevice)?
            }
            (Some(_), _) => return Err(ReadingError::InvalidDevice),
        };
        let given = match obj.get("ts") {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_ts(v)?),
        };
        let metrics = obj
            .iter()
            .filter(|(k, _)| k.as_str() != "device" && k.as_str() != "ts")
            .map(|(k, v)| match v.as_f64() {
                Some(x) if v.is_number() => Ok((k.clone(), x)),
                _ => Err(ReadingError::NonNumeric(k.clone())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut reading = Reading::new(device, DateTime::UNIX_EPOCH, metrics)?;
        reading.ts = match given {
            Some(ts) => ts,
            None => stamp(&reading.device),
        };
        Ok(reading)
    }

    /// Parses an MQTT telemetry payload published on `device`'s topic.
    pub fn from_payload(
        payload: &[u8],
        device: &DeviceId,
        now: DateTime<Utc>,
    ) -> Result<Self, ReadingError> {
        Self::from_payload_stamped(payload, device, |_| now)
    }

    /// [`Reading::from_payload`] with a stamp for a reading without `ts`, as
    /// [`Reading::from_object_stamped`].
    pub fn from_payload_stamped(
        payload: &[u8],
        device: &DeviceId,
        stamp: impl FnOnce(&DeviceId) -> DateTime<Utc>,
    ) -> Result<Self, ReadingError> {
        let (obj, _) = parse_object(payload)?;
        Reading::from_object_stamped(&obj, Some(device), stamp)
    }

    /// The canonical telemetry payload: metrics plus an explicit RFC 3339 `ts` (microsecond
    /// precision), so every consumer sees the same instant and redelivery stays idempotent.
    pub fn to_payload(&self) -> Vec<u8> {
        let mut obj = Map::with_capacity(self.metrics.len() + 1);
        for (k, v) in &self.metrics {
            obj.insert(k.clone(), Value::from(*v));
        }
        obj.insert("ts".into(), Value::String(format_ts(self.ts)));
        serde_json::to_vec(&obj).expect("a map of numbers and strings always serialises")
    }
}

/// A payload parsed as a JSON object, and whether it names its own `ts`.
fn parse_object(payload: &[u8]) -> Result<(Map<String, Value>, bool), ReadingError> {
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| ReadingError::MalformedJson(e.to_string()))?;
    match value {
        Value::Object(obj) => {
            let has_ts = !matches!(obj.get("ts"), None | Some(Value::Null));
            Ok((obj, has_ts))
        }
        _ => Err(ReadingError::NotAnObject),
    }
}

/// What the first hop does with telemetry a board published itself: validates it as
/// [`Reading::from_payload_stamped`] (limits are the caller's: [`crate::Limits::check`])
/// and, when the board sent no `ts`, returns the payload with the stamp written into
/// it — `"ts":"…",` inserted right after the opening brace, so the board's own bytes are
/// kept as they were. `Ok((reading, None))`: forward the payload unchanged.
pub fn stamp_payload(
    payload: &[u8],
    device: &DeviceId,
    stamp: impl FnOnce(&DeviceId) -> DateTime<Utc>,
) -> Result<(Reading, Option<Vec<u8>>), ReadingError> {
    let (obj, has_ts) = parse_object(payload)?;
    let reading = Reading::from_object_stamped(&obj, Some(device), stamp)?;
    if has_ts {
        return Ok((reading, None));
    }
    let ts = format!("\"ts\":\"{}\"", format_ts(reading.ts));
    let stamped = if obj.contains_key("ts") {
        // `"ts":null`: a second key would be ambiguous, so write the object anew.
        let mut obj = obj;
        obj.insert("ts".into(), Value::String(format_ts(reading.ts)));
        serde_json::to_vec(&obj).expect("a parsed object always serialises")
    } else {
        // A valid reading is an object with at least one metric, so the first
        // non-blank byte is `{` and something follows it.
        let brace = payload
            .iter()
            .position(|b| *b == b'{')
            .expect("a JSON object starts with a brace");
        let mut out = Vec::with_capacity(payload.len() + ts.len() + 1);
        out.extend_from_slice(&payload[..=brace]);
        out.extend_from_slice(ts.as_bytes());
        out.push(b',');
        out.extend_from_slice(&payload[brace + 1..]);
        out
    };
    Ok((reading, Some(stamped)))
}

/// Keys of the payload that are not metrics: a metric of that name could not be written
/// into the canonical payload and read back (found by fuzzing: `gh-1 device=5` on TCP).
pub const RESERVED_KEYS: [&str; 2] = ["device", "ts"];

fn check_metric(name: &str, value: f64) -> Result<(), ReadingError> {
    if !is_valid_metric_name(name) || RESERVED_KEYS.contains(&name) {
        return Err(ReadingError::InvalidMetricName(name.to_owned()));
    }
    if !value.is_finite() {
        return Err(ReadingError::NonFinite(name.to_owned()));
    }
    Ok(())
}

/// `ts` as RFC 3339 text or integral unix milliseconds, within [`rfc3339_range`].
pub fn parse_ts(v: &Value) -> Result<DateTime<Utc>, ReadingError> {
    match v {
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .ok()
            .and_then(|t| rfc3339_range(t.with_timezone(&Utc)))
            .ok_or(ReadingError::InvalidTimestamp),
        Value::Number(n) => n
            .as_i64()
            .and_then(ts_from_unix_ms)
            .ok_or(ReadingError::InvalidTimestamp),
        _ => Err(ReadingError::InvalidTimestamp),
    }
}

/// Unix milliseconds to a timestamp; `None` outside [`rfc3339_range`].
pub fn ts_from_unix_ms(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .and_then(rfc3339_range)
}

/// `ts` when [`format_ts`] writes it as RFC 3339 can read it back: years 0000 to 9999
/// in UTC. chrono holds years far beyond (`+56993-…`, `-0001-…`), which a canonical
/// payload must never carry: every later hop would refuse it (found by fuzzing).
pub fn rfc3339_range(ts: DateTime<Utc>) -> Option<DateTime<Utc>> {
    (0..=9999).contains(&ts.year()).then_some(ts)
}

/// RFC 3339 with microseconds and `Z`, the one timestamp format the platform emits:
/// receive times are microsecond-unique (see [`crate::stamp`]), so every digit counts.
pub fn format_ts(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap()
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn gh1() -> DeviceId {
        DeviceId::parse("gh-1").unwrap()
    }

    #[test]
    fn reads_the_contract_example() {
        let r = Reading::from_object(
            &obj(json!({"device":"gh-1","temperature":27.3,"humidity":61.2,"ts":"2026-11-22T01:00:00Z"})),
            None,
            now(),
        )
        .unwrap();
        assert_eq!(r.device, gh1());
        assert_eq!(r.ts, now());
        assert_eq!(r.metrics["temperature"], 27.3);
        assert_eq!(r.metrics["humidity"], 61.2);
    }

    #[test]
    fn ts_defaults_to_now_and_accepts_unix_ms() {
        let r = Reading::from_object(&obj(json!({"device":"gh-1","lux":3})), None, now()).unwrap();
        assert_eq!(r.ts, now());
        let ms = now().timestamp_millis();
        let r = Reading::from_object(&obj(json!({"device":"gh-1","lux":3,"ts":ms})), None, now())
            .unwrap();
        assert_eq!(r.ts, now());
    }

    #[test]
    fn every_bad_input_has_its_code() {
        let cases = [
            (json!({"temperature":1}), "missing_device"),
            (json!({"device":"a/b","temperature":1}), "invalid_device"),
            (json!({"device":7,"temperature":1}), "invalid_device"),
            (
                json!({"device":"gh-1","temperature":"hot"}),
                "non_numeric_value",
            ),
            (
                json!({"device":"gh-1","temperature":true}),
                "non_numeric_value",
            ),
            (
                json!({"device":"gh-1","temperature":null}),
                "non_numeric_value",
            ),
            (json!({"device":"gh-1","bad name":1}), "invalid_metric_name"),
            (json!({"device":"gh-1"}), "no_metrics"),
            (
                json!({"device":"gh-1","t":1,"ts":"yesterday"}),
                "invalid_timestamp",
            ),
            (json!({"device":"gh-1","t":1,"ts":1.5}), "invalid_timestamp"),
        ];
        for (v, code) in cases {
            let err = Reading::from_object(&obj(v.clone()), None, now()).unwrap_err();
            assert_eq!(err.code(), code, "{v}");
        }
    }

    #[test]
    fn too_many_metrics_is_refused() {
        let mut m = Map::new();
        m.insert("device".into(), json!("gh-1"));
        for i in 0..=MAX_METRICS {
            m.insert(format!("m{i}"), json!(i));
        }
        let err = Reading::from_object(&m, None, now()).unwrap_err();
        assert_eq!(err, ReadingError::TooManyMetrics);
    }

    #[test]
    fn non_finite_values_are_refused() {
        let err = Reading::new(gh1(), now(), [("t".to_owned(), f64::NAN)]).unwrap_err();
        assert_eq!(err.code(), "non_finite_value");
        let err = Reading::new(gh1(), now(), [("t".to_owned(), f64::INFINITY)]).unwrap_err();
        assert_eq!(err.code(), "non_finite_value");
    }

    #[test]
    fn payload_device_must_match_topic() {
        let d = gh1();
        assert!(Reading::from_payload(br#"{"device":"gh-1","t":1}"#, &d, now()).is_ok());
        let err = Reading::from_payload(br#"{"device":"gh-2","t":1}"#, &d, now()).unwrap_err();
        assert_eq!(err.code(), "device_mismatch");
        let err = Reading::from_payload(b"[1]", &d, now()).unwrap_err();
        assert_eq!(err.code(), "not_an_object");
        let err = Reading::from_payload(b"{", &d, now()).unwrap_err();
        assert_eq!(err.code(), "malformed_json");
    }

    #[test]
    fn the_first_hop_writes_its_stamp_into_the_boards_bytes() {
        let d = gh1();
        let t = now() + chrono::Duration::microseconds(7);
        let (r, out) = stamp_payload(b" {\"lux\": 3.50}", &d, |_| t).unwrap();
        assert_eq!(r.ts, t);
        assert_eq!(
            std::str::from_utf8(&out.unwrap()).unwrap(),
            r#" {"ts":"2026-11-22T01:00:00.000007Z","lux": 3.50}"#
        );
        let (_, out) = stamp_payload(br#"{"lux":1,"ts":null}"#, &d, |_| t).unwrap();
        let back = Reading::from_payload(&out.unwrap(), &d, now()).unwrap();
        assert_eq!(back.ts, t);
        let (r, out) = stamp_payload(
            br#"{"lux":1,"ts":"2026-11-22T00:00:00Z"}"#,
            &d,
            |_| panic!(),
        )
        .unwrap();
        assert!(out.is_none());
        assert_eq!(r.ts, now() - chrono::Duration::hours(1));
        assert_eq!(
            stamp_payload(br#"{"lux":"x"}"#, &d, |_| panic!())
                .unwrap_err()
                .code(),
            "non_numeric_value"
        );
    }

    #[test]
    fn canonical_payload_round_trips() {
        let r = Reading::new(
            gh1(),
            now(),
            [("temperature".to_owned(), 27.3), ("lux".to_owned(), 0.0)],
        )
        .unwrap();
        let bytes = r.to_payload();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"lux":0.0,"temperature":27.3,"ts":"2026-11-22T01:00:00.000000Z"}"#
        );
        assert_eq!(
            Reading::from_payload(&bytes, &gh1(), Utc::now()).unwrap(),
            r
        );
    }
}
