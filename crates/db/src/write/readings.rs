//! The readings rows of a batch and their hourly rollup.
//!
//! Two paths into `readings`, both in the caller's transaction:
//! - [`copy`]: binary `COPY` plus the rollup aggregated here, for a batch none of whose
//!   keys is stored yet — nearly every batch, and the fastest way into PostgreSQL. It
//!   fails as a whole on the first stored key (SQLSTATE 23505).
//! - [`upsert`]: for a batch that holds stored keys. A key stored with the same value is
//!   a retry and changes nothing; with another value it is a correction: the row takes
//!   the new value and the rollup hours it touches are recomputed from the raw rows.
//!
//! Within one batch a key is kept once (the last occurrence wins), so neither path ever
//! sees a key twice.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use chrono::{DateTime, TimeZone, Utc};
use lentera_protocol::Reading;
use sqlx::{Postgres, Row as _, Transaction};

/// One reading row.
pub(crate) struct Row<'a> {
    pub device: &'a str,
    pub metric: &'a str,
    pub ts: DateTime<Utc>,
    pub value: f64,
}

/// The reading rows of a batch, one per key.
#[derive(Default)]
pub(crate) struct Rows<'a> {
    pub rows: Vec<Row<'a>>,
    index: HashMap<(&'a str, &'a str, DateTime<Utc>), usize>,
    /// Keys that came twice in the batch with different values (the later one kept).
    pub replaced: u64,
}

