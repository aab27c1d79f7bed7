//! Partition upkeep: months created ahead, old months dropped by retention, old dead
//! letters deleted.
//!
//! Runs once right after the schema is ready and then every `maintenance_interval_secs`.
//! Creating ahead is an optimisation (the write path also creates a missing month
//! before inserting, so a reading never fails for want of a partition); retention is the
//! only thing that deletes readings, and it does so a whole month at a time — a month is
//! dropped once *all* of it is older than `retention_days`. Several historians may run
//! this concurrently: both statements are idempotent.

use std::time::Duration;

use chrono::{DateTime, Months, Utc};
use lentera_bootstrap::Counter;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::consume::stopped;
use crate::settings::HistorianSettings;

/// One round: ensure `ahead` months after `now`'s, drop what retention allows.
/// Returns the dropped partitions.
pub async fn run_once(
    pool: &PgPool,
    cfg: &HistorianSettings,
    now: DateTime<Utc>,
) -> Result<Vec<String>, sqlx::Error> {
    let months: Vec<DateTime<Utc>> = (0..=cfg.partitions_ahead_months)
        .filter_map(|m| now.checked_add_months(Months::new(m)))
        .collect();
    lentera_db::write::ensure_partitions(pool, &months).await?;
    if let Some(cutoff) = retention_cutoff(cfg.rejected_retention_days, now) {
        let n = lentera_db::rejected::delete_before(pool, cutoff).await?;
        if n > 0 {
            tracing::info!(
                deleted = n,
                days = cfg.rejected_retention_days,
                "old dead letters deleted"
            );
        }
    }
    match retention_cutoff(cfg.retention_days, now) {
        Some(cutoff) => lentera_db::write::drop_partitions_before(pool, cutoff).await,
        None => Ok(Vec::new()),
    }
}

/// The instant before which readings may go; `None` keeps everything (0 days).
pub fn retention_cutoff(retention_days: u32, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    (retention_days > 0)
        .then(|| now.checked_sub_signed(chrono::Duration::days(i64::from(retention_days))))
        .flatten()
}

/// Repeats [`run_once`] until `stop`; failures are logged and retried next round.
pub async fn run(
    pool: PgPool,
    cfg: HistorianSettings,
    dropped: Counter,
    mut stop: watch::Receiver<bool>,
) {
    let every = Duration::from_secs(cfg.maintenance_interval_secs.max(1));
    loop {
        match run_once(&pool, &cfg, Utc::now()).await {
            Ok(parts) => {
                for p in &parts {
                    tracing::info!(partition = %p, retention_days = cfg.retention_days, "dropped by retention");
                }
                dropped.add(parts.len() as u64);
            }
            Err(e) => {
                tracing::warn!(error = %e, "partition maintenance failed; retrying next round")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn zero_days_keeps_everything() {
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap();
        assert_eq!(retention_cutoff(0, now), None);
        assert_eq!(
            retention_cutoff(730, now),
            Some(Utc.with_ymd_and_hms(2024, 11, 22, 0, 0, 0).unwrap())
        );
    }
}
