//! Administration shared by the `lentera` CLI and web: provisioning devices, operator
//! accounts and their tokens. Every new secret is generated here and returned once;
//! only its hash reaches the database (the SQL is in `lentera_db::{registry, operators}`).
//! The doors learn of device changes by the registry's notification, not from here.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use lentera_db::operators::{self, TokenOwner};
use lentera_db::registry::{self, Added, DeviceUpdate, RegistryRow};
use sqlx::PgPool;

use crate::{Kind, password, token};

/// A device to provision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDevice {
    pub id: String,
    pub kind: Kind,
    pub name: Option<String>,
    pub location: Option<String>,
}

/// Changes to a device; `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceChanges {
    pub kind: Option<Kind>,
    pub name: Option<String>,
    pub location: Option<String>,
}

/// Why an administrative action failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The device (or operator) already exists with credentials: rotate instead.
    #[error("already exists")]
    Exists,
    #[error("not found")]
    NotFound,
    /// A field that the schema would refuse, said in words.
    #[error("{0}")]
    Invalid(String),
    /// Entry `index` (from 0) of a bulk import failed: nothing was imported.
    #[error("entry {index}: {error}")]
    AtEntry {
        index: usize,
        error: Box<AdminError>,
    },
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// Longest name or location (the schema's CHECK).
pub const MAX_TEXT: usize = 200;

fn check_text(what: &str, v: &Option<String>) -> Result<(), AdminError> {
    match v {
        Some(s) if s.chars().count() > MAX_TEXT => Err(AdminError::Invalid(format!(
            "{what} is longer than {MAX_TEXT} characters"
        ))),
        Some(s) if s.chars().any(char::is_control) => Err(AdminError::Invalid(format!(
            "{what} contains control characters"
        ))),
        _ => Ok(()),
    }
}

fn check_device(d: &NewDevice) -> Result<(), AdminError> {
    if !lentera_protocol::device::is_valid(&d.id) {
        return Err(AdminError::Invalid(format!(
            "device id {:?}: must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'",
            d.id
        )));
    }
    check_text("name", &d.name)?;
    check_text("location", &d.location)
}

/// Provisions a device and returns its token (shown once, never stored). An existing
/// row without a token (seen while the platform ran open) gets one; a provisioned one
/// is [`AdminError::Exists`].
pub async fn add_device(pool: &PgPool, d: NewDevice) -> Result<String, AdminError> {
    check_device(&d)?;
    let t = token::generate();
    match registry::add(
        pool,
        &d.id,
        d.kind.as_str(),
        d.name.as_deref(),
        d.location.as_deref(),
        &token::hash(&t),
    )
    .await?
    {
        Added::Provisioned => Ok(t),
        Added::Exists => Err(AdminError::Exists),
    }
}

/// Provisions all of `devices` in one transaction, or none: returns `(id, token)` in
/// order, or the first failure as [`AdminError::AtEntry`].
pub async fn add_devices(
    pool: &PgPool,
    devices: Vec<NewDevice>,
) -> Result<Vec<(String, String)>, AdminError> {
    let at = |index: usize| {
        move |error: AdminError| AdminError::AtEntry {
            index,
            error: Box::new(error),
        }
    };
    for (i, d) in devices.iter().enumerate() {
        check_device(d).map_err(at(i))?;
    }
    let mut tx = pool.begin().await?;
    let mut out = Vec::with_capacity(devices.len());
    for (i, d) in devices.into_iter().enumerate() {
        let t = token::generate();
        let added = registry::add(
            &mut *tx,
            &d.id,
            d.kind.as_str(),
            d.name.as_deref(),
            d.location.as_deref(),
            &token::hash(&t),
        )
        .await
        .map_err(|e| at(i)(e.into()))?;
        if added == Added::Exists {
            return Err(at(i)(AdminError::Exists));
        }
        out.push((d.id, t));
    }
    tx.commit().await?;
    Ok(out)
}

/// Gives device `id` a new token (the old one stops working at once) and returns it.
pub async fn rotate(pool: &PgPool, id: &str) -> Result<String, AdminError> {
    let t = token::generate();
    if registry::rotate(pool, id, &token::hash(&t)).await? {
        Ok(t)
    } else {
        Err(AdminError::NotFound)
    }
}

/// Disables (`true`) or re-enables a device; disabling cuts its live connections.
pub async fn set_disabled(pool: &PgPool, id: &str, disabled: bool) -> Result<(), AdminError> {
    found(registry::set_disabled(pool, id, disabled).await?)
}

/// Changes a device's kind, name or location.
pub async fn update(pool: &PgPool, id: &str, c: DeviceChanges) -> Result<(), AdminError> {
    check_text("name", &c.name)?;
    check_text("location", &c.location)?;
    let u = DeviceUpdate {
        kind: c.kind.map(|k| k.as_str().to_owned()),
        name: c.name,
        location: c.location,
    };
    found(registry::update(pool, id, &u).await?)
}