impl<'a> Rows<'a> {
    pub fn push(&mut self, reading: &'a Reading) {
        let device = reading.device.as_str();
        for (metric, value) in &reading.metrics {
            let row = Row {
                device,
                metric,
                ts: reading.ts,
                value: *value,
            };
            match self.index.entry((device, metric, reading.ts)) {
                Entry::Vacant(e) => {
                    e.insert(self.rows.len());
                    self.rows.push(row);
                }
                Entry::Occupied(e) => {
                    let kept = &mut self.rows[*e.get()];
                    if kept.value != row.value {
                        self.replaced += 1;
                        kept.value = row.value;
                    }
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rows in `COPY … FROM STDIN (FORMAT binary)` form: PostgreSQL then parses
    /// no text (timestamps and floats were a visible part of its COPY profile) and the
    /// values go in exactly, with no escaping to get wrong.
    fn copy_binary(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(19 + self.rows.len() * 48 + 2);
        // Signature, flags (no OIDs), header extension length.
        out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&0i32.to_be_bytes());
        for r in &self.rows {
            out.extend_from_slice(&4i16.to_be_bytes());
            for text in [r.device, r.metric] {
                out.extend_from_slice(&(text.len() as i32).to_be_bytes());
                out.extend_from_slice(text.as_bytes());
            }
            out.extend_from_slice(&8i32.to_be_bytes());
            out.extend_from_slice(&pg_micros(r.ts).to_be_bytes());
            out.extend_from_slice(&8i32.to_be_bytes());
            out.extend_from_slice(&r.value.to_bits().to_be_bytes());
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    /// Hourly aggregates of every row (only valid when all of them were inserted).
    fn rollup(&self) -> HashMap<(&'a str, &'a str, DateTime<Utc>), Agg> {
        let mut out: HashMap<_, Agg> = HashMap::new();
        for r in &self.rows {
            out.entry((r.device, r.metric, hour_of(r.ts)))
                .and_modify(|a| a.add(r))
                .or_insert(Agg {
                    min: r.value,
                    max: r.value,
                    sum: r.value,
                    count: 1,
                    last_ts: r.ts,
                    last: r.value,
                });
        }
        out
    }
}

/// Per (device, metric, hour) aggregates of rows, as `readings_hourly` keeps them.
struct Agg {
    min: f64,
    max: f64,
    sum: f64,
    count: i64,
    last_ts: DateTime<Utc>,
    last: f64,
}

impl Agg {
    fn add(&mut self, r: &Row<'_>) {
        self.min = self.min.min(r.value);
        self.max = self.max.max(r.value);
        self.sum += r.value;
        self.count += 1;
        if r.ts >= self.last_ts {
            self.last_ts = r.ts;
            self.last = r.value;
        }
    }
}

fn hour_of(ts: DateTime<Utc>) -> DateTime<Utc> {
    let secs = ts.timestamp();
    Utc.timestamp_opt(secs - secs.rem_euclid(3600), 0)
        .single()
        .unwrap_or(ts)
}

/// A `timestamptz` in PostgreSQL's binary form: microseconds since 2000-01-01 UTC.
fn pg_micros(ts: DateTime<Utc>) -> i64 {
    /// 2000-01-01T00:00:00Z in unix seconds.
    const PG_EPOCH: i64 = 946_684_800;
    (ts.timestamp() - PG_EPOCH) * 1_000_000 + i64::from(ts.timestamp_subsec_micros())
}

/// The incremental rollup upsert, shared by both paths. ORDER BY fixes the row-lock
/// order, so two historians upserting the same hours cannot deadlock. `last` follows
/// `last_ts`, so batches that arrive out of order still leave the newest value.
const ROLLUP_ADD: &str = "ON CONFLICT (device, metric, hour) DO UPDATE SET
       min = least(h.min, EXCLUDED.min),
       max = greatest(h.max, EXCLUDED.max),
       sum = h.sum + EXCLUDED.sum,
       count = h.count + EXCLUDED.count,
       last = CASE WHEN EXCLUDED.last_ts >= h.last_ts THEN EXCLUDED.last ELSE h.last END,
       last_ts = greatest(h.last_ts, EXCLUDED.last_ts)";

/// What a write did to `readings`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    pub inserted: u64,
    /// Stored keys whose value changed (corrections).
    pub replaced: u64,
}

/// The fast path; see the module docs.
pub(crate) async fn copy(
    tx: &mut Transaction<'_, Postgres>,
    rows: &Rows<'_>,
) -> Result<Written, sqlx::Error> {
    let mut copy = tx
        .copy_in_raw("COPY readings (device, metric, ts, value) FROM STDIN (FORMAT binary)")
        .await?;
    copy.send(rows.copy_binary()).await?;
    let inserted = copy.finish().await?;
    let rollup = rollup_columns(&rows.rollup());
    sqlx::query(&format!(
        "INSERT INTO readings_hourly AS h
           (device, metric, hour, min, max, sum, count, last_ts, last)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::float8[],
                              $5::float8[], $6::float8[], $7::int8[], $8::timestamptz[],
                              $9::float8[])
         ORDER BY 1, 2, 3
         {ROLLUP_ADD}"
    ))
    .bind(&rollup.device)
    .bind(&rollup.metric)
    .bind(&rollup.hour)
    .bind(&rollup.min)
    .bind(&rollup.max)
    .bind(&rollup.sum)
    .bind(&rollup.count)
    .bind(&rollup.last_ts)
    .bind(&rollup.last)
    .execute(&mut **tx)
    .await?;
    Ok(Written {
        inserted,
        replaced: 0,
    })
}

/// The rollup map as one array per column, for `UNNEST`.
#[derive(Default)]
struct RollupColumns<'a> {
    device: Vec<&'a str>,
    metric: Vec<&'a str>,
    hour: Vec<DateTime<Utc>>,
    min: Vec<f64>,
    max: Vec<f64>,
    sum: Vec<f64>,
    count: Vec<i64>,
    last_ts: Vec<DateTime<Utc>>,
    last: Vec<f64>,
}

fn rollup_columns<'a>(
    rollup: &HashMap<(&'a str, &'a str, DateTime<Utc>), Agg>,
) -> RollupColumns<'a> {
    let mut c = RollupColumns::default();
    for ((device, metric, hour), a) in rollup {
        c.device.push(device);
        c.metric.push(metric);
        c.hour.push(*hour);
        c.min.push(a.min);
        c.max.push(a.max);
        c.sum.push(a.sum);
        c.count.push(a.count);
        c.last_ts.push(a.last_ts);
        c.last.push(a.last);
    }
    c
}

