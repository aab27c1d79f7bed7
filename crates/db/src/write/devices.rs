//! What a batch says about devices: newest value per series, device rows, lamp events
//! and modes, retained statuses.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use lentera_protocol::LampMode;
use sqlx::{Postgres, Transaction};

/// The device side of a batch, gathered once.
#[derive(Default)]
pub(crate) struct DeviceWrites<'a> {
    /// Newest row per series.
    pub latest: HashMap<(&'a str, &'a str), (DateTime<Utc>, f64)>,
    /// Device → (first, last seen, is a lamp).
    pub devices: HashMap<&'a str, (DateTime<Utc>, DateTime<Utc>, bool)>,
    pub events: Vec<(&'a str, DateTime<Utc>, &'static str, String)>,
    pub modes: Vec<(&'a str, &'a LampMode, DateTime<Utc>)>,
    pub statuses: Vec<(&'a str, DateTime<Utc>, &'static str)>,
}

impl<'a> DeviceWrites<'a> {
    pub fn value(&mut self, device: &'a str, metric: &'a str, ts: DateTime<Utc>, value: f64) {
        let latest = self.latest.entry((device, metric)).or_insert((ts, value));
        if ts >= latest.0 {
            *latest = (ts, value);
        }
    }

    pub fn seen(&mut self, device: &'a str, t: DateTime<Utc>, lamp: bool) {
        let e = self.devices.entry(device).or_insert((t, t, lamp));
        e.0 = e.0.min(t);
        e.1 = e.1.max(t);
        e.2 |= lamp;
    }

    pub async fn write(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        if !self.latest.is_empty() {
            let mut cols = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for ((device, metric), (ts, value)) in &self.latest {
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
            .execute(&mut **tx)
            .await?;
        }

        if !self.devices.is_empty() {
            let mut cols = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (id, (first, last, lamp)) in &self.devices {
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
            .execute(&mut **tx)
            .await?;
        }

        for (device, at, kind, value) in &self.events {
            sqlx::query(
                "INSERT INTO lamp_events (device, ts, kind, value) VALUES ($1, $2, $3, $4)",
            )
            .bind(device)
            .bind(at)
            .bind(kind)
            .bind(value)
            .execute(&mut **tx)
            .await?;
        }
        for (device, mode, at) in &self.modes {
            sqlx::query(
                "INSERT INTO lamp_modes (device, mode, until, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (device) DO UPDATE SET mode = EXCLUDED.mode, until = EXCLUDED.until,
                   updated_at = EXCLUDED.updated_at",
            )
            .bind(device)
            .bind(mode.mode.as_str())
            .bind(mode.until)
            .bind(at)
            .execute(&mut **tx)
            .await?;
        }
        for (device, at, status) in &self.statuses {
            sqlx::query(
                "INSERT INTO devices (id, status, first_seen, last_seen) VALUES ($1, $2, $3, $3)
                 ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status",
            )
            .bind(device)
            .bind(status)
            .bind(at)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }
}
