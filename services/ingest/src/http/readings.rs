//! `POST /api/v1/readings`: one reading object or an array of them
//! (`application/json`), or a SenML pack (`application/senml+json`, see
//! `lentera_protocol::senml` for how names map to device and metric).
//!
//! Both shapes end in the same checks: the reading syntax, then the `[limits]`
//! (physical ranges, `ts` not too far ahead or too old). For SenML the batch size counts
//! records and `detail.index` is the record's index.
//!
//! A reading without `ts` (a SenML record without time) gets its receive time from the
//! one stamper of this process ([`crate::stamps`]): a microsecond unique per device, so
//! 100 readings of one device in one request are 100 readings, not one. A request
//! answered `503`/`429` after its publishes may have reached the broker leaves its
//! receive times in doubt, and its retry (same device, same values) gets them again
//! ([`crate::in_doubt`]), so the board's retry is stored once.

use std::collections::BTreeSet;

use crate::stamps::{Origin, Received};
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use lentera_protocol::{DeviceId, Limits, Reading, ReadingError, Stamper, senml};
use serde_json::{Value, json};

use super::error::ApiError;
use super::{HttpState, JSON, auth, read_json};

/// Accepts readings and answers `202 {"accepted":N}` once the broker acknowledged all.
///
/// **All or nothing.** Every reading is validated before any is published; if one is
/// bad the whole request is refused with 400 and
/// `{"error":"invalid_reading","detail":{"index":3,"code":"non_numeric_value","message":"…"}}`
/// naming the first bad element (index 0 for a single object). Partial acceptance would
/// force a board to work out which readings to resend, which a small sketch cannot do;
/// with all-or-nothing it simply fixes or drops the batch and retries.
///
/// Other answers: 413 `payload_too_large` / `batch_too_large`, 415 `unsupported_media_type`,
/// 400 `malformed_json` / `empty_batch`, 503 `broker_unavailable` and 429 `overloaded`
/// (both with `Retry-After: 1`).
pub async fn post(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<HttpState>,
) -> Result<HttpResponse, ApiError> {
    let result = match auth::from_bearer(&req, &state).await {
        Ok(who) => accept(&req, payload, &state, who).await,
        Err(e) => Err(e),
    };
    answer(&state, result)
}

/// `POST /api/v1/devices/{token}/readings`: the same, with the token in the path for
/// boards that cannot set a header.
pub async fn post_with_token(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<HttpState>,
) -> Result<HttpResponse, ApiError> {
    let token = req.match_info().get("token").unwrap_or_default();
    let result = match auth::from_token(token, &state).await {
        Ok(who) => accept(&req, payload, &state, who).await,
        Err(e) => Err(e),
    };
    answer(&state, result)
}

fn answer(state: &HttpState, result: Result<usize, ApiError>) -> Result<HttpResponse, ApiError> {
    match &result {
        Ok(n) => state.stats.accepted_http.add(*n as u64),
        Err(e) => state.stats.reject(e.code()),
    }
    result.map(|n| HttpResponse::Accepted().json(json!({ "accepted": n })))
}

/// `who`: the device the token admitted (closed mode), whose quota is taken before the
/// body is read, and whose readings alone the body may hold; `None` in open mode, where
/// each device named in the body pays one message of its quota.
async fn accept(
    req: &HttpRequest,
    payload: web::Payload,
    state: &HttpState,
    who: Option<DeviceId>,
) -> Result<usize, ApiError> {
    if let Some(device) = &who {
        auth::rate(state, device)?;
    }
    let (body, media) = read_json(req, payload, state, &[JSON, senml::CONTENT_TYPE]).await?;
    // One lock per request; released before the publish is awaited.
    let received = {
        let mut receipt = state.stamps.receipt();
        let now = receipt.now();
        let mut received = if media == senml::CONTENT_TYPE {
            validate_senml(
                &body,
                state.max_batch,
                now,
                receipt.stamper(),
                &state.limits,
                who.as_ref(),
            )?
        } else {
            validate(
                body,
                state.max_batch,
                now,
                receipt.stamper(),
                &state.limits,
                who.as_ref(),
            )?
        };
        receipt.settle(&mut received);
        received
    };
    if who.is_none() {
        let devices: BTreeSet<&DeviceId> = received.readings.iter().map(|r| &r.device).collect();
        for device in devices {
            auth::rate(state, device)?;
        }
    }
    if let Err(e) = state.publisher.readings(&received.readings).await {
        state.stamps.failed(&received, &e);
        return Err(e.into());
    }
    tracing::debug!(count = received.len(), "readings accepted over HTTP");
    Ok(received.len())
}

