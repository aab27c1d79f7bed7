//! Batched writes (the historian's side).
//!
//! A batch of [`Record`]s is written in one transaction by [`store_all_within`]; the
//! rooms: `readings` (reading rows and their hourly rollup: `COPY` fast path, upsert
//! path with corrections), `devices` (newest values, device rows, lamp events and
//! modes, statuses), `rejected` (dead letters), `partitions` (month partitions of
//! `readings`, created outside the transaction).
//!
//! A reading's identity is `(device, metric, ts)`:
//! - the same key with the same value is a **retry** (a redelivery after a crash, a board
//!   resending) and is stored once;
//! - the same key with another value is a **correction**: the later value replaces the
//!   stored one, the rollup follows, and it is counted in [`Stored::replaced`].
//!
//! A batch PostgreSQL refuses for a reason retrying cannot fix ([`is_permanent`]: a
//! constraint, a value it will not take) is for the caller to take apart; an outage is
//! for it to retry.

mod devices;
mod partitions;
mod readings;
mod rejected;

use chrono::{DateTime, Utc};
use lentera_protocol::{DeviceStatus, LampCommand, LampMode, Reading};
use sqlx::PgPool;

pub use partitions::{drop_partitions_before, ensure_partitions};
pub use rejected::Rejected;

use devices::DeviceWrites;
use readings::{Rows, Written};

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
    /// A message that can never be stored as what it claims to be: kept as a dead letter.
    Rejected(Rejected),
}

/// What a committed batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// Reading rows inserted (retries excluded).
    pub inserted: u64,
    /// Stored readings whose value a later one with the same key replaced, and keys
    /// that came twice in the batch with different values.
    pub replaced: u64,
    /// Dead letters written.
    pub rejected: u64,
}

/// Writes a batch in one transaction; see the module docs.
pub async fn store(pool: &PgPool, batch: &[Record]) -> Result<Stored, sqlx::Error> {
    store_all(pool, batch).await
}

/// [`store`] over borrowed records, so a caller holding them elsewhere need not clone.
pub async fn store_all<'a>(
    pool: &PgPool,
    batch: impl IntoIterator<Item = &'a Record>,
) -> Result<Stored, sqlx::Error> {
    store_all_within(pool, batch, None).await
}

/// [`store_all`] with every statement of the write transaction limited to
/// `statement_timeout` (PostgreSQL's `SET LOCAL statement_timeout`, which counts time
/// spent waiting for locks too): a write stuck behind a lock or a stalled server fails
/// with SQLSTATE 57014 and rolls back instead of hanging, so the caller can say so and
/// retry. `None` waits as long as PostgreSQL takes.
///
/// Readings are `COPY`ed when none of their keys is stored yet; a stored key fails the
/// `COPY` (SQLSTATE 23505), the transaction rolls back, and the batch is written again by
/// the upsert path. Duplicates are rare, so nearly every batch takes the fast path, and
/// either way the batch commits exactly once or not at all.
pub async fn store_all_within<'a>(
    pool: &PgPool,
    batch: impl IntoIterator<Item = &'a Record>,
    statement_timeout: Option<std::time::Duration>,
) -> Result<Stored, sqlx::Error> {
    let prepared = Prepared::new(batch);
    let db = partitions::db_key(pool);
    if !prepared.rows.is_empty() {
        // Outside the transaction: creating a partition locks the parent table, and
        // holding that lock for the whole batch would stall history reads.
        partitions::ensure_cached(pool, &db, &prepared.months).await?;
    }
    let mut path = Path::Copy;
    let mut repartitioned = false;
    loop {
        match write_batch(pool, &prepared, path, statement_timeout).await {
            Err(e) if path == Path::Copy && sqlstate(&e).as_deref() == Some(UNIQUE_VIOLATION) => {
                tracing::debug!("batch holds readings already stored; writing it by upsert");
                path = Path::Upsert;
            }
            // A month partition this process created was dropped behind its back (by
            // retention in another process, or by hand): forget and re-create, once.
            // (A check constraint refusing a value is 23514 too: it fails again below.)
            Err(e) if !repartitioned && sqlstate(&e).as_deref() == Some(CHECK_VIOLATION) => {
                repartitioned = true;
                partitions::forget(&db);
                partitions::ensure_cached(pool, &db, &prepared.months).await?;
            }
            Err(e) => return Err(e),
            Ok(w) => {
                return Ok(Stored {
                    inserted: w.inserted,
                    replaced: w.replaced + prepared.rows.replaced,
                    rejected: prepared.rejected.len() as u64,
                });
            }
        }
    }
}

