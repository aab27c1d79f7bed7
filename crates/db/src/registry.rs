//! The device registry: the `devices` rows seen as identities (kind, token hash, disabled).
//!
//! Only the HMAC-SHA-256 of a device's token is stored (`token_hash`, see
//! `lentera_auth::token`); a row with a NULL hash is a device the historian created while
//! the platform ran open, which cannot authenticate until it is provisioned. Every change
//! of hash, kind or disabled fires `NOTIFY lentera_registry, '<id>'` (migration 0004), so
//! the doors' in-memory registries reload that row.
//!
//! Every function takes any executor (`&PgPool`, `&mut PgConnection`, a transaction), so
//! a bulk import can run them all in one transaction.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, Row};

/// A registry row as operators see it: everything but the token hash.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RegistryRow {
    pub id: String,
    pub kind: String,
    pub name: Option<String>,
    pub location: Option<String>,
    pub created_at: DateTime<Utc>,
    /// `None` until the device is first heard from.
    pub last_seen: Option<DateTime<Utc>>,
    pub disabled: bool,
    /// True when the device has a token (it can authenticate unless disabled).
    pub provisioned: bool,
    pub token_set_at: Option<DateTime<Utc>>,
}

/// What a door needs to admit a device: a provisioned, not disabled row.
#[derive(Clone, PartialEq, Eq)]
pub struct Provisioned {
    pub id: String,
    pub kind: String,
    /// HMAC-SHA-256 of the token (32 bytes).
    pub token_hash: Vec<u8>,
}

impl std::fmt::Debug for Provisioned {
    // The hash is not the token, but there is no reason to spread it through logs either.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisioned")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Fields of [`update`]; `None` leaves a column as it is.
#[derive(Debug, Clone, Default)]
pub struct DeviceUpdate {
    pub kind: Option<String>,
    pub name: Option<String>,
    pub location: Option<String>,
}

/// What [`add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// A new row, or an unprovisioned one (seen while open) that now has a token.
    Provisioned,
    /// The device already has a token: nothing changed (use [`rotate`]).
    Exists,
}

const ROW_COLUMNS: &str = "id, kind, name, location, created_at, last_seen, disabled, \
     token_hash IS NOT NULL AS provisioned, token_set_at";

fn registry_row(r: &PgRow) -> Result<RegistryRow, sqlx::Error> {
    Ok(RegistryRow {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        name: r.try_get("name")?,
        location: r.try_get("location")?,
        created_at: r.try_get("created_at")?,
        last_seen: r.try_get("last_seen")?,
        disabled: r.try_get("disabled")?,
        provisioned: r.try_get("provisioned")?,
        token_set_at: r.try_get("token_set_at")?,
    })
}

fn provisioned(r: &PgRow) -> Result<Provisioned, sqlx::Error> {
    Ok(Provisioned {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        token_hash: r.try_get("token_hash")?,
    })
}

/// Provisions device `id` with `token_hash`: inserts a new row, or gives a token to an
/// existing unprovisioned row (setting its kind, and name/location when given).
/// A row that already has a token is left alone: [`Added::Exists`].
pub async fn add(
    ex: impl PgExecutor<'_>,
    id: &str,
    kind: &str,
    name: Option<&str>,
    location: Option<&str>,
    token_hash: &[u8],
) -> Result<Added, sqlx::Error> {
    // `first_seen` keeps its default: for a provisioned row it is the creation time.
    let row = sqlx::query(
        "INSERT INTO devices (id, kind, name, location, token_hash, token_set_at, last_seen)
         VALUES ($1, $2, $3, $4, $5, now(), NULL)
         ON CONFLICT (id) DO UPDATE SET
             kind = EXCLUDED.kind,
             name = coalesce(EXCLUDED.name, devices.name),
             location = coalesce(EXCLUDED.location, devices.location),
             token_hash = EXCLUDED.token_hash,
             token_set_at = now()
         WHERE devices.token_hash IS NULL
         RETURNING id",
    )
    .bind(id)
    .bind(kind)
    .bind(name)
    .bind(location)
    .bind(token_hash)
    .fetch_optional(ex)
    .await?;
    Ok(if row.is_some() {
        Added::Provisioned
    } else {
        Added::Exists
    })
}

