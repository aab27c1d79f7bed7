//! The dead letters (`rejected_readings`): read by web, trimmed by the historian.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};

/// One dead letter, newest first in listings.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub reason: String,
    pub detail: String,
    pub source: String,
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Up to `limit` dead letters of `device`, newest first, older than id `before` if given.
pub async fn list(
    pool: &PgPool,
    device: &str,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<RejectedRow>, sqlx::Error> {
    sqlx::query(
        "SELECT id, received_at, reason, detail, source, topic, payload
         FROM rejected_readings
         WHERE device = $1 AND ($2::int8 IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3",
    )
    .bind(device)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        Ok(RejectedRow {
            id: r.try_get("id")?,
            at: r.try_get("received_at")?,
            reason: r.try_get("reason")?,
            detail: r.try_get("detail")?,
            source: r.try_get("source")?,
            topic: r.try_get("topic")?,
            payload: r.try_get("payload")?,
        })
    })
    .collect()
}

/// Deletes dead letters received before `cutoff`; returns how many.
pub async fn delete_before(pool: &PgPool, cutoff: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM rejected_readings WHERE received_at < $1")
            .bind(cutoff)
            .execute(pool)
            .await?
            .rows_affected(),
    )
}
