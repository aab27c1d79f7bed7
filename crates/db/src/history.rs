//! Reading history: raw rows or time buckets.

use chrono::{DateTime, Utc};
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

    fn sql(self) -> &'static str {
        match self {
            Agg::Avg => "avg(value)",
            Agg::Min => "min(value)",
            Agg::Max => "max(value)",
            Agg::Sum => "sum(value)",
            Agg::Count => "count(*)::float8",
            Agg::Last => "(array_agg(value ORDER BY ts DESC))[1]",
        }
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
}

/// One row of history: a raw reading or a bucket (then `ts` is the bucket's start).
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub metric: String,
    pub ts: DateTime<Utc>,
    pub value: f64,
}

/// Runs `q`. Buckets are aligned to the Unix epoch with `date_bin`, so the same bucket
/// always has the same start whatever range is asked.
pub async fn query(pool: &PgPool, q: &Query) -> Result<Vec<Point>, sqlx::Error> {
    let order = if q.descending { "DESC" } else { "ASC" };
    let sql = match q.bucket_secs {
        None => format!(
            "SELECT metric, ts, value FROM readings
             WHERE device = $1 AND ($2::text IS NULL OR metric = $2) AND ts >= $3 AND ts < $4
             ORDER BY ts {order}, metric LIMIT $5"
        ),
        Some(_) => format!(
            "SELECT metric, date_bin(make_interval(secs => $6), ts, TIMESTAMPTZ '1970-01-01') AS ts,
                    {agg} AS value
             FROM readings
             WHERE device = $1 AND ($2::text IS NULL OR metric = $2) AND ts >= $3 AND ts < $4
             GROUP BY metric, 2 ORDER BY 2 {order}, metric LIMIT $5",
            agg = q.agg.sql()
        ),
    };
    let rows = sqlx::query(&sql)
        .bind(&q.device)
        .bind(&q.metric)
        .bind(q.from)
        .bind(q.to)
        .bind(q.limit)
        .bind(q.bucket_secs.unwrap_or(0) as f64)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Point {
                metric: r.try_get("metric")?,
                ts: r.try_get("ts")?,
                value: r.try_get("value")?,
            })
        })
        .collect()
}
