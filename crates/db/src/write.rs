//! Batched writes (the historian's side).

use chrono::{DateTime, Utc};
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

    let mut tx = pool.begin().await?;
    let inserted = if r.device.is_empty() {
        0
    } else {
        let n = sqlx::query(
            "INSERT INTO readings (device, metric, ts, value)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::float8[])
             ON CONFLICT DO NOTHING",
        )
        .bind(&r.device)
        .bind(&r.metric)
        .bind(&r.ts)
        .bind(&r.value)
        .execute(&mut *tx)
        .await?
        .rows_affected();
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