/// Replaces the token hash of `id` (provisioning it if it had none). False: no such device.
pub async fn rotate(
    ex: impl PgExecutor<'_>,
    id: &str,
    token_hash: &[u8],
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("UPDATE devices SET token_hash = $2, token_set_at = now() WHERE id = $1")
        .bind(id)
        .bind(token_hash)
        .execute(ex)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Disables (`true`) or re-enables a device. False: no such device.
pub async fn set_disabled(
    ex: impl PgExecutor<'_>,
    id: &str,
    disabled: bool,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("UPDATE devices SET disabled = $2 WHERE id = $1")
        .bind(id)
        .bind(disabled)
        .execute(ex)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Changes the given fields of a device. False: no such device.
pub async fn update(
    ex: impl PgExecutor<'_>,
    id: &str,
    u: &DeviceUpdate,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE devices SET kind = coalesce($2, kind), name = coalesce($3, name),
             location = coalesce($4, location)
         WHERE id = $1",
    )
    .bind(id)
    .bind(&u.kind)
    .bind(&u.name)
    .bind(&u.location)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Deletes the device row (its readings stay). False: no such device.
pub async fn remove(ex: impl PgExecutor<'_>, id: &str) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("DELETE FROM devices WHERE id = $1")
        .bind(id)
        .execute(ex)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// One device's registry row.
pub async fn get(ex: impl PgExecutor<'_>, id: &str) -> Result<Option<RegistryRow>, sqlx::Error> {
    sqlx::query(&format!("SELECT {ROW_COLUMNS} FROM devices WHERE id = $1"))
        .bind(id)
        .fetch_optional(ex)
        .await?
        .as_ref()
        .map(registry_row)
        .transpose()
}

/// Every device, by id.
pub async fn list(ex: impl PgExecutor<'_>) -> Result<Vec<RegistryRow>, sqlx::Error> {
    sqlx::query(&format!("SELECT {ROW_COLUMNS} FROM devices ORDER BY id"))
        .fetch_all(ex)
        .await?
        .iter()
        .map(registry_row)
        .collect()
}

/// Every device that may authenticate: provisioned and not disabled.
pub async fn load_all(ex: impl PgExecutor<'_>) -> Result<Vec<Provisioned>, sqlx::Error> {
    sqlx::query(
        "SELECT id, kind, token_hash FROM devices
         WHERE token_hash IS NOT NULL AND NOT disabled",
    )
    .fetch_all(ex)
    .await?
    .iter()
    .map(provisioned)
    .collect()
}

/// Those of `ids` that may authenticate (an id missing from the answer was removed,
/// disabled or never provisioned).
pub async fn load_ids(
    ex: impl PgExecutor<'_>,
    ids: &[String],
) -> Result<Vec<Provisioned>, sqlx::Error> {
    sqlx::query(
        "SELECT id, kind, token_hash FROM devices
         WHERE id = ANY($1) AND token_hash IS NOT NULL AND NOT disabled",
    )
    .bind(ids)
    .fetch_all(ex)
    .await?
    .iter()
    .map(provisioned)
    .collect()
}

/// The enabled device whose token hashes to `token_hash` (an index lookup: the column
/// is UNIQUE).
pub async fn find_by_hash(
    ex: impl PgExecutor<'_>,
    token_hash: &[u8],
) -> Result<Option<Provisioned>, sqlx::Error> {
    sqlx::query("SELECT id, kind, token_hash FROM devices WHERE token_hash = $1 AND NOT disabled")
        .bind(token_hash)
        .fetch_optional(ex)
        .await?
        .as_ref()
        .map(provisioned)
        .transpose()
}
