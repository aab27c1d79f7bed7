//! A fresh database per test, on the PostgreSQL named by `DATABASE_URL`.

use anyhow::Context;
use sqlx::{Connection, PgConnection};

/// A uniquely named, empty database; the services migrate it themselves.
pub struct TestDb {
    pub url: String,
    pub name: String,
    admin_url: String,
}

impl TestDb {
    pub async fn create() -> anyhow::Result<TestDb> {
        let admin_url = std::env::var("DATABASE_URL").context(
            "DATABASE_URL is not set: run the suite with scripts/test, which starts PostgreSQL",
        )?;
        Self::create_on(&admin_url).await
    }

    /// A fresh database on the server of `admin_url` (a role allowed to create databases),
    /// e.g. a [`crate::PrivatePostgres`].
    pub async fn create_on(admin_url: &str) -> anyhow::Result<TestDb> {
        let admin_url = admin_url.to_owned();
        let name = format!("lentera_test_{}", crate::unique());
        let mut conn = PgConnection::connect(&admin_url)
            .await
            .with_context(|| format!("connecting to {admin_url}"))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        let url = with_database(&admin_url, &name);
        Ok(TestDb {
            url,
            name,
            admin_url,
        })
    }

    pub async fn connect(&self) -> anyhow::Result<sqlx::PgPool> {
        Ok(sqlx::PgPool::connect(&self.url).await?)
    }

    /// Drops the database (after the services using it have stopped).
    pub async fn drop_db(self) -> anyhow::Result<()> {
        let mut conn = PgConnection::connect(&self.admin_url).await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut conn)
        .await?;
        Ok(())
    }
}

/// `url` with its database path replaced by `name` (query string kept).
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..host_end], name);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_only_the_database() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres", "x"),
            "postgres://u:p@h:5432/x"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
        assert_eq!(
            with_database("postgres://h/db?sslmode=disable", "x"),
            "postgres://h/x?sslmode=disable"
        );
    }
}
