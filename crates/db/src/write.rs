//! Batched writes (the historian's side).
//!
//! Readings go into the month partitions of `readings` (created first, see
//! [`ensure_partitions`]) and, in the same statement and transaction, into the hourly
//! rollup `readings_hourly` — only the rows actually inserted are rolled up, so a
//! redelivered batch changes neither table.

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
    sqlx::query_scalar("SELECT lentera_drop_partitions_before($1)")
        .bind(cutoff)
        .fetch_all(pool)
        .await
}

/// Writes a batch in one transaction. Readings already stored (same device, metric and
/// ts) are skipped, so redelivery after a crash is harmless. Returns the rows inserted.
pub async fn store(pool: &PgPool, batch: &[Record]) -> Result<u64, sqlx::Error> {
    let mut r = Columns::default();
    let mut seen: Vec<(&str, DateTime<Utc>, Option<&str>)> = Vec::new();
    let mut events: Vec<(&str, DateTime<Utc>, &str, String)> = Vec::new();
    let mut modes: Vec<(&str, &LampMode, DateTime<Utc>)> = Vec::new();
    let mut statuses: Vec<(&str, DateTime<Utc>, &str)> = Vec::new();
    for rec in batch {
        match rec {
            Record::Reading(reading) => {
                for (metric, value) in &reading.metrics {
                    r.device.push(reading.device.as_str().to_owned());
                    r.metric.push(metric.clone());
                    r.ts.push(reading.ts);
                    r.value.push(*value);
                }
                seen.push((reading.device.as_str(), reading.ts, None));
            }
            Record::LampCommand {
                device,
                at,
                command,
            } => {
                events.push((device, *at, "command", command.as_str().into()));
                seen.push((device, *at, Some("lamp")));
            }
            Record::LampState { device, at, state } => {
                events.push((device, *at, "state", state.as_str().into()));
                seen.push((device, *at, Some("lamp")));
            }
            Record::LampMode { device, at, mode } => {
                events.push((
                    device,
                    *at,
                    "mode",
                    String::from_utf8_lossy(&mode.to_payload()).into_owned(),
                ));
                modes.push((device, mode, *at));
                seen.push((device, *at, Some("lamp")));
            }
            Record::Status { device, at, status } => {
                statuses.push((device, *at, status.as_str()));
            }
        }
    }

    // Outside the transaction: creating a partition locks the parent table, and holding
    // that lock for the whole batch would stall history reads.
    if !r.ts.is_empty() {
        ensure_partitions(pool, &r.ts).await?;
    }
    let mut tx = pool.begin().await?;
    let inserted = if r.device.is_empty() {
        0
    } else {
        // ORDER BY in the rollup fixes the row-lock order, so two historians upserting
        // the same hours cannot deadlock. `last` follows `last_ts`, so batches that
        // arrive out of order still leave the newest value.
        let n: i64 = sqlx::query_scalar(
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
               ON CONFLICT (device, metric, hour) DO UPDATE SET
                 min = least(h.min, EXCLUDED.min),
                 max = greatest(h.max, EXCLUDED.max),
                 sum = h.sum + EXCLUDED.sum,
                 count = h.count + EXCLUDED.count,
                 last = CASE WHEN EXCLUDED.last_ts >= h.last_ts THEN EXCLUDED.last ELSE h.last END,
                 last_ts = greatest(h.last_ts, EXCLUDED.last_ts)
             )
             SELECT count(*) FROM ins",
        )
        .bind(&r.device)
        .bind(&r.metric)
        .bind(&r.ts)
        .bind(&r.value)
        .fetch_one(&mut *tx)
        .await?;
        let n = n as u64;
        sqlx::query(
            "INSERT INTO latest_readings (device, metric, ts, value)
             SELECT DISTINCT ON (d, m) d, m, t, v
             FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::float8[]) AS x(d, m, t, v)
             ORDER BY d, m, t DESC
             ON CONFLICT (device, metric) DO UPDATE
               SET ts = EXCLUDED.ts, value = EXCLUDED.value
               WHERE latest_readings.ts <= EXCLUDED.ts",
        )
        .bind(&r.device)
        .bind(&r.metric)
        .bind(&r.ts)
        .bind(&r.value)
        .execute(&mut *tx)
        .await?;
        n
    };

    if !seen.is_empty() {
        let ids: Vec<&str> = seen.iter().map(|s| s.0).collect();
        let ts: Vec<DateTime<Utc>> = seen.iter().map(|s| s.1).collect();
        let kinds: Vec<Option<&str>> = seen.iter().map(|s| s.2).collect();
        sqlx::query(
            "INSERT INTO devices (id, kind, first_seen, last_seen)
             SELECT id, CASE WHEN bool_or(k = 'lamp') THEN 'lamp' ELSE 'sensor' END, min(t), max(t)
             FROM UNNEST($1::text[], $2::timestamptz[], $3::text[]) AS x(id, t, k)
             GROUP BY id
             ON CONFLICT (id) DO UPDATE SET
               last_seen = greatest(devices.last_seen, EXCLUDED.last_seen),
               kind = CASE WHEN EXCLUDED.kind = 'lamp' THEN 'lamp' ELSE devices.kind END",
        )
        .bind(&ids)
        .bind(&ts)
        .bind(&kinds)
        .execute(&mut *tx)
        .await?;
    }

    for (device, at, kind, value) in &events {
        sqlx::query("INSERT INTO lamp_events (device, ts, kind, value) VALUES ($1, $2, $3, $4)")
            .bind(device)
            .bind(at)
            .bind(kind)
            .bind(value)
            .execute(&mut *tx)
            .await?;
    }
    for (device, mode, at) in &modes {
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
    for (device, at, status) in &statuses {
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

#[derive(Default)]
struct Columns {
    device: Vec<String>,
    metric: Vec<String>,
    ts: Vec<DateTime<Utc>>,
    value: Vec<f64>,
}
