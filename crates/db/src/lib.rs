//! PostgreSQL access for Lentera: the pool, the migrations, and every query.
//!
//! The historian writes ([`write`]); web reads ([`history`], [`devices`], [`lamps`],
//! [`rejected`]); the device registry and operator accounts ([`registry`], [`operators`])
//! serve the doors' authentication (`lentera-auth`), the `lentera` CLI and web.
//! Keeping all SQL here means the schema in `migrations/` and the code that relies on it
//! change together. Queries are built at run time with `sqlx::query`, so building the
//! workspace needs no database.

pub mod devices;
pub mod history;
pub mod lamps;
pub mod operators;
pub mod registry;
pub mod rejected;
pub mod write;

use std::time::Duration;

use serde::Deserialize;
use sqlx::postgres::{PgPool, PgPoolOptions};

/// The migrations in the top-level `migrations/`, embedded in every binary that links this.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// `[database]` settings. `DATABASE_URL` also sets `url`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
    /// Apply pending migrations at start-up (the historian does by default).
    pub migrate: bool,
    /// How long to wait for a connection from the pool.
    pub acquire_timeout_ms: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "postgres://postgres:postgres@127.0.0.1:5432/lentera".into(),
            max_connections: 8,
            migrate: true,
            acquire_timeout_ms: 3_000,
        }
    }
}

/// A lazily connecting pool: a service starts, and reports not-ready, while PostgreSQL is down.
pub fn pool(s: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(s.max_connections)
        .acquire_timeout(Duration::from_millis(s.acquire_timeout_ms))
        .connect_lazy(&s.url)
}

/// Applies pending migrations. Concurrent callers are safe: sqlx takes an advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// A cheap round trip, for readiness.
pub async fn ping(pool: &PgPool) -> bool {
    sqlx::query("SELECT 1").execute(pool).await.is_ok()
}
