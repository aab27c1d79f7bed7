//! Inputs the fuzz targets (`fuzz/`, docs/fuzzing.md) found, kept as plain tests so
//! `cargo test` guards them without nightly or libFuzzer. Each test names the target and
//! the crash file it came from; the inputs are the crash files as found, or minimised.

use chrono::{DateTime, TimeZone, Utc};
use lentera_protocol::reading::{format_ts, stamp_payload};
use lentera_protocol::{DeviceId, Reading, senml};
use serde_json::Value;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap()
}

fn gh1() -> DeviceId {
    DeviceId::parse("gh-1").unwrap()
}

/// What the fuzz targets check of every accepted reading: its canonical payload reads
/// back as the same reading (ingest publishes it, the historian stores what it reads).
fn assert_round_trips(r: &Reading) {
    let payload = r.to_payload();
    let back = Reading::from_payload(&payload, &r.device, now()).unwrap_or_else(|e| {
        panic!(
            "canonical payload {} refused: {e}",
            String::from_utf8_lossy(&payload)
        )
    });
    assert_eq!(back.metrics, r.metrics);
    assert_eq!(format_ts(back.ts), format_ts(r.ts));
    assert_eq!(back.to_payload(), payload);
}

fn code(payload: &str) -> &'static str {
    Reading::from_payload(payload.as_bytes(), &gh1(), now())
        .unwrap_err()
        .code()
}

fn senml_readings(pack: &str) -> Vec<Reading> {
    let pack: Value = serde_json::from_str(pack).unwrap();
    senml::parse(&pack, now())
        .unwrap()
        .into_iter()
        .map(|r| r.reading)
        .collect()
}

fn senml_code(pack: &str) -> &'static str {
    let pack: Value = serde_json::from_str(pack).unwrap();
    senml::parse(&pack, now()).unwrap_err().1.code()
}

