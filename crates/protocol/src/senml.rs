//! SenML (RFC 8428, JSON form, `application/senml+json`) → [`Reading`]s.
//!
//! So boards and tools from other platforms can post unchanged. A pack is a JSON array of
//! records; base fields (`bn`, `bt`, `bu`, `bv`) carry over to every later record until
//! replaced. Each record is resolved (RFC 8428 §4.6) and mapped onto our model:
//!
//! - **name → device and metric.** The resolved name is `bn + n`. An RFC 8141 device URN
//!   prefix `urn:dev:<kind>:` is dropped, then the name is split at its *last* `/`, `:`
//!   or `;`: the left part is the device, the right part the metric. So
//!   `{"bn":"gh-1/","n":"temperature"}`, `{"bn":"gh-1:","n":"temperature"}` and
//!   `{"bn":"urn:dev:mac:0024befffe804ff1;","n":"temperature"}` all work. A name without a
//!   separator is `invalid_senml`; the parts must satisfy our device and metric rules.
//! - **time.** `bt + t` in seconds (fractions allowed, stored to the millisecond).
//!   Resolved values below 2^28 are relative to now (RFC 8428 §4.5.3), so a record
//!   without any time is "now".
//! - **value.** `bv + v`. `vs`, `vb` and `vd` (string, boolean, data) are
//!   `non_numeric_value`; a record without `v` is `invalid_senml`.
//! - **records sharing device and time** become one reading with several metrics; two
//!   records for the same metric at the same instant are `invalid_senml`.
//! - **unknown fields.** Fields ending in `_` are "must understand" (§4.4) and are
//!   refused with `unsupported_senml_field`. Other fields we do not use (`u`, `bu`, `s`,
//!   `bs`, `ut`, `bver`, extensions) are ignored: our metric names imply their units
//!   (°C, %RH, lx), and a reading in the wrong unit usually fails the range check.
//!
//! Errors carry the index of the offending record, like JSON batches do.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value};

use crate::device::DeviceId;
use crate::reading::{Reading, ReadingError, is_valid_metric_name, rfc3339_range, ts_from_unix_ms};

/// The IANA media type.
pub const CONTENT_TYPE: &str = "application/senml+json";

/// Resolved times below this many seconds are relative to now (RFC 8428 §4.5.3).
const RELATIVE_LIMIT: f64 = 268_435_456.0;

/// Base values in force while walking a pack.
#[derive(Default)]
struct Base {
    name: String,
    time: f64,
    value: f64,
}

/// Records of one device at one instant: key, metric → (value, record index).
type Group = ((DeviceId, DateTime<Utc>), BTreeMap<String, (f64, usize)>);

/// One reading of a pack, with the record indexes it came from (for error reports).
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub reading: Reading,
    /// Metric → index of the record that carried it.
    pub records: BTreeMap<String, usize>,
}

impl Resolved {
    /// The record to blame for `e`: the metric's own record when the error names a
    /// metric, otherwise the reading's first record.
    pub fn index_for(&self, e: &ReadingError) -> usize {
        let metric = match e {
            ReadingError::OutOfRange { metric, .. } | ReadingError::NonFinite(metric) => {
                Some(metric)
            }
            _ => None,
        };
        metric
            .and_then(|m| self.records.get(m))
            .or_else(|| self.records.values().min())
            .copied()
            .unwrap_or(0)
    }
}

/// Parses a SenML pack into readings, grouped by device and instant in first-seen order.
/// On error, returns the index of the offending record.
pub fn parse(pack: &Value, now: DateTime<Utc>) -> Result<Vec<Resolved>, (usize, ReadingError)> {
    let records = pack.as_array().ok_or_else(|| {
        (
            0,
            ReadingError::InvalidSenml("a pack is a JSON array".into()),
        )
    })?;
    let mut base = Base::default();
    // (device, ts) → (first record index, metrics); Vec keeps the pack's order.
    let mut groups: Vec<Group> = Vec::new();
    for (i, record) in records.iter().enumerate() {
        let obj = record.as_object().ok_or_else(|| {
            (
                i,
                ReadingError::InvalidSenml("a record is a JSON object".into()),
            )
        })?;
        let (device, ts, metric, value) = resolve(obj, &mut base, now).map_err(|e| (i, e))?;
        let key = (device, ts);
        match groups.iter_mut().find(|g| g.0 == key) {
            Some(g) => {
                // Two values for one metric at one instant: keeping either would silently
                // drop the other, so the pack is refused.
                if let Some((_, first)) = g.1.insert(metric.clone(), (value, i)) {
                    return Err((
                        i,
                        ReadingError::InvalidSenml(format!(
                            "record repeats {metric:?} at the time of record {first}"
                        )),
                    ));
                }
            }
            None => groups.push((key, BTreeMap::from([(metric, (value, i))]))),
        }
    }
    groups
        .into_iter()
        .map(|((device, ts), metrics)| {
            let records: BTreeMap<String, usize> =
                metrics.iter().map(|(m, (_, i))| (m.clone(), *i)).collect();
            let first = records.values().min().copied().unwrap_or(0);
            Reading::new(device, ts, metrics.into_iter().map(|(m, (v, _))| (m, v)))
                .map(|reading| Resolved { reading, records })
                .map_err(|e| (first, e))
        })
        .collect()
}

