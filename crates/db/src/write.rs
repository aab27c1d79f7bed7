//! Batched writes (the historian's side).
//!
//! Readings go into the month partitions of `readings` (created first, see
//! [`ensure_partitions`]) and, in the same transaction, into the hourly rollup
//! `readings_hourly` — only the rows actually inserted are rolled up, so a redelivered
//! batch changes neither table. A batch is `COPY`ed when none of its readings is stored
//! yet (the common case, and the fastest way into PostgreSQL) and inserted with
//! `ON CONFLICT DO NOTHING` otherwise; see [`store_all`].

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use lentera_protocol::{DeviceStatus, LampCommand, LampMode, Reading};
use sqlx::PgPool;

/// One thing the historian has to store.
#[derive(Debug, Clone)]
pub enum Record {
    Reading(Reading),
    LampCommand {
        device: String,
        at: DateTime<Utc>,
        command: LampCommand,
    },
    LampState {
        device: String,
        at: DateTime<Utc>,
        state: LampCommand,
    },
    LampMode {
        device: String,
        at: DateTime<Utc>,
        mode: LampMode,
    },
    Status {
        device: String,
        at: DateTime<Utc>,
        status: DeviceStatus,
    },
}

/// Creates the month partitions that `instants` fall into, if missing; returns how many
/// were created. Idempotent and safe under concurrent historians.
pub async fn ensure_partitions(
    pool: &PgPool,
    instants: &[DateTime<Utc>],
) -> Result<i32, sqlx::Error> {
    let mut months: Vec<DateTime<Utc>> = instants
        .iter()
        .filter_map(|t| {
            Utc.with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0)
                .single()
        })
        .collect();
    months.sort_unstable();
    months.dedup();
    sqlx::query_scalar("SELECT lentera_ensure_partitions($1::timestamptz[])")
        .bind(&months)
        .fetch_one(pool)
        .await
}

/// Drops the month partitions (and their rollup rows) that end at or before `cutoff`;
/// returns the dropped partitions' names.
pub async fn drop_partitions_before(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
) -> Result<Vec<String>, sqlx::Error> {
    let dropped = sqlx::query_scalar("SELECT lentera_drop_partitions_before($1)")
        .bind(cutoff)
        .fetch_all(pool)
        .await;
    forget_partitions(&db_key(pool));
    dropped
}

/// Writes a batch in one transaction. Readings already stored (same device, metric and
/// ts) are skipped, so redelivery after a crash is harmless. Returns the rows inserted.
pub async fn store(pool: &PgPool, batch: &[Record]) -> Result<u64, sqlx::Error> {
    store_all(pool, batch).await
}

/// [`store`] over borrowed records, so a caller holding them elsewhere need not clone.
///
/// The fast path `COPY`s the readings straight into `readings` and upserts the rollup
/// aggregated here; it fails as a whole on the first duplicate key (SQLSTATE 23505) —
/// a redelivery after a crash, or the same reading twice in one batch — and the batch
/// is then written again by `INSERT … ON CONFLICT DO NOTHING RETURNING`, which rolls up
/// only the rows it inserted. Duplicates are rare, so nearly every batch takes the
/// fast path, and either way the batch commits exactly once or not at all.
pub async fn store_all<'a>(
    pool: &PgPool,
    batch: impl IntoIterator<Item = &'a Record>,
) -> Result<u64, sqlx::Error> {
    store_all_within(pool, batch, None).await
}

/// [`store_all`] with every statement of the write transaction limited to
/// `statement_timeout` (PostgreSQL's `SET LOCAL statement_timeout`, which counts time
/// spent waiting for locks too): a write stuck behind a lock or a stalled server fails
/// with SQLSTATE 57014 and rolls back instead of hanging, so the caller can say so and
/// retry. `None` waits as long as PostgreSQL takes.
pub async fn store_all_within<'a>(
    pool: &PgPool,
    batch: impl IntoIterator<Item = &'a Record>,
    statement_timeout: Option<std::time::Duration>,
) -> Result<u64, sqlx::Error> {
    let prepared = Prepared::new(batch);
    let db = db_key(pool);
    if !prepared.readings.is_empty() {
        // Outside the transaction: creating a partition locks the parent table, and
        // holding that lock for the whole batch would stall history reads.
        ensure_partitions_cached(pool, &db, &prepared.months).await?;
    }
    let mut path = Path::Copy;
    let mut repartitioned = false;
    loop {
        match write_batch(pool, &prepared, path, statement_timeout).await {
            Err(e) if path == Path::Copy && sqlstate(&e).as_deref() == Some(UNIQUE_VIOLATION) => {
                tracing::debug!("batch holds readings already stored; writing it row by row");
                path = Path::Upsert;
            }
            // A month partition this process created was dropped behind its back (by
            // retention in another process, or by hand): forget and re-create, once.
            Err(e) if !repartitioned && sqlstate(&e).as_deref() == Some(NO_PARTITION) => {
                repartitioned = true;
                forget_partitions(&db);
                ensure_partitions_cached(pool, &db, &prepared.months).await?;
            }
            other => return other,
        }
    }
}

