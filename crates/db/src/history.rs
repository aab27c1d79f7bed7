//! Reading history: raw rows or time buckets (from the hourly rollup when the buckets
//! are whole hours), both keyset-paged.
//!
//! Three query shapes, chosen by [`Query`]:
//! - **raw**: rows of `readings` in `(ts, metric)` order, asc or desc, after an optional
//!   [`Cursor`] (keyset paging: stable under concurrent inserts, no OFFSET scans);
//! - **bucketed, whole hours** (`bucket_secs % 3600 == 0`): the full hours inside
//!   `[from, to)` come from `readings_hourly` (~8,760 rows a year per series instead of
//!   525,600 raw ones), the partial hours at either edge from raw rows; both are merged
//!   as partial aggregates, so the answer equals the raw-rows answer exactly;
//! - **bucketed, other widths**: aggregated from raw rows.
//!
//! Buckets are aligned to the Unix epoch in UTC (`date_bin`), so the same bucket always
//! has the same start whatever range is asked — which is what lets a [`Cursor`] (the last
//! bucket's start and metric) page buckets too: the next page narrows the window to the
//! buckets at or after (before, descending) the cursor's bucket and skips the ones
//! already returned. The metric condition is put in the SQL
//! text only when a metric is given: a generic plan for `($2 IS NULL OR metric = $2)`
//! could not use the `(device, metric, ts)` index.

use std::future::Future;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use futures_util::TryStreamExt;
use serde::Serialize;
use sqlx::{PgPool, Row};

/// How bucketed values are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    Avg,
    Min,
    Max,
    Sum,
    Count,
    Last,
}

impl Agg {
    pub fn parse(s: &str) -> Option<Agg> {
        Some(match s {
            "avg" => Agg::Avg,
            "min" => Agg::Min,
            "max" => Agg::Max,
            "sum" => Agg::Sum,
            "count" => Agg::Count,
            "last" => Agg::Last,
            _ => return None,
        })
    }

    /// Over raw rows.
    fn raw_sql(self) -> &'static str {
        match self {
            Agg::Avg => "avg(value)",
            Agg::Min => "min(value)",
            Agg::Max => "max(value)",
            Agg::Sum => "sum(value)",
            Agg::Count => "count(*)::float8",
            Agg::Last => "(array_agg(value ORDER BY ts DESC))[1]",
        }
    }

    /// Over partial aggregates (rollup rows and raw rows shaped like them).
    fn merge_sql(self) -> &'static str {
        match self {
            Agg::Avg => "sum(sum) / sum(count)",
            Agg::Min => "min(min)",
            Agg::Max => "max(max)",
            Agg::Sum => "sum(sum)",
            Agg::Count => "sum(count)::float8",
            Agg::Last => "(array_agg(last ORDER BY last_ts DESC))[1]",
        }
    }
}

/// Where a page ended: the last row's `ts` and `metric` (for buckets, the bucket's
/// start). Rendered as
/// `<unix microseconds>_<metric>`: URL-safe, and unambiguous although metric names may
/// contain `_`, because the number comes first and never does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub ts: DateTime<Utc>,
    pub metric: String,
}

impl Cursor {
    pub fn parse(s: &str) -> Option<Cursor> {
        let (micros, metric) = s.split_once('_')?;
        let ts = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
        (!metric.is_empty()).then(|| Cursor {
            ts,
            metric: metric.to_owned(),
        })
    }

    pub fn after(p: &Point) -> Cursor {
        Cursor {
            ts: p.ts,
            metric: p.metric.clone(),
        }
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}_{}", self.ts.timestamp_micros(), self.metric)
    }
}

/// A validated history request (web parses and bounds the query string).
#[derive(Debug, Clone)]
pub struct Query {
    pub device: String,
    pub metric: Option<String>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Bucket width in seconds; `None` for raw rows.
    pub bucket_secs: Option<i64>,
    pub agg: Agg,
    pub limit: i64,
    pub descending: bool,
    /// Continue after this row or bucket (in the requested order).
    pub cursor: Option<Cursor>,
}

impl Query {
    /// True when the hourly rollup answers this query.
    pub fn uses_rollup(&self) -> bool {
        self.bucket_secs.is_some_and(|b| b >= 3600 && b % 3600 == 0)
    }