fn resolve(
    obj: &Map<String, Value>,
    base: &mut Base,
    now: DateTime<Utc>,
) -> Result<(DeviceId, DateTime<Utc>, String, f64), ReadingError> {
    if let Some(k) = obj.keys().find(|k| k.ends_with('_')) {
        return Err(ReadingError::UnsupportedSenmlField(k.clone()));
    }
    if let Some(bn) = obj.get("bn") {
        base.name = string(bn, "bn")?.to_owned();
    }
    if let Some(bt) = obj.get("bt") {
        base.time = number(bt, "bt")?;
    }
    if let Some(bv) = obj.get("bv") {
        base.value = number(bv, "bv")?;
    }
    let name = match obj.get("n") {
        Some(n) => format!("{}{}", base.name, string(n, "n")?),
        None => base.name.clone(),
    };
    let (device, metric) = split_name(&name)?;
    let value = match obj.get("v") {
        Some(v) => {
            let v = v
                .as_f64()
                .ok_or_else(|| ReadingError::NonNumeric(metric.clone()))?;
            base.value + v
        }
        None if ["vs", "vb", "vd"].iter().any(|k| obj.contains_key(*k)) => {
            return Err(ReadingError::NonNumeric(metric));
        }
        None => {
            return Err(ReadingError::InvalidSenml(format!(
                "record for {name:?} has no numeric value \"v\""
            )));
        }
    };
    let t = match obj.get("t") {
        Some(t) => number(t, "t")?,
        None => 0.0,
    };
    let ts = resolve_time(base.time + t, now).ok_or(ReadingError::InvalidTimestamp)?;
    Ok((device, ts, metric, value))
}

/// Seconds (absolute since the epoch, or relative to `now` below 2^28) to a timestamp.
fn resolve_time(secs: f64, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if !secs.is_finite() {
        return None;
    }
    let ms = (secs * 1000.0).round();
    if ms.abs() > 1e15 {
        return None;
    }
    if secs < RELATIVE_LIMIT {
        now.checked_add_signed(Duration::milliseconds(ms as i64))
            .and_then(rfc3339_range)
    } else {
        ts_from_unix_ms(ms as i64)
    }
}

/// `<device><sep><metric>` after an optional `urn:dev:<kind>:` prefix; `sep` ∈ `/ : ;`.
fn split_name(name: &str) -> Result<(DeviceId, String), ReadingError> {
    let rest = strip_dev_urn(name);
    let (device, metric) = rest
        .rfind(['/', ':', ';'])
        .map(|i| (&rest[..i], &rest[i + 1..]))
        .ok_or_else(|| {
            ReadingError::InvalidSenml(format!(
                "name {name:?} must be <device>/<metric> (bn \"gh-1/\" + n \"temperature\")"
            ))
        })?;
    let device = DeviceId::parse(device).map_err(|_| ReadingError::InvalidDevice)?;
    if !is_valid_metric_name(metric) {
        return Err(ReadingError::InvalidMetricName(metric.to_owned()));
    }
    Ok((device, metric.to_owned()))
}

fn strip_dev_urn(name: &str) -> &str {
    let lower = name.get(..8).map(str::to_ascii_lowercase);
    if lower.as_deref() == Some("urn:dev:")
        && let Some(i) = name[8..].find(':')
    {
        return &name[8 + i + 1..];
    }
    name
}

fn string<'a>(v: &'a Value, field: &str) -> Result<&'a str, ReadingError> {
    v.as_str()
        .ok_or_else(|| ReadingError::InvalidSenml(format!("\"{field}\" must be a string")))
}