/// Turns a parsed body into readings, refusing the whole body on the first bad element.
/// `now` is the receive time; a reading without `ts` is stamped by `stamper` at `now`
/// (its origin [`Origin::Fresh`]). With `who` (the token's device) a reading without
/// `device` is `who`'s, and one naming another device is `403 device_mismatch`.
pub fn validate(
    body: Value,
    max_batch: usize,
    now: DateTime<Utc>,
    stamper: &mut Stamper,
    limits: &Limits,
    who: Option<&DeviceId>,
) -> Result<Received, ApiError> {
    let items = match body {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(ApiError::EmptyBatch);
            }
            if items.len() > max_batch {
                return Err(ApiError::BatchTooLarge {
                    max: max_batch,
                    got: items.len(),
                });
            }
            items
        }
        single => vec![single],
    };
    let mut received = Received::default();
    for (index, item) in items.iter().enumerate() {
        let mut origin = Origin::Board;
        let obj = item.as_object().ok_or(ReadingError::NotAnObject);
        let reading = obj
            .and_then(|o| {
                Reading::from_object_stamped(o, who, |d| {
                    origin = Origin::Fresh;
                    stamper.stamp(d.as_str(), now)
                })
            })
            .and_then(|r| limits.check(&r, now).map(|()| r))
            .map_err(|error| match (error, who) {
                (ReadingError::DeviceMismatch(named), Some(device)) => ApiError::DeviceMismatch {
                    index,
                    named,
                    device: device.to_string(),
                },
                (error, _) => ApiError::InvalidReading { index, error },
            })?;
        received.push(reading, origin);
    }
    Ok(received)
}

/// A SenML pack into readings, with the same all-or-nothing rule as [`validate`].
///
/// A record without time (resolved time 0, "now" in RFC 8428) is stamped like a JSON
/// reading without `ts`; records with a relative time stay at `now` plus their offset.
/// To tell the two apart exactly, the pack is resolved against a `now` that is never
/// on a whole millisecond, which no absolute SenML time (kept to the millisecond) and
/// no non-zero relative offset (also whole milliseconds) can land on.
///
/// With `who` (the token's device), a pack that names no device anywhere (`"n":"lux"`)
/// is `who`'s, and a pack naming another device is `403 device_mismatch`.
pub fn validate_senml(
    pack: &Value,
    max_batch: usize,
    now: DateTime<Utc>,
    stamper: &mut Stamper,
    limits: &Limits,
    who: Option<&DeviceId>,
) -> Result<Received, ApiError> {
    match pack.as_array().map(Vec::len) {
        Some(0) => return Err(ApiError::EmptyBatch),
        Some(n) if n > max_batch => {
            return Err(ApiError::BatchTooLarge {
                max: max_batch,
                got: n,
            });
        }
        _ => {}
    }
    let now = off_the_millisecond(now);
    let owned = who.and_then(|d| senml_of(pack, d));
    let resolved = senml::parse(owned.as_ref().unwrap_or(pack), now)
        .map_err(|(index, error)| ApiError::InvalidReading { index, error })?;
    let mut received = Received::default();
    for mut r in resolved {
        if let Some(device) = who
            && r.reading.device != *device
        {
            return Err(ApiError::DeviceMismatch {
                index: r.records.values().min().copied().unwrap_or(0),
                named: r.reading.device.to_string(),
                device: device.to_string(),
            });
        }
        let origin = if r.reading.ts == now {
            r.reading.ts = stamper.stamp(r.reading.device.as_str(), now);
            Origin::Fresh
        } else {
            Origin::Board
        };
        if let Err(error) = limits.check(&r.reading, now) {
            return Err(ApiError::InvalidReading {
                index: r.index_for(&error),
                error,
            });
        }
        received.push(r.reading, origin);
    }
    Ok(received)
}

/// A pack whose names hold no device part anywhere (no `/`, `:` or `;` in any `bn`
/// or `n`), rewritten as `device`'s: its base names are prefixed with `device/` (the
/// first record gets `"bn":"device/"` if it had none). `None` when the pack names a
/// device (then it is parsed as sent) or is not an array of objects.
fn senml_of(pack: &Value, device: &DeviceId) -> Option<Value> {
    let records = pack.as_array()?;
    let names_a_device = records.iter().any(|r| {
        ["bn", "n"].iter().any(|k| {
            r.get(*k)
                .and_then(Value::as_str)
                .is_some_and(|s| s.contains(['/', ':', ';']))
        })
    });
    if names_a_device || records.is_empty() {
        return None;
    }
    let mut out = records.clone();
    for (i, record) in out.iter_mut().enumerate() {
        let obj = record.as_object_mut()?;
        match obj.get("bn") {
            Some(Value::String(bn)) => {
                let bn = format!("{device}/{bn}");
                obj.insert("bn".into(), Value::String(bn));
            }
            // A non-string `bn` is the parser's to refuse.
            Some(_) => {}
            None if i == 0 => {
                obj.insert("bn".into(), Value::String(format!("{device}/")));
            }
            None => {}
        }
    }
    Some(Value::Array(out))
}

