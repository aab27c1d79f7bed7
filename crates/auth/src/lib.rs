//! Identity for Lentera: who may speak as a device, and who may run the platform.
//!
//! - [`token`]: the secret tokens of devices and operators, and the hash stored for them.
//! - [`password`]: slow `$7$` PBKDF2 hashes for operator (and broker user) passwords.
//! - [`Registry`]: the provisioned devices in memory, kept in step with PostgreSQL by
//!   `LISTEN lentera_registry` and periodic reloads, so every door (broker, ingest)
//!   answers from memory and keeps admitting known devices through a PostgreSQL outage.
//! - [`RateLimiter`]: per-key token buckets for the per-device quotas.
//! - [`admin`]: provisioning (`lentera devices …`, the web's device admin).
//! - [`AuthSettings`] (`[auth]`) and [`QuotaSettings`] (`[quota]`), shared by the services.

pub mod admin;
mod cache;
mod kind;
mod limiter;
pub mod password;
mod registry;
mod settings;
pub mod token;

pub use kind::{Kind, UnknownKind};
pub use limiter::{RateLimiter, retry_after_secs};
pub use registry::{Denied, Device, Registry};
pub use settings::{AuthSettings, QuotaSettings};