const UNIQUE_VIOLATION: &str = "23505";
/// "no partition of relation … found for row" is a check violation.
const NO_PARTITION: &str = "23514";

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Copy,
    Upsert,
}

/// One reading row.
struct Row<'a> {
    device: &'a str,
    metric: &'a str,
    ts: DateTime<Utc>,
    value: f64,
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

/// A batch taken apart into what each statement needs, computed once (a retry reuses it).
#[derive(Default)]
struct Prepared<'a> {
    readings: Vec<Row<'a>>,
    months: Vec<DateTime<Utc>>,
    /// Newest row per series.
    latest: HashMap<(&'a str, &'a str), (DateTime<Utc>, f64)>,
    /// Device → (first, last seen, is a lamp).
    devices: HashMap<&'a str, (DateTime<Utc>, DateTime<Utc>, bool)>,
    events: Vec<(&'a str, DateTime<Utc>, &'static str, String)>,
    modes: Vec<(&'a str, &'a LampMode, DateTime<Utc>)>,
    statuses: Vec<(&'a str, DateTime<Utc>, &'static str)>,
}

impl<'a> Prepared<'a> {
    fn new(batch: impl IntoIterator<Item = &'a Record>) -> Self {
        let mut p = Prepared::default();
        for rec in batch {
            match rec {
                Record::Reading(reading) => {
                    let device = reading.device.as_str();
                    for (metric, value) in &reading.metrics {
                        p.readings.push(Row {
                            device,
                            metric,
                            ts: reading.ts,
                            value: *value,
                        });
                        let latest = p
                            .latest
                            .entry((device, metric))
                            .or_insert((reading.ts, *value));
                        if reading.ts > latest.0 {
                            *latest = (reading.ts, *value);
                        }
                    }
                    p.month(reading.ts);
                    p.seen(device, reading.ts, false);
                }
                Record::LampCommand {
                    device,
                    at,
                    command,
                } => {
                    p.events
                        .push((device, *at, "command", command.as_str().into()));
                    p.seen(device, *at, true);
                }
                Record::LampState { device, at, state } => {
                    p.events.push((device, *at, "state", state.as_str().into()));
                    p.seen(device, *at, true);
                }
                Record::LampMode { device, at, mode } => {
                    p.events.push((
                        device,
                        *at,
                        "mode",
                        String::from_utf8_lossy(&mode.to_payload()).into_owned(),
                    ));
                    p.modes.push((device, mode, *at));
                    p.seen(device, *at, true);
                }
                Record::Status { device, at, status } => {
                    p.statuses.push((device, *at, status.as_str()));
                }
            }
        }
        p
    }

