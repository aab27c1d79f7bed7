//! Month partitions of `readings`: created before a batch needs them, dropped by retention.

use std::sync::Mutex;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use sqlx::PgPool;

/// Creates the month partitions that `instants` fall into, if missing; returns how many
/// were created. Idempotent and safe under concurrent historians.
pub async fn ensure_partitions(
    pool: &PgPool,
    instants: &[DateTime<Utc>],
) -> Result<i32, sqlx::Error> {
    let mut months: Vec<DateTime<Utc>> = instants.iter().filter_map(|t| month_of(*t)).collect();
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
    forget(&db_key(pool));
    dropped
}

/// The first instant of `t`'s UTC month.
pub(crate) fn month_of(t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    Utc.with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0)
        .single()
}

/// Month partitions this process has made sure of, per database: `ensure_partitions` is
/// a round trip per batch otherwise, and months change rarely.
static ENSURED: Mutex<Vec<(String, DateTime<Utc>)>> = Mutex::new(Vec::new());

pub(crate) fn db_key(pool: &PgPool) -> String {
    let o = pool.connect_options();
    format!(
        "{}:{}/{}",
        o.get_host(),
        o.get_port(),
        o.get_database().unwrap_or_default()
    )
}

/// [`ensure_partitions`] for the months this process has not ensured yet.
pub(crate) async fn ensure_cached(
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

/// Forgets what was ensured for `db` (a partition was dropped behind this process's back).
pub(crate) fn forget(db: &str) {
    ENSURED.lock().unwrap().retain(|(d, _)| d != db);
}
