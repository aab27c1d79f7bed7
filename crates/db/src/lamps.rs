//! Lamps: their mode, last reported state and event log.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};

#[derive(Debug, Clone, Serialize)]
pub struct Lamp {
    pub device: String,
    pub mode: String,
    pub until: Option<DateTime<Utc>>,
    /// What the board last reported driving (`lamp/state`).
    pub state: Option<String>,
    /// What the controller or an operator last commanded (`lamp/set`).
    pub command: Option<String>,
    pub status: Option<String>,
    /// `None` for a lamp provisioned but never heard from.
    pub last_seen: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub ts: DateTime<Utc>,
    pub kind: String,
    pub value: String,
}

/// Every device known to be a lamp.
pub async fn list(pool: &PgPool) -> Result<Vec<Lamp>, sqlx::Error> {
    sqlx::query(
        "SELECT d.id, coalesce(m.mode, 'auto') AS mode, m.until, d.status, d.last_seen,
            (SELECT value FROM lamp_events e WHERE e.device = d.id AND e.kind = 'state'
              ORDER BY ts DESC, id DESC LIMIT 1) AS state,
            (SELECT value FROM lamp_events e WHERE e.device = d.id AND e.kind = 'command'
              ORDER BY ts DESC, id DESC LIMIT 1) AS command
         FROM devices d LEFT JOIN lamp_modes m ON m.device = d.id
         WHERE d.kind = 'lamp' ORDER BY d.id",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        Ok(Lamp {
            device: r.try_get("id")?,
            mode: r.try_get("mode")?,
            until: r.try_get("until")?,
            state: r.try_get("state")?,
            command: r.try_get("command")?,
            status: r.try_get("status")?,
            last_seen: r.try_get("last_seen")?,
        })
    })
    .collect()
}

/// A lamp's events, newest first.
pub async fn events(pool: &PgPool, device: &str, limit: i64) -> Result<Vec<Event>, sqlx::Error> {
    sqlx::query("SELECT ts, kind, value FROM lamp_events WHERE device = $1 ORDER BY ts DESC, id DESC LIMIT $2")
        .bind(device)
        .bind(limit)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            Ok(Event {
                ts: r.try_get("ts")?,
                kind: r.try_get("kind")?,
                value: r.try_get("value")?,
            })
        })
        .collect()
}