/// The path for batches holding stored keys; see the module docs. `old` (the keys
/// already stored, read in the statement's snapshot) tells a freshly inserted row from
/// an updated one in `RETURNING` (`xmax` would, but a partitioned table cannot return
/// system columns); a retry (same value) is neither, since the `WHERE` of `DO UPDATE`
/// skips it.
pub(crate) async fn upsert(
    tx: &mut Transaction<'_, Postgres>,
    rows: &Rows<'_>,
) -> Result<Written, sqlx::Error> {
    let n = rows.rows.len();
    let (mut device, mut metric, mut ts, mut value) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for r in &rows.rows {
        device.push(r.device);
        metric.push(r.metric);
        ts.push(r.ts);
        value.push(r.value);
    }
    let row = sqlx::query(&format!(
        "WITH old AS (
               SELECT r.device, r.metric, r.ts
               FROM readings r
               JOIN UNNEST($1::text[], $2::text[], $3::timestamptz[]) AS k(device, metric, ts)
                 ON r.device = k.device AND r.metric = k.metric AND r.ts = k.ts
             ), up AS (
               INSERT INTO readings AS r (device, metric, ts, value)
               SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::float8[])
               ON CONFLICT (device, metric, ts) DO UPDATE SET value = EXCLUDED.value
                 WHERE r.value IS DISTINCT FROM EXCLUDED.value
               RETURNING device, metric, ts, value
             ), marked AS (
               SELECT up.*, NOT EXISTS (
                 SELECT 1 FROM old
                 WHERE old.device = up.device AND old.metric = up.metric AND old.ts = up.ts
               ) AS fresh
               FROM up
             ), rolled AS (
               INSERT INTO readings_hourly AS h
                 (device, metric, hour, min, max, sum, count, last_ts, last)
               SELECT device, metric,
                      date_bin('1 hour', ts, TIMESTAMPTZ '1970-01-01 00:00:00+00'),
                      min(value), max(value), sum(value), count(*), max(ts),
                      (array_agg(value ORDER BY ts DESC))[1]
               FROM marked WHERE fresh GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
               {ROLLUP_ADD}
             )
             SELECT count(*) FILTER (WHERE fresh),
                    count(*) FILTER (WHERE NOT fresh),
                    array_agg(device) FILTER (WHERE NOT fresh),
                    array_agg(metric) FILTER (WHERE NOT fresh),
                    array_agg(date_bin('1 hour', ts, TIMESTAMPTZ '1970-01-01 00:00:00+00'))
                      FILTER (WHERE NOT fresh)
             FROM marked"
    ))
    .bind(&device)
    .bind(&metric)
    .bind(&ts)
    .bind(&value)
    .fetch_one(&mut **tx)
    .await?;
    let inserted: i64 = row.try_get(0)?;
    let replaced: i64 = row.try_get(1)?;
    let device: Option<Vec<String>> = row.try_get(2)?;
    let metric: Option<Vec<String>> = row.try_get(3)?;
    let hour: Option<Vec<DateTime<Utc>>> = row.try_get(4)?;
    if let (Some(device), Some(metric), Some(hour)) = (device, metric, hour) {
        recompute_hours(tx, &device, &metric, &hour).await?;
    }
    Ok(Written {
        inserted: inserted as u64,
        replaced: replaced as u64,
    })
}

/// Replaces the rollup rows of the given (device, metric, hour)s with aggregates of
/// the raw rows: after a correction the old value's share (its min, max, sum) cannot be
/// taken out incrementally. Corrections are rare, and an hour is at most a few thousand rows.
async fn recompute_hours(
    tx: &mut Transaction<'_, Postgres>,
    device: &[String],
    metric: &[String],
    hour: &[DateTime<Utc>],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO readings_hourly AS h
           (device, metric, hour, min, max, sum, count, last_ts, last)
         SELECT r.device, r.metric, k.hour, min(r.value), max(r.value), sum(r.value),
                count(*), max(r.ts), (array_agg(r.value ORDER BY r.ts DESC))[1]
         FROM (SELECT DISTINCT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[])
               AS u(device, metric, hour)) k
         JOIN readings r ON r.device = k.device AND r.metric = k.metric
                        AND r.ts >= k.hour AND r.ts < k.hour + interval '1 hour'
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
         ON CONFLICT (device, metric, hour) DO UPDATE SET
           min = EXCLUDED.min, max = EXCLUDED.max, sum = EXCLUDED.sum,
           count = EXCLUDED.count, last_ts = EXCLUDED.last_ts, last = EXCLUDED.last",
    )
    .bind(device)
    .bind(metric)
    .bind(hour)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