/// `now`, moved on by a microsecond if it falls on a whole millisecond.
fn off_the_millisecond(now: DateTime<Utc>) -> DateTime<Utc> {
    if now.timestamp_subsec_nanos().is_multiple_of(1_000_000) {
        now + chrono::Duration::microseconds(1)
    } else {
        now
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use chrono::TimeZone;

    use super::*;

    fn check(body: Value) -> Result<Vec<Reading>, ApiError> {
        validate(
            body,
            3,
            Utc::now(),
            &mut Stamper::default(),
            &Limits::default(),
            None,
        )
        .map(|r| r.readings)
    }

    fn senml(pack: &Value, now: DateTime<Utc>, stamper: &mut Stamper) -> Received {
        validate_senml(pack, 100, now, stamper, &Limits::default(), None).unwrap()
    }

    #[test]
    fn readings_without_ts_get_distinct_microseconds_and_given_ts_are_kept() {
        let now = Utc::now();
        let mut stamper = Stamper::default();
        let body: Vec<Value> = (0..100)
            .map(|i| json!({"device":"gh-1","temperature":20 + i % 10}))
            .chain([json!({"device":"gh-1","lux":1,"ts":"2026-01-01T00:00:00Z"})])
            .collect();
        let received = validate(
            Value::Array(body),
            101,
            now,
            &mut stamper,
            &Limits::none(),
            None,
        )
        .unwrap();
        assert!(received.origins[..100].iter().all(|o| *o == Origin::Fresh));
        assert_eq!(received.origins[100], Origin::Board);
        let r = received.readings;
        let stamps: HashSet<_> = r[..100].iter().map(|r| r.ts).collect();
        assert_eq!(stamps.len(), 100, "one distinct receive time per reading");
        assert!(
            r[..100]
                .iter()
                .all(|r| r.ts >= now - chrono::Duration::microseconds(1))
        );
        assert_eq!(
            r[100].ts,
            Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
        );
        // A second request in the same microsecond continues after the first.
        let again = validate(
            json!({"device":"gh-1","temperature":1}),
            3,
            now,
            &mut stamper,
            &Limits::none(),
            None,
        )
        .unwrap()
        .readings;
        assert!(stamps.iter().all(|t| again[0].ts > *t));
    }

    #[test]
    fn senml_records_without_time_are_stamped_and_timed_ones_are_not() {
        // A `now` on a whole millisecond, the case the exact detection must handle.
        let now = Utc.timestamp_millis_opt(1_800_000_000_000).unwrap();
        let mut stamper = Stamper::default();
        let pack = json!([
            {"bn":"gh-1/","n":"temperature","v":27.5},
            {"n":"humidity","v":61},
            {"n":"lux","v":3,"t":-60},
            {"n":"gh-2/lux","v":4,"bn":"","t":1_800_000_000}
        ]);
        let a = senml(&pack, now, &mut stamper);
        // Stamped exactly where the pack gave no time.
        assert_eq!(a.origins, [Origin::Fresh, Origin::Board, Origin::Board]);
        let (a, b) = (a.readings, senml(&pack, now, &mut stamper).readings);
        assert_eq!(a.len(), 3);
        // The untimed records of gh-1: one reading, stamped, and a new stamp next time.
        assert_eq!(a[0].metrics.len(), 2);
        assert!(a[0].ts >= now && a[0].ts < now + chrono::Duration::milliseconds(1));
        assert!(b[0].ts > a[0].ts);
        // Relative and absolute times are the pack's own.
        assert_eq!(a[1].ts.timestamp_millis(), now.timestamp_millis() - 60_000);
        assert_eq!(a[2].ts, now);
        assert_eq!(a[2].ts, b[2].ts);
    }

    fn reading_code(e: ApiError) -> (usize, &'static str) {
        match e {
            ApiError::InvalidReading { index, error } => (index, error.code()),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn limits_apply_to_json_readings() {
        let err = check(json!([{"device":"gh-1","humidity":50},{"device":"gh-1","humidity":120}]));
        assert_eq!(reading_code(err.unwrap_err()), (1, "out_of_range"));
        let future = (Utc::now() + chrono::Duration::hours(1)).timestamp_millis();
        let err = check(json!({"device":"gh-1","lux":1,"ts":future}));
        assert_eq!(reading_code(err.unwrap_err()), (0, "timestamp_in_future"));
        let err = check(json!({"device":"gh-1","lux":1,"ts":0}));
        assert_eq!(reading_code(err.unwrap_err()), (0, "timestamp_too_old"));
    }

    #[test]
    fn senml_packs_are_sized_resolved_and_limited_by_record_index() {
        let l = Limits::default();
        let now = Utc::now();
        let s = &mut Stamper::default();
        let ok = validate_senml(
            &json!([{"bn":"gh-1/","n":"temperature","v":27.5},{"n":"humidity","v":61}]),
            3,
            now,
            s,
            &l,
            None,
        )
        .unwrap();
        assert_eq!(ok.len(), 1);
        assert_eq!(ok.readings[0].metrics.len(), 2);
        let bad = json!([{"bn":"gh-1/","n":"lux","v":1,"t":-60},{"n":"temperature","v":-80}]);
        assert_eq!(
            reading_code(validate_senml(&bad, 3, now, s, &l, None).unwrap_err()),
            (1, "out_of_range")
        );
        let four = json!([{"n":"a/t","v":1},{"n":"a/t","v":1},{"n":"a/t","v":1},{"n":"a/t","v":1}]);
        assert_eq!(
            validate_senml(&four, 3, now, s, &l, None)
                .unwrap_err()
                .code(),
            "batch_too_large"
        );
        assert_eq!(
            validate_senml(&json!([]), 3, now, s, &l, None)
                .unwrap_err()
                .code(),
            "empty_batch"
        );
    }

    #[test]
    fn a_token_names_the_device_and_another_device_is_a_mismatch() {
        let (now, s, l) = (Utc::now(), &mut Stamper::default(), Limits::default());
        let me = DeviceId::parse("gh-7").unwrap();
        let r = validate(
            json!([{"lux":1},{"device":"gh-7","lux":2}]),
            3,
            now,
            s,
            &l,
            Some(&me),
        )
        .unwrap();
        assert!(r.readings.iter().all(|r| r.device == me));
        let e = validate(
            json!([{"lux":1},{"device":"gh-8","lux":2}]),
            3,
            now,
            s,
            &l,
            Some(&me),
        )
        .unwrap_err();
        assert!(
            matches!(e, ApiError::DeviceMismatch { index: 1, .. }),
            "{e:?}"
        );
        // SenML without any device part is the token's device's …
        let pack = json!([{"n":"temperature","v":20},{"bn":"x","n":"lux","v":1}]);
        let r = validate_senml(&pack, 3, now, s, &l, Some(&me)).unwrap();
        assert!(
            r.readings.iter().all(|r| r.device == me),
            "{:?}",
            r.readings
        );
        let metrics: Vec<_> = r.readings.iter().flat_map(|r| r.metrics.keys()).collect();
        assert_eq!(metrics, ["temperature", "xlux"]);
        // … its own name is fine, another device's is not, and without a token a name
        // without device part stays invalid.
        let own = json!([{"bn":"gh-7/","n":"lux","v":1}]);
        assert!(validate_senml(&own, 3, now, s, &l, Some(&me)).is_ok());
        let other = json!([{"bn":"gh-8/","n":"lux","v":1}]);
        let e = validate_senml(&other, 3, now, s, &l, Some(&me)).unwrap_err();
        assert_eq!(e.code(), "device_mismatch");
        let e = validate_senml(&json!([{"n":"lux","v":1}]), 3, now, s, &l, None).unwrap_err();
        assert_eq!(reading_code(e), (0, "invalid_senml"));
    }

    #[test]
    fn a_single_object_is_a_batch_of_one() {
        let r = check(json!({"device":"gh-1","temperature":27.3})).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].metrics["temperature"], 27.3);
    }

    #[test]
    fn the_first_bad_element_is_reported_with_its_index() {
        let err = check(json!([
            {"device":"gh-1","t":1},
            {"device":"gh-1","t":"hot"},
            7
        ]))
        .unwrap_err();
        match err {
            ApiError::InvalidReading { index, error } => {
                assert_eq!(index, 1);
                assert_eq!(error.code(), "non_numeric_value");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn non_objects_empty_and_oversized_batches_are_refused() {
        assert_eq!(check(json!(5)).unwrap_err().code(), "invalid_reading");
        assert_eq!(check(json!([])).unwrap_err().code(), "empty_batch");
        let four = json!([{"device":"a","t":1},{"device":"a","t":1},{"device":"a","t":1},{"device":"a","t":1}]);
        assert_eq!(check(four).unwrap_err().code(), "batch_too_large");
    }
}