/// Deletes a device (its readings stay); cuts its live connections.
pub async fn remove(pool: &PgPool, id: &str) -> Result<(), AdminError> {
    found(registry::remove(pool, id).await?)
}

/// Every device, by id (no hashes).
pub async fn list(pool: &PgPool) -> Result<Vec<RegistryRow>, AdminError> {
    Ok(registry::list(pool).await?)
}

/// One device (no hash).
pub async fn get(pool: &PgPool, id: &str) -> Result<RegistryRow, AdminError> {
    registry::get(pool, id).await?.ok_or(AdminError::NotFound)
}

fn found(ok: bool) -> Result<(), AdminError> {
    if ok {
        Ok(())
    } else {
        Err(AdminError::NotFound)
    }
}

/// An operator's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// May read (history, device lists, `/ws`).
    Viewer,
    /// May also switch lamps and administer devices.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

impl FromStr for Role {
    type Err = AdminError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            _ => Err(AdminError::Invalid(format!(
                "unknown role {s:?} (expected operator or viewer)"
            ))),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn check_operator_name(name: &str) -> Result<(), AdminError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.@-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(AdminError::Invalid(format!(
            "operator name {name:?}: must be 1-64 characters of A-Z, a-z, 0-9, '_', '.', '@' or '-'"
        )))
    }
}

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 8;

fn check_password(p: &str) -> Result<(), AdminError> {
    if p.chars().count() < MIN_PASSWORD_LEN {
        return Err(AdminError::Invalid(format!(
            "password is shorter than {MIN_PASSWORD_LEN} characters"
        )));
    }
    Ok(())
}

async fn hash_password(p: &str) -> String {
    let p = p.to_owned();
    tokio::task::spawn_blocking(move || password::hash(&p))
        .await
        .expect("password hashing does not panic")
}

/// Creates an operator account with `password` (hashed on a blocking thread).
pub async fn add_operator(
    pool: &PgPool,
    name: &str,
    role: Role,
    password: &str,
) -> Result<(), AdminError> {
    check_operator_name(name)?;
    check_password(password)?;
    let h = hash_password(password).await;
    if operators::add(pool, name, role.as_str(), &h).await? {
        Ok(())
    } else {
        Err(AdminError::Exists)
    }
}

/// Replaces an operator's password.
pub async fn set_password(pool: &PgPool, name: &str, password: &str) -> Result<(), AdminError> {
    check_password(password)?;
    let h = hash_password(password).await;
    found(operators::set_password(pool, name, &h).await?)
}

/// The operator named `name` when `password` is theirs and they are not disabled
/// (`None` otherwise: one answer for unknown name and wrong password). A password is
/// verified even for an unknown name, so timing does not tell which names exist.
pub async fn login(
    pool: &PgPool,
    name: &str,
    password: &str,
) -> Result<Option<(String, Role)>, AdminError> {
    let row = operators::get(pool, name).await?;
    let stored = row
        .as_ref()
        .map(|r| r.password_hash.clone())
        .unwrap_or_else(|| DUMMY_HASH.clone());
    let pw = password.as_bytes().to_vec();
    let ok = tokio::task::spawn_blocking(move || password::verify(&pw, &stored))
        .await
        .expect("password verification does not panic");
    Ok(match row {
        Some(r) if ok && !r.disabled => Some((r.name, r.role.parse()?)),
        _ => None,
    })
}

/// A hash of a random password nobody knows, verified for unknown names (same cost as
/// a real one).
static DUMMY_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| password::hash(&token::generate()));

/// A new bearer API token for `operator` (returned once). Unknown operator: NotFound.
pub async fn new_api_token(
    pool: &PgPool,
    operator: &str,
    label: Option<&str>,
) -> Result<String, AdminError> {
    new_token(pool, operator, "api", label, None).await
}

/// A new dashboard session for `operator`, valid until `expires_at` (the cookie value).
pub async fn new_session(
    pool: &PgPool,
    operator: &str,
    expires_at: DateTime<Utc>,
) -> Result<String, AdminError> {
    new_token(pool, operator, "session", None, Some(expires_at)).await
}

async fn new_token(
    pool: &PgPool,
    operator: &str,
    kind: &str,
    label: Option<&str>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<String, AdminError> {
    check_text("label", &label.map(str::to_owned))?;
    if operators::get(pool, operator).await?.is_none() {
        return Err(AdminError::NotFound);
    }
    let t = token::generate();
    operators::insert_token(pool, &token::hash(&t), operator, kind, label, expires_at).await?;
    Ok(t)
}

/// Who `token` (an API token or a session cookie) belongs to, if it is valid.
pub async fn find_token(pool: &PgPool, token: &str) -> Result<Option<TokenOwner>, AdminError> {
    if !token::looks_like_token(token) {
        return Ok(None);
    }
    Ok(operators::find_token(pool, &token::hash(token)).await?)
}

/// Revokes one token (logout).
pub async fn revoke_token(pool: &PgPool, token: &str) -> Result<bool, AdminError> {
    Ok(operators::delete_token(pool, &token::hash(token)).await?)
}