    fn month(&mut self, t: DateTime<Utc>) {
        if let Some(m) = Utc
            .with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0)
            .single()
            && !self.months.contains(&m)
        {
            self.months.push(m);
        }
    }

    fn seen(&mut self, device: &'a str, t: DateTime<Utc>, lamp: bool) {
        let e = self.devices.entry(device).or_insert((t, t, lamp));
        e.0 = e.0.min(t);
        e.1 = e.1.max(t);
        e.2 |= lamp;
    }

    /// The readings in `COPY … FROM STDIN (FORMAT binary)` form: PostgreSQL then parses
    /// no text (timestamps and floats were a visible part of its COPY profile) and the
    /// values go in exactly, with no escaping to get wrong.
    fn copy_binary(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(19 + self.readings.len() * 48 + 2);
        // Signature, flags (no OIDs), header extension length.
        out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&0i32.to_be_bytes());
        for r in &self.readings {
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

    /// Hourly aggregates of every reading (only valid when all of them were inserted).
    fn rollup(&self) -> HashMap<(&'a str, &'a str, DateTime<Utc>), Agg> {
        let mut out: HashMap<_, Agg> = HashMap::new();
        for r in &self.readings {
            let secs = r.ts.timestamp();
            let hour = Utc
                .timestamp_opt(secs - secs.rem_euclid(3600), 0)
                .single()
                .unwrap_or(r.ts);
            out.entry((r.device, r.metric, hour))
                .and_modify(|a| {
                    a.min = a.min.min(r.value);
                    a.max = a.max.max(r.value);
                    a.sum += r.value;
                    a.count += 1;
                    if r.ts >= a.last_ts {
                        a.last_ts = r.ts;
                        a.last = r.value;
                    }
                })
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

/// A `timestamptz` in PostgreSQL's binary form: microseconds since 2000-01-01 UTC.
fn pg_micros(ts: DateTime<Utc>) -> i64 {
    /// 2000-01-01T00:00:00Z in unix seconds.
    const PG_EPOCH: i64 = 946_684_800;
    (ts.timestamp() - PG_EPOCH) * 1_000_000 + i64::from(ts.timestamp_subsec_micros())
}

/// The rollup upsert, shared by both paths. ORDER BY fixes the row-lock order, so two
/// historians upserting the same hours cannot deadlock. `last` follows `last_ts`, so
/// batches that arrive out of order still leave the newest value.
const ROLLUP_UPSERT: &str = "ON CONFLICT (device, metric, hour) DO UPDATE SET
       min = least(h.min, EXCLUDED.min),
       max = greatest(h.max, EXCLUDED.max),
       sum = h.sum + EXCLUDED.sum,
       count = h.count + EXCLUDED.count,
       last = CASE WHEN EXCLUDED.last_ts >= h.last_ts THEN EXCLUDED.last ELSE h.last END,
       last_ts = greatest(h.last_ts, EXCLUDED.last_ts)";

async fn write_batch(
    pool: &PgPool,
    p: &Prepared<'_>,
    path: Path,
    statement_timeout: Option<std::time::Duration>,
) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if let Some(t) = statement_timeout {
        // SET takes no bind parameters; the value is a number we format ourselves.
        let ms = t.as_millis().clamp(1, i32::MAX as u128);
        sqlx::query(&format!("SET LOCAL statement_timeout = {ms}"))
            .execute(&mut *tx)
            .await?;
    }
    let inserted = if p.readings.is_empty() {
        0
    } else if path == Path::Copy {
        let mut copy = tx
            .copy_in_raw("COPY readings (device, metric, ts, value) FROM STDIN (FORMAT binary)")
            .await?;
        copy.send(p.copy_binary()).await?;
        let n = copy.finish().await?;
        let rollup = p.rollup();
        let mut cols = (
            Vec::with_capacity(rollup.len()),
            Vec::with_capacity(rollup.len()),
            Vec::with_capacity(rollup.len()),
            Vec::with_capacity(rollup.len()),
            Vec::with_capacity(rollup.len()),
            Vec::with_capacity(rollup.len()),
            Vec::with_capacity(rollup.len()),
            Vec::with_capacity(rollup.len()),
            Vec::with_capacity(rollup.len()),
        );
        for ((device, metric, hour), a) in &rollup {
            cols.0.push(*device);
            cols.1.push(*metric);
            cols.2.push(*hour);
            cols.3.push(a.min);
            cols.4.push(a.max);
            cols.5.push(a.sum);
            cols.6.push(a.count);
            cols.7.push(a.last_ts);
            cols.8.push(a.last);
        }
        sqlx::query(&format!(
            "INSERT INTO readings_hourly AS h
               (device, metric, hour, min, max, sum, count, last_ts, last)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::float8[],
                                  $5::float8[], $6::float8[], $7::int8[], $8::timestamptz[],
                                  $9::float8[])
             ORDER BY 1, 2, 3
             {ROLLUP_UPSERT}"
        ))
        .bind(&cols.0)
        .bind(&cols.1)
        .bind(&cols.2)
        .bind(&cols.3)
        .bind(&cols.4)
        .bind(&cols.5)
        .bind(&cols.6)
        .bind(&cols.7)
        .bind(&cols.8)
        .execute(&mut *tx)
        .await?;
        n
    } else {
        let n = p.readings.len();
        let (mut device, mut metric, mut ts, mut value) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for r in &p.readings {
            device.push(r.device);
            metric.push(r.metric);
            ts.push(r.ts);
            value.push(r.value);
        }
        let n: i64 = sqlx::query_scalar(&format!(
            "WITH ins AS (
               INSERT INTO readings (device, metric, ts, value)
               SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::float8[])
               ON CONFLICT DO NOTHING
               RETURNING device, metric, ts, value
             ), rolled AS (
               INSERT INTO readings_hourly AS h
                 (device, metric, hour, min, max, sum, count, last_ts, last)
               SELECT device, metric,
                      date_bin('1 hour', ts, TIMESTAMPTZ '1970-01-01 00:00:00+00'),
                      min(value), max(value), sum(value), count(*), max(ts),
                      (array_agg(value ORDER BY ts DESC))[1]
               FROM ins GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
               {ROLLUP_UPSERT}
             )
             SELECT count(*) FROM ins"
        ))
        .bind(&device)
        .bind(&metric)
        .bind(&ts)
        .bind(&value)
        .fetch_one(&mut *tx)
        .await?;
        n as u64
    };

    if !p.latest.is_empty() {
        let mut cols = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((device, metric), (ts, value)) in &p.latest {
            cols.0.push(*device);
            cols.1.push(*metric);
            cols.2.push(*ts);
            cols.3.push(*value);
        }
        sqlx::query(
            "INSERT INTO latest_readings (device, metric, ts, value)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::float8[])
             ORDER BY 1, 2
             ON CONFLICT (device, metric) DO UPDATE
               SET ts = EXCLUDED.ts, value = EXCLUDED.value
               WHERE latest_readings.ts <= EXCLUDED.ts",
        )
        .bind(&cols.0)
        .bind(&cols.1)
        .bind(&cols.2)
        .bind(&cols.3)
        .execute(&mut *tx)
        .await?;
    }

    if !p.devices.is_empty() {
        let mut cols = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (id, (first, last, lamp)) in &p.devices {
            cols.0.push(*id);
            cols.1.push(if *lamp { "lamp" } else { "sensor" });
            cols.2.push(*first);
            cols.3.push(*last);
        }
        sqlx::query(
            "INSERT INTO devices (id, kind, first_seen, last_seen)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[])
             ORDER BY 1
             ON CONFLICT (id) DO UPDATE SET
               last_seen = greatest(devices.last_seen, EXCLUDED.last_seen),
               kind = CASE WHEN EXCLUDED.kind = 'lamp' THEN 'lamp' ELSE devices.kind END",
        )
        .bind(&cols.0)
        .bind(&cols.1)
        .bind(&cols.2)
        .bind(&cols.3)
        .execute(&mut *tx)
        .await?;
    }

    for (device, at, kind, value) in &p.events {
        sqlx::query("INSERT INTO lamp_events (device, ts, kind, value) VALUES ($1, $2, $3, $4)")
            .bind(device)
            .bind(at)
            .bind(kind)
            .bind(value)
            .execute(&mut *tx)
            .await?;
    }
    for (device, mode, at) in &p.modes {
        sqlx::query(
            "INSERT INTO lamp_modes (device, mode, until, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (device) DO UPDATE SET mode = EXCLUDED.mode, until = EXCLUDED.until,
               updated_at = EXCLUDED.updated_at",
        )
        .bind(device)
        .bind(mode.mode.as_str())
        .bind(mode.until)
        .bind(at)
        .execute(&mut *tx)
        .await?;
    }
    for (device, at, status) in &p.statuses {
        sqlx::query(
            "INSERT INTO devices (id, status, first_seen, last_seen) VALUES ($1, $2, $3, $3)
             ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status",
        )
        .bind(device)
        .bind(status)
        .bind(at)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(inserted)
}