fn number(v: &Value, field: &str) -> Result<f64, ReadingError> {
    v.as_f64()
        .ok_or_else(|| ReadingError::InvalidSenml(format!("\"{field}\" must be a number")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap()
    }

    fn ok(pack: Value) -> Vec<Reading> {
        parse(&pack, now())
            .unwrap()
            .into_iter()
            .map(|r| r.reading)
            .collect()
    }

    fn err(pack: Value) -> (usize, &'static str) {
        let (i, e) = parse(&pack, now()).unwrap_err();
        (i, e.code())
    }

    #[test]
    fn base_name_and_time_resolve_into_one_reading_per_instant() {
        let t = now().timestamp() as f64;
        let r = ok(json!([
            {"bn":"gh-1/","bt":t,"bu":"Cel","n":"temperature","v":27.5},
            {"n":"humidity","u":"%RH","v":61},
            {"n":"temperature","t":60,"v":27.7}
        ]));
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].device.as_str(), "gh-1");
        assert_eq!(r[0].ts, now());
        assert_eq!(r[0].metrics["temperature"], 27.5);
        assert_eq!(r[0].metrics["humidity"], 61.0);
        assert_eq!(r[1].ts, now() + Duration::seconds(60));
        assert_eq!(r[1].metrics["temperature"], 27.7);
    }

    #[test]
    fn small_times_are_relative_to_now_and_fractions_kept_to_the_ms() {
        let r = ok(json!([{"bn":"gh-1:","n":"lux","v":3,"t":-5.25}]));
        assert_eq!(r[0].ts, now() - Duration::milliseconds(5250));
        let r = ok(json!([{"n":"gh-1/lux","v":3}]));
        assert_eq!(r[0].ts, now());
        let r = ok(json!([{"n":"gh-1/lux","v":3,"t":1_795_309_200.5}]));
        assert_eq!(r[0].ts.timestamp_millis(), 1_795_309_200_500);
    }

    #[test]
    fn device_urns_and_base_values() {
        let r = ok(json!([
            {"bn":"urn:dev:mac:0024befffe804ff1;","bv":20,"n":"temperature","v":1.5}
        ]));
        assert_eq!(r[0].device.as_str(), "0024befffe804ff1");
        assert_eq!(r[0].metrics["temperature"], 21.5);
        let r = ok(json!([{"bn":"urn:dev:ow:10e2073a01080063:","n":"temp","v":1}]));
        assert_eq!(r[0].device.as_str(), "10e2073a01080063");
    }

    #[test]
    fn every_bad_record_is_reported_with_its_index_and_code() {
        let cases = [
            (json!({"n":"gh-1/t","v":1}), (0, "invalid_senml")),
            (json!([1]), (0, "invalid_senml")),
            (
                json!([{"n":"gh-1/t","v":1},{"n":"t","v":1}]),
                (1, "invalid_senml"),
            ),
            (json!([{"n":"gh-1/t","vs":"hot"}]), (0, "non_numeric_value")),
            (json!([{"n":"gh-1/t","vb":true}]), (0, "non_numeric_value")),
            (json!([{"n":"gh-1/t","v":"1"}]), (0, "non_numeric_value")),
            (json!([{"n":"gh-1/t"}]), (0, "invalid_senml")),
            (
                json!([{"n":"gh-1/t","v":1,"t":"now"}]),
                (0, "invalid_senml"),
            ),
            (
                json!([{"n":"gh-1/t","v":1,"bt":1e300}]),
                (0, "invalid_timestamp"),
            ),
            (json!([{"bn":5,"n":"t","v":1}]), (0, "invalid_senml")),
            (json!([{"n":"g h/t","v":1}]), (0, "invalid_device")),
            (
                json!([{"n":"gh-1/bad name","v":1}]),
                (0, "invalid_metric_name"),
            ),
            (
                json!([{"n":"gh-1/t","v":1,"crit_":1}]),
                (0, "unsupported_senml_field"),
            ),
            (
                json!([{"n":"gh-1/t","v":1},{"n":"gh-1/t","v":2}]),
                (1, "invalid_senml"),
            ),
        ];
        for (pack, want) in cases {
            assert_eq!(err(pack.clone()), want, "{pack}");
        }
    }

    #[test]
    fn errors_found_later_blame_the_metric_s_own_record() {
        let r = parse(
            &json!([{"bn":"gh-1/","n":"a","v":1},{"n":"b","v":2}]),
            now(),
        )
        .unwrap();
        let e = ReadingError::OutOfRange {
            metric: "b".into(),
            value: 2.0,
            range: String::new(),
        };
        assert_eq!(r[0].index_for(&e), 1);
        assert_eq!(r[0].index_for(&ReadingError::TimestampInFuture(1)), 0);
    }

    #[test]
    fn unknown_optional_fields_are_ignored_and_an_empty_pack_is_empty() {
        let r = ok(json!([{"n":"gh-1/t","v":1,"u":"Cel","s":3,"ut":60,"bver":10,"x":1}]));
        assert_eq!(r.len(), 1);
        assert!(ok(json!([])).is_empty());
    }
}
