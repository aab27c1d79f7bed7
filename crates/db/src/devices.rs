//! The device list with each device's latest values.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};

#[derive(Debug, Clone, Serialize)]
pub struct Latest {
    pub value: f64,
    pub ts: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Device {
    pub id: String,
    pub kind: String,
    pub status: Option<String>,
    pub first_seen: DateTime<Utc>,
    /// `None` for a device provisioned (`lentera devices add`) but never heard from.
    pub last_seen: Option<DateTime<Utc>>,
    pub latest: BTreeMap<String, Latest>,
}

/// Every known device, newest activity first (never-seen devices last).
pub async fn list(pool: &PgPool) -> Result<Vec<Device>, sqlx::Error> {
    let mut devices: Vec<Device> = sqlx::query(
        "SELECT id, kind, status, first_seen, last_seen FROM devices ORDER BY last_seen DESC NULLS LAST, id",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        Ok(Device {
            id: r.try_get("id")?,
            kind: r.try_get("kind")?,
            status: r.try_get("status")?,
            first_seen: r.try_get("first_seen")?,
            last_seen: r.try_get("last_seen")?,
            latest: BTreeMap::new(),
        })
    })
    .collect::<Result<_, sqlx::Error>>()?;
    let latest = sqlx::query("SELECT device, metric, ts, value FROM latest_readings")
        .fetch_all(pool)
        .await?;
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    for (i, d) in devices.iter().enumerate() {
        by_id.insert(d.id.clone(), i);
    }
    for r in &latest {
        let device: String = r.try_get("device")?;
        if let Some(&i) = by_id.get(&device) {
            devices[i].latest.insert(
                r.try_get("metric")?,
                Latest {
                    value: r.try_get("value")?,
                    ts: r.try_get("ts")?,
                },
            );
        }
    }
    Ok(devices)
}

/// True when the device has ever been seen.
pub async fn exists(pool: &PgPool, id: &str) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("SELECT 1 FROM devices WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .is_some())
}
