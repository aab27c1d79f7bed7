//! Layered settings: defaults → file → environment.

use std::path::PathBuf;

use anyhow::Context;
use serde::de::DeserializeOwned;

/// Environment variable naming an explicit settings file.
pub const CONFIG_ENV: &str = "LENTERA_CONFIG";
/// Settings file read from the working directory when `LENTERA_CONFIG` is unset.
pub const DEFAULT_FILE: &str = "lentera.toml";

/// Loads a service's settings. `T` carries its defaults through `#[serde(default)]`, so
/// a service starts with no file and no environment at all.
///
/// `DATABASE_URL`, the variable every PostgreSQL tool knows, fills `database.url` unless
/// `LENTERA_DATABASE__URL` is set.
pub fn load<T: DeserializeOwned>() -> anyhow::Result<T> {
    let mut builder = config::Config::builder();
    match std::env::var_os(CONFIG_ENV) {
        Some(path) => {
            let path = PathBuf::from(path);
            builder = builder.add_source(config::File::from(path.clone()).required(true));
        }
        None => {
            builder = builder.add_source(config::File::with_name(DEFAULT_FILE).required(false));
        }
    }
    if let Ok(url) = std::env::var("DATABASE_URL") {
        builder = builder.set_override("database.url", url)?;
    }
    builder = builder.add_source(
        config::Environment::with_prefix("LENTERA")
            .prefix_separator("_")
            .separator("__"),
    );
    if let Ok(url) = std::env::var("LENTERA_DATABASE__URL") {
        builder = builder.set_override("database.url", url)?;
    }
    builder
        .build()
        .context("reading settings")?
        .try_deserialize()
        .context("invalid settings")
}
