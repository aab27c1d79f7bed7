//! Device identifiers.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest device id the platform accepts; keeps topics and table keys small.
pub const MAX_DEVICE_ID_LEN: usize = 64;

/// A validated device id: 1–64 characters of `[A-Za-z0-9_-]`.
///
/// The character set is the intersection of what is safe in an MQTT topic level
/// (no `/`, `+`, `#`), a URL path segment and a CSV cell, so an id never needs escaping.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(String);

/// Why a string is not a device id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device id must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'")]
pub struct InvalidDeviceId;

impl DeviceId {
    /// Validates `id` and wraps it.
    pub fn parse(id: &str) -> Result<Self, InvalidDeviceId> {
        if is_valid(id) {
            Ok(Self(id.to_owned()))
        } else {
            Err(InvalidDeviceId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// True when `id` satisfies the device id rule.
pub fn is_valid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_DEVICE_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for DeviceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for DeviceId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DeviceId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        for id in ["gh-1", "lamp_3", "A", "x".repeat(64).as_str()] {
            assert!(DeviceId::parse(id).is_ok(), "{id}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for id in ["", "a/b", "a+b", "a#", "a b", "é", "x".repeat(65).as_str()] {
            assert_eq!(DeviceId::parse(id), Err(InvalidDeviceId), "{id:?}");
        }
    }
}