const UNIQUE_VIOLATION: &str = "23505";
/// A check constraint, and also "no partition of relation … found for row".
const CHECK_VIOLATION: &str = "23514";

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

/// True when PostgreSQL refused the batch for what is in it, so the same batch would be
/// refused again however often it is retried: SQLSTATE class 22 (data exception: a value
/// out of range, an invalid byte sequence, …) and 23 (integrity constraint violation).
/// Everything else — no connection, a timeout, a lock, the server shutting down, out of
/// disk — is an outage, and retrying is right.
pub fn is_permanent(e: &sqlx::Error) -> bool {
    sqlstate(e).is_some_and(|c| c.starts_with("22") || c.starts_with("23"))
}

/// The error as a dead letter records it: SQLSTATE and PostgreSQL's message.
pub fn describe(e: &sqlx::Error) -> String {
    match e.as_database_error() {
        Some(d) => format!(
            "PostgreSQL refused it: {} (SQLSTATE {})",
            d.message(),
            d.code().unwrap_or_default()
        ),
        None => e.to_string(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Copy,
    Upsert,
}

/// A batch taken apart into what each statement needs, computed once (a retry reuses it).
#[derive(Default)]
struct Prepared<'a> {
    rows: Rows<'a>,
    months: Vec<DateTime<Utc>>,
    devices: DeviceWrites<'a>,
    rejected: Vec<&'a Rejected>,
}

impl<'a> Prepared<'a> {
    fn new(batch: impl IntoIterator<Item = &'a Record>) -> Self {
        let mut p = Prepared::default();
        for rec in batch {
            match rec {
                Record::Reading(reading) => {
                    let device = reading.device.as_str();
                    p.rows.push(reading);
                    for (metric, value) in &reading.metrics {
                        p.devices.value(device, metric, reading.ts, *value);
                    }
                    if let Some(m) = partitions::month_of(reading.ts)
                        && !p.months.contains(&m)
                    {
                        p.months.push(m);
                    }
                    p.devices.seen(device, reading.ts, false);
                }
                Record::LampCommand {
                    device,
                    at,
                    command,
                } => {
                    p.devices
                        .events
                        .push((device, *at, "command", command.as_str().into()));
                    p.devices.seen(device, *at, true);
                }
                Record::LampState { device, at, state } => {
                    p.devices
                        .events
                        .push((device, *at, "state", state.as_str().into()));
                    p.devices.seen(device, *at, true);
                }
                Record::LampMode { device, at, mode } => {
                    p.devices.events.push((
                        device,
                        *at,
                        "mode",
                        String::from_utf8_lossy(&mode.to_payload()).into_owned(),
                    ));
                    p.devices.modes.push((device, mode, *at));
                    p.devices.seen(device, *at, true);
                }
                Record::Status { device, at, status } => {
                    p.devices.statuses.push((device, *at, status.as_str()));
                }
                Record::Rejected(r) => p.rejected.push(r),
            }
        }
        p
    }
}

async fn write_batch(
    pool: &PgPool,
    p: &Prepared<'_>,
    path: Path,
    statement_timeout: Option<std::time::Duration>,
) -> Result<Written, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if let Some(t) = statement_timeout {
        // SET takes no bind parameters; the value is a number we format ourselves.
        let ms = t.as_millis().clamp(1, i32::MAX as u128);
        sqlx::query(&format!("SET LOCAL statement_timeout = {ms}"))
            .execute(&mut *tx)
            .await?;
    }
    let written = if p.rows.is_empty() {
        Written::default()
    } else if path == Path::Copy {
        readings::copy(&mut tx, &p.rows).await?
    } else {
        readings::upsert(&mut tx, &p.rows).await?
    };
    p.devices.write(&mut tx).await?;
    rejected::write(&mut tx, &p.rejected).await?;
    tx.commit().await?;
    Ok(written)
}
