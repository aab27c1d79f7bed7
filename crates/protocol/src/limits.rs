//! Plausibility limits for readings: physical ranges per metric and how far `ts` may
//! stray from the receiver's clock.
//!
//! Parsing ([`crate::Reading`]) decides whether a reading is well formed; [`Limits`]
//! decides whether it is believable. They are separate because the limits are
//! configuration (`[limits]` in `lentera.toml`, shared by ingest and the historian so a
//! reading ingest accepted is never dropped later), while the syntax is the contract.
//!
//! Rules, each with its stable [`ReadingError::code`]:
//! - every value has finite bounds (`out_of_range`): its metric's range if it has one,
//!   else `default_range` (so a new sensor needs no configuration but cannot send 1e308),
//!   and never beyond ±[`VALUE_BOUND`], whatever is configured — the hourly rollup sums
//!   the values of an hour, and one absurd value must not be able to overflow it;
//! - `ts` at most `max_future_secs` ahead of now (`timestamp_in_future`): a board with a
//!   wrong clock would otherwise write "the future" that every chart shows as latest;
//! - `ts` at most `max_age_days` old (`timestamp_too_old`): catches boards whose RTC
//!   reset to 1970/2000, which would otherwise create partitions decades back.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;

use crate::reading::{Reading, ReadingError, num};

/// The largest magnitude any stored value may have. An hour of one series holds at most
/// 3.6e9 readings (one per microsecond), so its rollup sum stays below 3.6e24, far from
/// `f64::MAX` (1.8e308); PostgreSQL enforces the same bound on `readings.value`.
pub const VALUE_BOUND: f64 = 1e15;

/// Inclusive bounds; a missing side is ±[`VALUE_BOUND`].
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

    /// The effective lower and upper bounds.
    pub fn bounds(&self) -> (f64, f64) {
        (
            self.min.unwrap_or(-VALUE_BOUND).max(-VALUE_BOUND),
            self.max.unwrap_or(VALUE_BOUND).min(VALUE_BOUND),
        )
    }

    pub fn contains(&self, v: f64) -> bool {
        let (min, max) = self.bounds();
        v >= min && v <= max
    }

    /// Why this range cannot be configured, if it cannot.
    fn problem(&self) -> Option<String> {
        for b in [self.min, self.max].into_iter().flatten() {
            if !b.is_finite() || b.abs() > VALUE_BOUND {
                return Some(format!("bound {b} is outside ±{VALUE_BOUND:e}"));
            }
        }
        let (min, max) = self.bounds();
        (min > max).then(|| format!("min {min} is above max {max}"))
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (min, max) = self.bounds();
        write!(f, "[{}, {}]", num(min), num(max))
    }
}

/// `[limits]` settings (env `LENTERA_LIMITS__MAX_FUTURE_SECS`, …).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Metric name → allowed range. Configuring a map replaces the defaults entirely.
    pub ranges: BTreeMap<String, Range>,
    /// The range of every metric not in `ranges` (`LENTERA_LIMITS__DEFAULT_RANGE__MAX`).
    pub default_range: Range,
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
            // Full summer sun is about 120,000 lx; common sensors stop at 65,535.
            ("lux", Range::new(Some(0.0), Some(200_000.0))),
        ]
        .into_iter()
        .map(|(k, r)| (k.to_owned(), r))
        .collect();
        Self {
            ranges,
            default_range: Range::new(Some(-1e9), Some(1e9)),
            max_future_secs: 300,
            max_age_days: 3650,
        }
    }
}

impl Limits {
    /// No checks but [`VALUE_BOUND`] (tests and tools that replay arbitrary data).
    pub fn none() -> Self {
        Self {
            ranges: BTreeMap::new(),
            default_range: Range::default(),
            max_future_secs: 0,
            max_age_days: 0,
        }
    }

    /// Settings check, run at start-up: every bound finite, within ±[`VALUE_BOUND`], and
    /// `min <= max`.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(p) = self.default_range.problem() {
            return Err(format!("limits.default_range: {p}"));
        }
        for (metric, range) in &self.ranges {
            if let Some(p) = range.problem() {
                return Err(format!("limits.ranges.{metric}: {p}"));
            }
        }
        Ok(())
    }

    /// The range `metric` must lie in.
    pub fn range(&self, metric: &str) -> &Range {
        self.ranges.get(metric).unwrap_or(&self.default_range)
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
            let range = self.range(metric);
            if !range.contains(*value) {
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
    fn default_ranges_are_inclusive_and_every_metric_is_bounded() {
        assert_eq!(code(now(), "humidity", 0.0), None);
        assert_eq!(code(now(), "humidity", 100.0), None);
        assert_eq!(code(now(), "humidity", 100.1), Some("out_of_range"));
        assert_eq!(code(now(), "humidity", -0.1), Some("out_of_range"));
        assert_eq!(code(now(), "temperature", -50.0), None);
        assert_eq!(code(now(), "temperature", -50.5), Some("out_of_range"));
        assert_eq!(code(now(), "temperature", 100.5), Some("out_of_range"));
        assert_eq!(code(now(), "lux", 200_000.0), None);
        assert_eq!(code(now(), "lux", 1e308), Some("out_of_range"));
        assert_eq!(code(now(), "lux", -1.0), Some("out_of_range"));
        assert_eq!(code(now(), "soil_moisture", -1e9), None);
        assert_eq!(code(now(), "soil_moisture", 1e308), Some("out_of_range"));
        assert_eq!(code(now(), "soil_moisture", -1e308), Some("out_of_range"));
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
    fn none_accepts_everything_but_absurd_values_and_errors_name_the_range() {
        let old = Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap();
        assert!(
            Limits::none()
                .check(&reading(old, "humidity", 1e6), now())
                .is_ok()
        );
        assert!(
            Limits::none()
                .check(&reading(old, "humidity", 1.1e15), now())
                .is_err()
        );
        let err = Limits::default()
            .check(&reading(now(), "humidity", 101.0), now())
            .unwrap_err();
        assert!(err.to_string().contains("[0, 100]"), "{err}");
        let err = Limits::default()
            .check(&reading(now(), "lux", -1.0), now())
            .unwrap_err();
        assert!(err.to_string().contains("[0, 200000]"), "{err}");
        assert_eq!(Range::new(None, Some(5.0)).to_string(), "[-1e15, 5]");
    }

    #[test]
    fn configured_bounds_must_be_finite_and_ordered() {
        assert!(Limits::default().validate().is_ok());
        let mut l = Limits::default();
        l.ranges
            .insert("co2".into(), Range::new(Some(0.0), Some(1e300)));
        assert!(l.validate().unwrap_err().contains("limits.ranges.co2"));
        let l = Limits {
            default_range: Range::new(Some(5.0), Some(1.0)),
            ..Limits::default()
        };
        assert!(l.validate().unwrap_err().contains("default_range"));
        // A configured range wider than the bound is clamped to it, never unbounded.
        assert!(!Range::new(None, None).contains(f64::MAX));
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