    /// The `[from, to)` of raw rows to read. For a later page of buckets it is narrowed
    /// to the buckets not yet passed: ascending, rows before the cursor's bucket start
    /// only feed earlier buckets; descending, rows at or after its end only feed later
    /// ones. (Raw rows need no narrowing: the keyset condition is an index range.)
    pub fn window(&self) -> (DateTime<Utc>, DateTime<Utc>) {
        match (&self.cursor, self.bucket_secs) {
            (Some(c), Some(secs)) if self.descending => {
                let end = c.ts + TimeDelta::seconds(secs);
                (self.from, self.to.min(end).max(self.from))
            }
            (Some(c), Some(_)) => (self.from.max(c.ts).min(self.to), self.to),
            _ => (self.from, self.to),
        }
    }
}

/// One row of history: a raw reading or a bucket (then `ts` is the bucket's start).
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub metric: String,
    pub ts: DateTime<Utc>,
    pub value: f64,
}

const EPOCH: &str = "TIMESTAMPTZ '1970-01-01 00:00:00+00'";

/// The SQL for `q`. Parameters: $1 device, $2 metric, $3 from, $4 to (both from
/// [`Query::window`]), $5 limit, $6/$7 cursor ts/metric, then for buckets $8 bucket
/// seconds, and for the rollup $9/$10 the whole-hour range.
fn sql(q: &Query) -> String {
    let dir = if q.descending { "DESC" } else { "ASC" };
    let metric = if q.metric.is_some() {
        "metric = $2"
    } else {
        "$2::text IS NULL"
    };
    let cursor = if q.cursor.is_some() {
        let cmp = if q.descending { "<" } else { ">" };
        format!("(ts, metric) {cmp} ($6::timestamptz, $7::text)")
    } else {
        "$6::timestamptz IS NULL AND $7::text IS NULL".to_owned()
    };
    let bucketed = |parts: &str, agg: &str| {
        format!(
            "SELECT metric, ts, value FROM (
               SELECT metric, date_bin(make_interval(secs => $8), ts, {EPOCH}) AS ts,
                      {agg} AS value
               FROM {parts} GROUP BY metric, 2
             ) b
             WHERE {cursor}
             ORDER BY ts {dir}, metric {dir} LIMIT $5"
        )
    };
    match q.bucket_secs {
        None => format!(
            "SELECT metric, ts, value FROM readings
             WHERE device = $1 AND {metric} AND ts >= $3 AND ts < $4 AND {cursor}
             ORDER BY ts {dir}, metric {dir} LIMIT $5"
        ),
        Some(_) if q.uses_rollup() => bucketed(
            &format!(
                "(SELECT metric, hour AS ts, min, max, sum, count, last_ts, last
                  FROM readings_hourly
                  WHERE device = $1 AND {metric} AND hour >= $9 AND hour < $10
                  UNION ALL
                  SELECT metric, ts, value, value, value, 1::bigint, ts, value FROM readings
                  WHERE device = $1 AND {metric} AND ts >= $3 AND ts < $9
                  UNION ALL
                  SELECT metric, ts, value, value, value, 1::bigint, ts, value FROM readings
                  WHERE device = $1 AND {metric} AND ts >= $10 AND ts < $4
                 ) parts"
            ),
            q.agg.merge_sql(),
        ),
        Some(_) => bucketed(
            &format!("readings WHERE device = $1 AND {metric} AND ts >= $3 AND ts < $4"),
            q.agg.raw_sql(),
        ),
    }
}

/// The whole hours inside `[from, to)`, as `[h0, h1)`; empty (`h0 == h1 == to`) when
/// there is none, so the raw branches then cover the whole window.
pub fn whole_hours(from: DateTime<Utc>, to: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let hour = TimeDelta::hours(1);
    let floor = |t: DateTime<Utc>| t.duration_trunc(hour).unwrap_or(t);
    let h0 = match floor(from) {
        f if f == from => f,
        f => f + hour,
    };
    let h1 = floor(to);
    if h0 < h1 { (h0, h1) } else { (to, to) }
}

fn build<'q>(
    sql: &'q str,
    q: &'q Query,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let (from, to) = q.window();
    let query = sqlx::query(sql)
        .bind(&q.device)
        .bind(&q.metric)
        .bind(from)
        .bind(to)
        .bind(q.limit)
        .bind(q.cursor.as_ref().map(|c| c.ts))
        .bind(q.cursor.as_ref().map(|c| c.metric.as_str()));
    match q.bucket_secs {
        None => query,
        Some(secs) if q.uses_rollup() => {
            let (h0, h1) = whole_hours(from, to);
            query.bind(secs as f64).bind(h0).bind(h1)
        }
        Some(secs) => query.bind(secs as f64),
    }
}

fn point(r: &sqlx::postgres::PgRow) -> Result<Point, sqlx::Error> {
    Ok(Point {
        metric: r.try_get("metric")?,
        ts: r.try_get("ts")?,
        value: r.try_get("value")?,
    })
}

