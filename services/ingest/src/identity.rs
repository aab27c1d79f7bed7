//! Who may speak as a device, and how often: the one gate both doors (HTTP, TCP) ask.
//!
//! Closed (the default) answers from `lentera_auth::Registry`, the provisioned devices in
//! memory, so a check costs one HMAC and no database round trip, and a PostgreSQL outage
//! after the first load does not lock out known devices. Open (`auth.open = true`, demo
//! only) admits any device id, as ingest did before devices had identity.
//!
//! The per-device rate limit (`[quota]`) applies in both modes: one bucket per device
//! id per process, one token per message (an HTTP request, a TCP line).

use std::sync::Arc;
use std::time::Duration;

use lentera_auth::{Denied, RateLimiter, Registry};
use lentera_protocol::DeviceId;

/// A secret as the line grammar carries it: its `Debug` never shows it, so no
/// `?request` in a log line can leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Identity {
    /// `None` = open mode.
    registry: Option<Registry>,
    limiter: Arc<RateLimiter>,
}

impl Identity {
    pub fn new(registry: Option<Registry>, quota: &lentera_auth::QuotaSettings) -> Self {
        Self {
            registry,
            limiter: Arc::new(RateLimiter::new(
                quota.device_rate_per_sec,
                quota.device_burst,
            )),
        }
    }

    pub fn is_open(&self) -> bool {
        self.registry.is_none()
    }

    pub fn registry(&self) -> Option<&Registry> {
        self.registry.as_ref()
    }

    /// The device whose token this is (closed mode; open mode admits nobody by token
    /// alone, since it has no registry to ask).
    pub async fn token(&self, token: &str) -> Result<DeviceId, Denied> {
        let registry = self.registry.as_ref().ok_or(Denied::Unauthorized)?;
        let device = registry.check_token(token).await?;
        DeviceId::parse(&device.id).map_err(|_| Denied::Unauthorized)
    }

    /// `device`, when `token` is its current token.
    pub async fn device(&self, device: &DeviceId, token: &str) -> Result<DeviceId, Denied> {
        let admitted = self.token(token).await?;
        if admitted == *device {
            Ok(admitted)
        } else {
            Err(Denied::Unauthorized)
        }
    }

    /// True while `device` is still admitted (closed mode); for connections whose
    /// revocation notices lagged.
    pub fn still_admitted(&self, device: &DeviceId) -> bool {
        self.registry
            .as_ref()
            .is_none_or(|r| r.knows(device.as_str()))
    }

    /// Takes one message from `device`'s quota, or says when to come back.
    pub fn rate(&self, device: &DeviceId) -> Result<(), Duration> {
        self.limiter.check(device.as_str())
    }
}
