//! Dead letters: messages refused after their sender was answered, kept with their reason.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

/// One refused message, as `rejected_readings` keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// The device named by the topic or body, as sent.
    pub device: String,
    pub at: DateTime<Utc>,
    /// Stable code: a reading error code, or `storage_refused`.
    pub reason: String,
    pub detail: String,
    /// `mqtt`, `broker`, `http`, `tcp`.
    pub source: String,
    pub topic: String,
    /// The raw payload, whole.
    pub payload: Vec<u8>,
}

/// Text as PostgreSQL's `text` takes it: a NUL byte is refused (SQLSTATE 22021), and a
/// dead letter must never be refused itself.
fn pg_text(s: &str) -> String {
    s.replace('\0', "\u{fffd}")
}

pub(crate) async fn write(
    tx: &mut Transaction<'_, Postgres>,
    rejected: &[&Rejected],
) -> Result<(), sqlx::Error> {
    if rejected.is_empty() {
        return Ok(());
    }
    let mut cols = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for r in rejected {
        cols.0.push(pg_text(&r.device));
        cols.1.push(r.at);
        cols.2.push(pg_text(&r.reason));
        cols.3.push(pg_text(&r.detail));
        cols.4.push(pg_text(&r.source));
        cols.5.push(pg_text(&r.topic));
        cols.6.push(r.payload.clone());
    }
    sqlx::query(
        "INSERT INTO rejected_readings (device, received_at, reason, detail, source, topic, payload)
         SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[],
                              $6::text[], $7::bytea[])",
    )
    .bind(&cols.0)
    .bind(&cols.1)
    .bind(&cols.2)
    .bind(&cols.3)
    .bind(&cols.4)
    .bind(&cols.5)
    .bind(&cols.6)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