/// reading_json, crash-9a5e4e2c: unix ms in the year 56993 were accepted, and the
/// canonical payload then said `"ts":"+56993-08-13T…"`, which no hop reads back. `ts` is
/// now refused outside RFC 3339's years 0000-9999 (in UTC), whatever its form.
#[test]
fn ts_beyond_what_rfc3339_can_write_is_refused() {
    assert_eq!(
        code(r#"{"x":3,"ts":1736377637732000}"#),
        "invalid_timestamp"
    );
    // 10000-01-01T00:00:00Z, and one millisecond before 0000-01-01T00:00:00Z.
    assert_eq!(code(r#"{"x":3,"ts":253402300800000}"#), "invalid_timestamp");
    assert_eq!(code(r#"{"x":3,"ts":-62167219200001}"#), "invalid_timestamp");
    // RFC 3339 text whose offset moves it out of range in UTC.
    assert_eq!(
        code(r#"{"x":3,"ts":"9999-12-31T23:59:59-01:00"}"#),
        "invalid_timestamp"
    );
    assert_eq!(
        code(r#"{"x":3,"ts":"0000-01-01T00:00:00+01:00"}"#),
        "invalid_timestamp"
    );
    // The edges themselves are fine, and round-trip.
    for ok in [
        r#"{"x":3,"ts":"9999-12-31T23:59:59.999999Z"}"#,
        r#"{"x":3,"ts":"0000-01-01T00:00:00Z"}"#,
        r#"{"x":3,"ts":253402300799999}"#,
        r#"{"x":3,"ts":-62167219200000}"#,
    ] {
        let r = Reading::from_payload(ok.as_bytes(), &gh1(), now()).unwrap();
        assert_round_trips(&r);
    }
}

/// senml: a pack time far from now (relative times may move it by ±1e15 ms, 31,000
/// years) is refused the same way.
#[test]
fn senml_times_beyond_rfc3339_are_refused() {
    assert_eq!(
        senml_code(r#"[{"n":"gh-1/t","v":1,"t":-1e12}]"#),
        "invalid_timestamp"
    );
    assert_eq!(
        senml_code(r#"[{"n":"gh-1/t","v":1,"bt":2.6e11}]"#),
        "invalid_timestamp"
    );
    let r = senml_readings(r#"[{"n":"gh-1/t","v":1,"bt":253402300799}]"#);
    assert_round_trips(&r[0]);
}

/// senml, crash-0a441cc4 (bv 1.7953092 + v 27.7) and tcp_line, crash-c1d89583
/// (`temperatuRe=7200000000000000000001550504922`): serde_json's default float parser
/// reads some numbers one bit off, so `29.495309199999998` and `7.2e30`, the shortest
/// texts of those values, read back as other values. protocol now builds serde_json with
/// `float_roundtrip`.
#[test]
fn numbers_read_back_exactly() {
    let r = senml_readings(
        r#"[{"bn":"gh-1/","bv":1.795309200,"bu":"Cel","n":"temperature","v":27.5},{"n":"humidity","u":"%RH","v":61},{"n":"temperature","t":60,"v":27.7}]"#,
    );
    assert_eq!(r.len(), 2);
    for reading in &r {
        assert_round_trips(reading);
    }
    for (text, value) in [
        ("7.2e30", 7.2e30),
        ("29.495309199999998", 29.495309199999998),
        ("7200000000000000000001550504922", 7.2e30),
    ] {
        let payload = format!(r#"{{"temperature":{text}}}"#);
        let r = Reading::from_payload(payload.as_bytes(), &gh1(), now()).unwrap();
        // The same value Rust's own parser (the TCP line grammar's) gives.
        assert_eq!(r.metrics["temperature"], value, "{text}");
        assert_eq!(text.parse::<f64>().unwrap(), value);
        assert_round_trips(&r);
    }
}

/// senml, crash-ee3752a6, and tcp_line (`gh-1 device=5`): a metric named `device` or
/// `ts` was accepted, and its canonical payload (`{"device":27.7,…}`) is refused as a
/// bad device id. Both names are reserved.
#[test]
fn metrics_named_like_payload_keys_are_refused() {
    assert_eq!(
        senml_code(
            r#"[{"bn":"gh-1/","bu":"C","n":"tebuerature","v":54.5},{"n":"dumty","u":"`RH","v":30},{"n":"device","t":60,"v":27.7}]"#
        ),
        "invalid_metric_name"
    );
    assert_eq!(
        senml_code(r#"[{"n":"gh-1/ts","v":1}]"#),
        "invalid_metric_name"
    );
    for name in ["device", "ts"] {
        let e = Reading::new(gh1(), now(), [(name.to_owned(), 5.0)]).unwrap_err();
        assert_eq!(e.code(), "invalid_metric_name", "{name}");
        assert!(e.to_string().contains("not \"device\" or \"ts\""), "{e}");
    }
    // Names that merely contain them are metrics like any other.
    let r = Reading::new(
        gh1(),
        now(),
        [("ts7".to_owned(), 0.0), ("device_t".to_owned(), 1.0)],
    )
    .unwrap();
    assert_round_trips(&r);
}

/// The broker's first hop writes its stamp into a board's own bytes; what it forwards
/// must say the same as what it validated (the reading_json target's stamp property),
/// here on the inputs above.
#[test]
fn stamped_payloads_read_back_as_the_stamped_reading() {
    let t = now() + chrono::Duration::microseconds(7);
    for payload in [
        r#"{"temperature":7.2e30}"#,
        r#" {"lux": 29.495309199999998, "ts": null}"#,
    ] {
        let (r, out) = stamp_payload(payload.as_bytes(), &gh1(), |_| t).unwrap();
        let back = Reading::from_payload(&out.unwrap(), &gh1(), now()).unwrap();
        assert_eq!(back, r);
        assert_round_trips(&r);
    }
    assert_eq!(
        stamp_payload(br#"{"x":3,"ts":1736377637732000}"#, &gh1(), |_| t)
            .unwrap_err()
            .code(),
        "invalid_timestamp"
    );
}
