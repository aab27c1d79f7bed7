//! Operator accounts and their tokens (bearer API tokens and dashboard sessions).
//!
//! Passwords are stored as `$7$` PBKDF2 hashes (`lentera_auth::password`), tokens as
//! their HMAC-SHA-256 (`lentera_auth::token::hash`): the database never holds a secret
//! that would let its reader log in. Roles are `operator` (may switch lamps and
//! administer devices) and `viewer` (may read).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, Row};

/// An operator with the password hash, for logging in.
#[derive(Clone)]
pub struct OperatorRow {
    pub name: String,
    /// `operator` or `viewer`.
    pub role: String,
    /// `$7$…` PBKDF2 hash.
    pub password_hash: String,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for OperatorRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorRow")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

/// An operator as listed (no hash).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Operator {
    pub name: String,
    pub role: String,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
}

/// Who a valid token belongs to ([`find_token`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenOwner {
    pub operator: String,
    /// The operator's role: `operator` or `viewer`.
    pub role: String,
    /// The token's kind: `api` or `session`.
    pub kind: String,
}

/// A token as listed (no hash).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TokenInfo {
    pub operator: String,
    pub kind: String,
    pub label: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used: Option<DateTime<Utc>>,
}

/// Creates an operator. False: the name is taken (nothing changed).
pub async fn add(
    ex: impl PgExecutor<'_>,
    name: &str,
    role: &str,
    password_hash: &str,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "INSERT INTO operators (name, role, password_hash) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(role)
    .bind(password_hash)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// One operator with its password hash (disabled ones too: the caller refuses them).
pub async fn get(ex: impl PgExecutor<'_>, name: &str) -> Result<Option<OperatorRow>, sqlx::Error> {
    sqlx::query(
        "SELECT name, role, password_hash, disabled, created_at FROM operators WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(ex)
    .await?
    .map(|r| {
        Ok(OperatorRow {
            name: r.try_get("name")?,
            role: r.try_get("role")?,
            password_hash: r.try_get("password_hash")?,
            disabled: r.try_get("disabled")?,
            created_at: r.try_get("created_at")?,
        })
    })
    .transpose()
}

/// Every operator, by name.
pub async fn list(ex: impl PgExecutor<'_>) -> Result<Vec<Operator>, sqlx::Error> {
    sqlx::query("SELECT name, role, disabled, created_at FROM operators ORDER BY name")
        .fetch_all(ex)
        .await?
        .iter()
        .map(|r| {
            Ok(Operator {
                name: r.try_get("name")?,
                role: r.try_get("role")?,
                disabled: r.try_get("disabled")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect()
}

/// Replaces the password hash. False: no such operator.
pub async fn set_password(
    ex: impl PgExecutor<'_>,
    name: &str,
    password_hash: &str,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("UPDATE operators SET password_hash = $2 WHERE name = $1")
        .bind(name)
        .bind(password_hash)
        .execute(ex)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Changes the role (`operator` or `viewer`). False: no such operator.
pub async fn set_role(
    ex: impl PgExecutor<'_>,
    name: &str,
    role: &str,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("UPDATE operators SET role = $2 WHERE name = $1")
        .bind(name)
        .bind(role)
        .execute(ex)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Disables or re-enables an operator; a disabled operator's tokens stop working at once
/// ([`find_token`] skips them) without being deleted. False: no such operator.
pub async fn set_disabled(
    ex: impl PgExecutor<'_>,
    name: &str,
    disabled: bool,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("UPDATE operators SET disabled = $2 WHERE name = $1")
        .bind(name)
        .bind(disabled)
        .execute(ex)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Deletes an operator and (cascade) all its tokens. False: no such operator.
pub async fn remove(ex: impl PgExecutor<'_>, name: &str) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("DELETE FROM operators WHERE name = $1")
        .bind(name)
        .execute(ex)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Stores a token hash for `operator`; `kind` is `api` or `session`; `expires_at` None =
/// until revoked. Fails on an unknown operator (foreign key).
pub async fn insert_token(
    ex: impl PgExecutor<'_>,
    hash: &[u8],
    operator: &str,
    kind: &str,
    label: Option<&str>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO operator_tokens (hash, operator, kind, label, expires_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(hash)
    .bind(operator)
    .bind(kind)
    .bind(label)
    .bind(expires_at)
    .execute(ex)
    .await?;
    Ok(())
}

/// The owner of a valid token: not expired, operator not disabled. Records `last_used`,
/// at most once a minute per token (so a busy script does not write on every request).
pub async fn find_token<'c, E>(ex: E, hash: &[u8]) -> Result<Option<TokenOwner>, sqlx::Error>
where
    E: PgExecutor<'c> + Copy,
{
    let Some(r) = sqlx::query(
        "SELECT t.operator, o.role, t.kind,
                (t.last_used IS NULL OR t.last_used < now() - interval '1 minute') AS stale
         FROM operator_tokens t JOIN operators o ON o.name = t.operator
         WHERE t.hash = $1 AND NOT o.disabled
           AND (t.expires_at IS NULL OR t.expires_at > now())",
    )
    .bind(hash)
    .fetch_optional(ex)
    .await?
    else {
        return Ok(None);
    };
    let owner = TokenOwner {
        operator: r.try_get("operator")?,
        role: r.try_get("role")?,
        kind: r.try_get("kind")?,
    };
    if r.try_get::<bool, _>("stale")? {
        sqlx::query("UPDATE operator_tokens SET last_used = now() WHERE hash = $1")
            .bind(hash)
            .execute(ex)
            .await?;
    }
    Ok(Some(owner))
}

/// Revokes one token (logout, or revoking an API token). False: no such token.
pub async fn delete_token(ex: impl PgExecutor<'_>, hash: &[u8]) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("DELETE FROM operator_tokens WHERE hash = $1")
        .bind(hash)
        .execute(ex)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Revokes `operator`'s API tokens: those with `label` when given, else all of them
/// (sessions are kept). Returns how many were deleted.
pub async fn delete_api_tokens(
    ex: impl PgExecutor<'_>,
    operator: &str,
    label: Option<&str>,
) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "DELETE FROM operator_tokens
         WHERE operator = $1 AND kind = 'api' AND ($2::text IS NULL OR label = $2)",
    )
    .bind(operator)
    .bind(label)
    .execute(ex)
    .await?;
    Ok(r.rows_affected())
}

/// `operator`'s tokens (API and sessions, expired ones included), newest first.
pub async fn list_tokens(
    ex: impl PgExecutor<'_>,
    operator: &str,
) -> Result<Vec<TokenInfo>, sqlx::Error> {
    sqlx::query(
        "SELECT operator, kind, label, created_at, expires_at, last_used
         FROM operator_tokens WHERE operator = $1 ORDER BY created_at DESC",
    )
    .bind(operator)
    .fetch_all(ex)
    .await?
    .iter()
    .map(token_info)
    .collect()
}

fn token_info(r: &PgRow) -> Result<TokenInfo, sqlx::Error> {
    Ok(TokenInfo {
        operator: r.try_get("operator")?,
        kind: r.try_get("kind")?,
        label: r.try_get("label")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        last_used: r.try_get("last_used")?,
    })
}

/// Deletes expired tokens (sessions mostly); returns how many. Expired tokens are already
/// refused by [`find_token`]; this only keeps the table small.
pub async fn delete_expired(ex: impl PgExecutor<'_>) -> Result<u64, sqlx::Error> {
    let r = sqlx::query("DELETE FROM operator_tokens WHERE expires_at <= now()")
        .execute(ex)
        .await?;
    Ok(r.rows_affected())
}