/// Month partitions this process has made sure of, per database: `ensure_partitions` is
/// a round trip per batch otherwise, and months change rarely.
static ENSURED: Mutex<Vec<(String, DateTime<Utc>)>> = Mutex::new(Vec::new());

fn db_key(pool: &PgPool) -> String {
    let o = pool.connect_options();
    format!(
        "{}:{}/{}",
        o.get_host(),
        o.get_port(),
        o.get_database().unwrap_or_default()
    )
}

async fn ensure_partitions_cached(
    pool: &PgPool,
    db: &str,
    months: &[DateTime<Utc>],
) -> Result<(), sqlx::Error> {
    let missing: Vec<DateTime<Utc>> = {
        let known = ENSURED.lock().unwrap();
        months
            .iter()
            .filter(|m| !known.iter().any(|(d, k)| d == db && k == *m))
            .copied()
            .collect()
    };
    if missing.is_empty() {
        return Ok(());
    }
    ensure_partitions(pool, &missing).await?;
    let mut known = ENSURED.lock().unwrap();
    for m in missing {
        if !known.iter().any(|(d, k)| d == db && *k == m) {
            known.push((db.to_owned(), m));
        }
    }
    Ok(())
}

fn forget_partitions(db: &str) {
    ENSURED.lock().unwrap().retain(|(d, _)| d != db);
}
