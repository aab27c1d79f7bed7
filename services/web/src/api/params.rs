//! Query-string validation for the history endpoint, pure and unit-tested.
//!
//! Every rule a caller can break has its own stable code, so a technician's script can
//! tell a typo in `bucket` from a window that is too wide.

use chrono::{DateTime, Duration, Utc};
use lentera_db::history::{Agg, Cursor, Query};
use lentera_protocol::DeviceId;
use lentera_protocol::reading::{is_valid_metric_name, ts_from_unix_ms};

use super::error::ApiError;

/// Bounds from `[web]` settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_window: Duration,
    pub default_limit: i64,
    pub max_limit: i64,
}

/// Window used when `from` is not given.
pub const DEFAULT_WINDOW: Duration = Duration::hours(24);

/// A validated history request plus what to echo back in the response.
#[derive(Debug, Clone)]
pub struct HistoryRequest {
    pub query: Query,
    /// The bucket as the caller wrote it (`5m`), echoed in the response.
    pub bucket: Option<String>,
    pub agg: Option<String>,
}

/// The path segment as a device id.
pub fn device(raw: &str) -> Result<DeviceId, ApiError> {
    DeviceId::parse(raw).map_err(|e| ApiError::bad_request("invalid_device", e.to_string()))
}

/// Validates the readings query. Empty values count as absent, so an HTML form that
/// sends `metric=&from=` behaves like one that omits them.
pub fn history(
    device: DeviceId,
    pairs: &[(String, String)],
    now: DateTime<Utc>,
    limits: Limits,
) -> Result<HistoryRequest, ApiError> {
    const KNOWN: [&str; 8] = [
        "metric", "from", "to", "bucket", "agg", "limit", "order", "cursor",
    ];
    let mut seen: Vec<&str> = Vec::new();
    for (k, _) in pairs {
        if !KNOWN.contains(&k.as_str()) {
            return Err(ApiError::bad_request(
                "unknown_parameter",
                format!(
                    "unknown parameter {k:?}; known: metric, from, to, bucket, agg, limit, order, cursor"
                ),
            ));
        }
        if seen.contains(&k.as_str()) {
            return Err(ApiError::bad_request(
                "duplicate_parameter",
                format!("parameter {k:?} given more than once"),
            ));
        }
        seen.push(k);
    }
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    };

    let metric = match get("metric") {
        Some(m) if !is_valid_metric_name(m) => {
            return Err(ApiError::bad_request(
                "invalid_metric",
                "metric must be 1-64 characters of A-Z, a-z, 0-9, '_', '.' or '-'",
            ));
        }
        m => m.map(str::to_owned),
    };
    let to = get("to").map(|v| time("to", v)).transpose()?.unwrap_or(now);
    let from = get("from")
        .map(|v| time("from", v))
        .transpose()?
        .unwrap_or(to - DEFAULT_WINDOW);
    if from >= to {
        return Err(ApiError::bad_request(
            "invalid_range",
            "from must be earlier than to",
        ));
    }
    if to - from > limits.max_window {
        return Err(ApiError::bad_request(
            "window_too_large",
            format!(
                "from..to may span at most {} days; narrow the window",
                limits.max_window.num_days()
            ),
        ));
    }
    let bucket_secs = get("bucket").map(bucket).transpose()?;
    if let Some(secs) = bucket_secs
        && secs > limits.max_window.num_seconds()
    {
        return Err(ApiError::bad_request(
            "invalid_bucket",
            "bucket may not be wider than the largest window",
        ));
    }
    let agg = match (get("agg"), bucket_secs) {
        (Some(_), None) => {
            return Err(ApiError::bad_request(
                "agg_requires_bucket",
                "agg combines values per bucket; give bucket too (e.g. bucket=1h)",
            ));
        }
        (Some(a), Some(_)) => Agg::parse(a).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_agg",
                "agg must be one of avg, min, max, sum, count, last",
            )
        })?,
        (None, _) => Agg::Avg,
    };
    // Bucketed answers are one point per metric and bucket: a year of hourly buckets is
    // 8,760 of them, so the default page holds as many as any page may (`max_limit`)
    // rather than the raw default, and what still does not fit comes with `next`.
    let limit = match get("limit") {
        None if bucket_secs.is_some() => limits.max_limit,
        None => limits.default_limit,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (1..=limits.max_limit).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_limit",
                    format!("limit must be an integer from 1 to {}", limits.max_limit),
                ));
            }
        },
    };
    let descending = match get("order") {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_order",
                "order must be asc or desc",
            ));
        }
    };
    let cursor = get("cursor")
        .map(|c| {
            Cursor::parse(c).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_cursor",
                    "cursor must be the \"next\" value of a previous page",
                )
            })
        })
        .transpose()?;
    Ok(HistoryRequest {
        bucket: bucket_secs.and(get("bucket").map(str::to_owned)),
        agg: bucket_secs.map(|_| get("agg").unwrap_or("avg").to_owned()),
        query: Query {
            device: device.as_str().to_owned(),
            metric,
            from,
            to,
            bucket_secs,
            agg,
            limit,
            descending,
            cursor,
        },
    })
}

