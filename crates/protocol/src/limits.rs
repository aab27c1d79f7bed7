//! Plausibility limits for readings: physical ranges per metric and how far `ts` may
//! stray from the receiver's clock.
//!
//! Parsing ([`crate::Reading`]) decides whether a reading is well formed; [`Limits`]
//! decides whether it is believable. They are separate because the limits are
//! configuration (`[limits]` in `lentera.toml`, shared by ingest and the historian so a
//! reading ingest accepted is never dropped later), while the syntax is the contract.
//!
//! Rules, each with its stable [`ReadingError::code`]:
//! - a metric with a configured range must lie inside it (`out_of_range`); metrics
//!   without a range are unchecked, so new sensors need no configuration;
//! - `ts` at most `max_future_secs` ahead of now (`timestamp_in_future`): a board with a
//!   wrong clock would otherwise write "the future" that every chart shows as latest;
//! - `ts` at most `max_age_days` old (`timestamp_too_old`): catches boards whose RTC
//!   reset to 1970/2000, which would otherwise create partitions decades back.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;

use crate::reading::{Reading, ReadingError};

/// Inclusive bounds; a missing side is unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Range {
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl Range {
    pub fn new(min: Option<f64>, max: Option<f64>) -> Self {
        Self { min, max }
    }

    pub fn contains(&self, v: f64) -> bool {
        self.min.is_none_or(|m| v >= m) && self.max.is_none_or(|m| v <= m)
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let side =
            |b: Option<f64>, open: &str| b.map_or_else(|| open.to_owned(), |v| v.to_string());
        write!(f, "[{}, {}]", side(self.min, "-∞"), side(self.max, "∞"))
    }
}

/// `[limits]` settings (env `LENTERA_LIMITS__MAX_FUTURE_SECS`, …).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Metric name → allowed range. Configuring a map replaces the defaults entirely.
    pub ranges: BTreeMap<String, Range>,
    /// How far ahead of the receiver's clock `ts` may be (covers board clock drift);
    /// 0 disables the check.
    pub max_future_secs: i64,
    /// Oldest acceptable `ts`, in days before now; 0 disables the check.
    pub max_age_days: i64,
}

impl Default for Limits {
    fn default() -> Self {
        let ranges = [
            ("humidity", Range::new(Some(0.0), Some(100.0))),
            ("temperature", Range::new(Some(-50.0), Some(100.0))),
            ("lux", Range::new(Some(0.0), None)),
        ]
        .into_iter()
        .map(|(k, r)| (k.to_owned(), r))
        .collect();
        Self {
            ranges,
            max_future_secs: 300,
            max_age_days: 3650,
        }
    }
}

impl Limits {
    /// No checks at all (tests and tools that replay arbitrary data).
    pub fn none() -> Self {
        Self {
            ranges: BTreeMap::new(),
            max_future_secs: 0,
            max_age_days: 0,
        }
    }

    /// Checks a parsed reading against the limits; `now` is the receiver's clock.
    pub fn check(&self, r: &Reading, now: DateTime<Utc>) -> Result<(), ReadingError> {
        // Checked arithmetic: a huge configured bound means "no bound", not a panic.
        let latest =
            Duration::try_seconds(self.max_future_secs).and_then(|d| now.checked_add_signed(d));
        if self.max_future_secs > 0 && latest.is_some_and(|l| r.ts > l) {
            return Err(ReadingError::TimestampInFuture(self.max_future_secs));
        }
        let earliest =
            Duration::try_days(self.max_age_days).and_then(|d| now.checked_sub_signed(d));
        if self.max_age_days > 0 && earliest.is_some_and(|e| r.ts < e) {
            return Err(ReadingError::TimestampTooOld(self.max_age_days));
        }
        for (metric, value) in &r.metrics {
            if let Some(range) = self.ranges.get(metric)
                && !range.contains(*value)
            {
                return Err(ReadingError::OutOfRange {
                    metric: metric.clone(),
                    value: *value,
                    range: range.to_string(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DeviceId;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap()
    }

    fn reading(ts: DateTime<Utc>, metric: &str, v: f64) -> Reading {
        Reading::new(
            DeviceId::parse("gh-1").unwrap(),
            ts,
            [(metric.to_owned(), v)],
        )
        .unwrap()
    }

    fn code(ts: DateTime<Utc>, metric: &str, v: f64) -> Option<&'static str> {
        Limits::default()
            .check(&reading(ts, metric, v), now())
            .err()
            .map(|e| e.code())
    }

    #[test]
    fn default_ranges_are_inclusive_and_unlisted_metrics_are_free() {
        assert_eq!(code(now(), "humidity", 0.0), None);
        assert_eq!(code(now(), "humidity", 100.0), None);
        assert_eq!(code(now(), "humidity", 100.1), Some("out_of_range"));
        assert_eq!(code(now(), "humidity", -0.1), Some("out_of_range"));
        assert_eq!(code(now(), "temperature", -50.0), None);
        assert_eq!(code(now(), "temperature", -50.5), Some("out_of_range"));
        assert_eq!(code(now(), "temperature", 100.5), Some("out_of_range"));
        assert_eq!(code(now(), "lux", 1e9), None);
        assert_eq!(code(now(), "lux", -1.0), Some("out_of_range"));
        assert_eq!(code(now(), "soil_moisture", -1e9), None);
    }

    #[test]
    fn timestamps_may_not_be_far_ahead_or_absurdly_old() {
        assert_eq!(code(now() + Duration::seconds(300), "lux", 1.0), None);
        assert_eq!(
            code(now() + Duration::seconds(301), "lux", 1.0),
            Some("timestamp_in_future")
        );
        assert_eq!(code(now() - Duration::days(3650), "lux", 1.0), None);
        assert_eq!(
            code(
                Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap(),
                "lux",
                1.0
            ),
            Some("timestamp_too_old")
        );
    }

    #[test]
    fn none_accepts_everything_and_errors_name_the_range() {
        let old = Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap();
        assert!(
            Limits::none()
                .check(&reading(old, "humidity", 1e6), now())
                .is_ok()
        );
        let err = Limits::default()
            .check(&reading(now(), "humidity", 101.0), now())
            .unwrap_err();
        assert!(err.to_string().contains("[0, 100]"), "{err}");
        let err = Limits::default()
            .check(&reading(now(), "lux", -1.0), now())
            .unwrap_err();
        assert!(err.to_string().contains("[0, ∞]"), "{err}");
        assert_eq!(Range::new(None, Some(5.0)).to_string(), "[-∞, 5]");
    }

    #[test]
    fn limits_deserialize_from_settings_shape() {
        let l: Limits = serde_json::from_value(serde_json::json!({
            "ranges": {"co2": {"min": 0, "max": 5000}},
            "max_future_secs": 60
        }))
        .unwrap();
        assert_eq!(l.ranges.len(), 1);
        assert_eq!(l.max_future_secs, 60);
        assert_eq!(l.max_age_days, 3650);
    }
}