/// Runs `q` and collects the rows.
pub async fn query(pool: &PgPool, q: &Query) -> Result<Vec<Point>, sqlx::Error> {
    let sql = sql(q);
    build(&sql, q)
        .fetch_all(pool)
        .await?
        .iter()
        .map(point)
        .collect()
}

/// Runs `q` and hands the rows to `sink` in chunks of up to `chunk` rows as they arrive,
/// so a large export never sits in memory whole. Stops early when `sink` returns false
/// (the client went away).
pub async fn for_each_chunk<F, Fut>(
    pool: &PgPool,
    q: &Query,
    chunk: usize,
    mut sink: F,
) -> Result<(), sqlx::Error>
where
    F: FnMut(Vec<Point>) -> Fut,
    Fut: Future<Output = bool>,
{
    let sql = sql(q);
    let mut rows = build(&sql, q).fetch(pool);
    let mut buf = Vec::with_capacity(chunk);
    while let Some(row) = rows.try_next().await? {
        buf.push(point(&row)?);
        if buf.len() >= chunk && !sink(std::mem::take(&mut buf)).await {
            return Ok(());
        }
    }
    if !buf.is_empty() {
        sink(buf).await;
    }
    Ok(())
}

/// The `EXPLAIN (ANALYZE, BUFFERS)` plan of `q`, for documentation and benchmarks.
pub async fn explain(pool: &PgPool, q: &Query) -> Result<String, sqlx::Error> {
    let sql = format!("EXPLAIN (ANALYZE, BUFFERS) {}", sql(q));
    let rows = build(&sql, q).fetch_all(pool).await?;
    rows.iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<Vec<_>, _>>()
        .map(|lines| lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, h, m, 0).unwrap()
    }

    #[test]
    fn whole_hours_inside_a_window() {
        assert_eq!(whole_hours(t(1, 30), t(5, 15)), (t(2, 0), t(5, 0)));
        assert_eq!(whole_hours(t(1, 0), t(5, 0)), (t(1, 0), t(5, 0)));
        assert_eq!(whole_hours(t(1, 10), t(1, 50)), (t(1, 50), t(1, 50)));
        assert_eq!(whole_hours(t(1, 10), t(2, 50)), (t(2, 50), t(2, 50)));
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = Cursor {
            ts: t(1, 0),
            metric: "soil_moisture".into(),
        };
        assert_eq!(Cursor::parse(&c.to_string()), Some(c));
        for bad in ["", "x_t", "123", "123_", "1e3_t"] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_bucket_cursor_narrows_the_window_to_buckets_not_yet_returned() {
        let q = |descending, cursor: Option<DateTime<Utc>>, bucket| Query {
            device: "gh-1".into(),
            metric: None,
            from: t(1, 30),
            to: t(9, 15),
            bucket_secs: bucket,
            agg: Agg::Avg,
            limit: 10,
            descending,
            cursor: cursor.map(|ts| Cursor {
                ts,
                metric: "lux".into(),
            }),
        };
        let h = Some(3600);
        assert_eq!(q(false, None, h).window(), (t(1, 30), t(9, 15)));
        // Ascending: rows before the cursor's bucket start only feed earlier buckets.
        assert_eq!(q(false, Some(t(4, 0)), h).window(), (t(4, 0), t(9, 15)));
        // Descending: rows from the cursor's bucket end on only feed later buckets.
        assert_eq!(q(true, Some(t(4, 0)), h).window(), (t(1, 30), t(5, 0)));
        // A cursor before the window (ascending) or past it (descending) changes nothing.
        assert_eq!(q(false, Some(t(1, 0)), h).window(), (t(1, 30), t(9, 15)));
        assert_eq!(q(true, Some(t(9, 0)), h).window(), (t(1, 30), t(9, 15)));
        // Raw rows keep the whole window: the keyset condition does the work.
        assert_eq!(q(false, Some(t(4, 0)), None).window(), (t(1, 30), t(9, 15)));
    }

    #[test]
    fn only_whole_hour_buckets_use_the_rollup() {
        let q = |b| Query {
            device: "gh-1".into(),
            metric: None,
            from: t(0, 0),
            to: t(1, 0),
            bucket_secs: b,
            agg: Agg::Avg,
            limit: 10,
            descending: false,
            cursor: None,
        };
        assert!(q(Some(3600)).uses_rollup());
        assert!(q(Some(86_400)).uses_rollup());
        assert!(!q(Some(1800)).uses_rollup());
        assert!(!q(Some(5400)).uses_rollup());
        assert!(!q(None).uses_rollup());
    }
}