/// A limit for the lamp event list: default and maximum from settings.
pub fn limit(raw: Option<&str>, limits: Limits) -> Result<i64, ApiError> {
    match raw.filter(|v| !v.is_empty()) {
        None => Ok(limits.default_limit),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (1..=limits.max_limit).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(
                "invalid_limit",
                format!("limit must be an integer from 1 to {}", limits.max_limit),
            )),
        },
    }
}

/// `from`/`to`: RFC 3339 (`2026-11-22T01:00:00Z`) or unix milliseconds (`1795309200000`),
/// the same two forms a board may use for `ts`.
pub fn time(name: &'static str, raw: &str) -> Result<DateTime<Utc>, ApiError> {
    let parsed = if raw.bytes().all(|b| b.is_ascii_digit()) {
        raw.parse::<i64>().ok().and_then(ts_from_unix_ms)
    } else {
        DateTime::parse_from_rfc3339(raw)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    };
    parsed.ok_or_else(|| {
        ApiError::bad_request(
            if name == "from" {
                "invalid_from"
            } else {
                "invalid_to"
            },
            format!("{name} must be RFC 3339 (2026-11-22T01:00:00Z) or unix milliseconds"),
        )
    })
}

/// A bucket width: a positive integer and a unit `s`, `m`, `h` or `d` (`30s`, `5m`,
/// `1h`, `1d`), in seconds.
pub fn bucket(raw: &str) -> Result<i64, ApiError> {
    let err = || {
        ApiError::bad_request(
            "invalid_bucket",
            "bucket must be a positive whole number with a unit s, m, h or d (30s, 5m, 1h, 1d)",
        )
    };
    let split = raw.len().checked_sub(1).ok_or_else(err)?;
    let (digits, unit) = raw.split_at(split);
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(err()),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    match digits
        .parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_secs))
    {
        Some(secs) if secs >= 1 => Ok(secs),
        _ => Err(err()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap()
    }

    fn limits() -> Limits {
        Limits {
            max_window: Duration::days(400),
            default_limit: 1000,
            max_limit: 10_000,
        }
    }

    fn parse(q: &[(&str, &str)]) -> Result<HistoryRequest, ApiError> {
        let pairs: Vec<(String, String)> = q
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        history(DeviceId::parse("gh-1").unwrap(), &pairs, now(), limits())
    }

    fn code(q: &[(&str, &str)]) -> &'static str {
        parse(q).unwrap_err().code
    }

    #[test]
    fn defaults_are_last_24h_raw_ascending_1000() {
        let r = parse(&[]).unwrap();
        assert_eq!(r.query.to, now());
        assert_eq!(r.query.from, now() - Duration::hours(24));
        assert_eq!(r.query.bucket_secs, None);
        assert_eq!((r.bucket, r.agg), (None, None));
        assert_eq!(r.query.limit, 1000);
        assert!(!r.query.descending);
        assert_eq!(r.query.metric, None);
    }

    #[test]
    fn accepts_rfc3339_and_unix_ms() {
        let r = parse(&[
            ("from", "2026-11-22T08:00:00+07:00"),
            ("to", &now().timestamp_millis().to_string()),
        ])
        .unwrap();
        assert_eq!(r.query.from, now() - Duration::hours(11));
        assert_eq!(r.query.to, now());
    }

    #[test]
    fn bucketed_request_echoes_bucket_and_default_agg() {
        let r = parse(&[
            ("bucket", "5m"),
            ("metric", "temperature"),
            ("order", "desc"),
        ])
        .unwrap();
        assert_eq!(r.query.bucket_secs, Some(300));
        assert_eq!(r.bucket.as_deref(), Some("5m"));
        assert_eq!(r.agg.as_deref(), Some("avg"));
        assert_eq!(r.query.agg, Agg::Avg);
        assert!(r.query.descending);
        let r = parse(&[("bucket", "1d"), ("agg", "last"), ("limit", "10000")]).unwrap();
        assert_eq!(
            (r.query.bucket_secs, r.query.agg, r.query.limit),
            (Some(86_400), Agg::Last, 10_000)
        );
    }

    #[test]
    fn buckets_default_to_the_largest_page_and_take_a_cursor() {
        let r = parse(&[("bucket", "1h")]).unwrap();
        assert_eq!(r.query.limit, 10_000, "bucketed default is max_limit");
        let r = parse(&[("bucket", "1h"), ("limit", "5")]).unwrap();
        assert_eq!(r.query.limit, 5, "an explicit limit still wins");
        let r = parse(&[("bucket", "1h"), ("cursor", "1795309200000000_lux")]).unwrap();
        let c = r.query.cursor.unwrap();
        assert_eq!(
            (c.ts.timestamp(), c.metric.as_str()),
            (1_795_309_200, "lux")
        );
    }

    #[test]
    fn empty_values_count_as_absent() {
        assert!(parse(&[("metric", ""), ("from", ""), ("bucket", "")]).is_ok());
    }

    #[test]
    fn bucket_units() {
        assert_eq!(bucket("30s").unwrap(), 30);
        assert_eq!(bucket("5m").unwrap(), 300);
        assert_eq!(bucket("1h").unwrap(), 3600);
        assert_eq!(bucket("2d").unwrap(), 172_800);
        for bad in [
            "",
            "s",
            "0s",
            "-5m",
            "5",
            "5w",
            "1.5h",
            "h1",
            "99999999999999999999d",
            "922337203685477580d",
            " 5m",
        ] {
            assert_eq!(bucket(bad).unwrap_err().code, "invalid_bucket", "{bad:?}");
        }
    }

    #[test]
    fn every_bad_parameter_has_its_code() {
        assert_eq!(code(&[("metric", "bad name")]), "invalid_metric");
        assert_eq!(code(&[("from", "yesterday")]), "invalid_from");
        assert_eq!(code(&[("to", "2026-13-01T00:00:00Z")]), "invalid_to");
        assert_eq!(code(&[("from", "2026-11-23T00:00:00Z")]), "invalid_range");
        assert_eq!(
            code(&[("from", "2020-01-01T00:00:00Z")]),
            "window_too_large"
        );
        assert_eq!(code(&[("bucket", "5x")]), "invalid_bucket");
        assert_eq!(code(&[("bucket", "500d")]), "invalid_bucket");
        assert_eq!(code(&[("agg", "avg")]), "agg_requires_bucket");
        assert_eq!(code(&[("bucket", "1h"), ("agg", "median")]), "invalid_agg");
        for l in ["0", "10001", "-1", "ten"] {
            assert_eq!(code(&[("limit", l)]), "invalid_limit", "{l}");
        }
        assert_eq!(code(&[("order", "up")]), "invalid_order");
        assert_eq!(code(&[("cursor", "nope")]), "invalid_cursor");
        assert_eq!(
            code(&[("cursor", "nope"), ("bucket", "1h")]),
            "invalid_cursor"
        );
        assert_eq!(code(&[("buckt", "1h")]), "unknown_parameter");
        assert_eq!(
            code(&[("limit", "1"), ("limit", "2")]),
            "duplicate_parameter"
        );
    }

    #[test]
    fn device_rule_is_the_protocol_rule() {
        assert!(device("gh-1").is_ok());
        assert_eq!(device("a b").unwrap_err().code, "invalid_device");
    }
}
