//! What a device is: it decides which topics and readings make sense for it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The kinds the registry knows (`devices.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Sensor,
    Greenhouse,
    Lamp,
}

/// A string that is not a [`Kind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown device kind {0:?} (expected sensor, greenhouse or lamp)")]
pub struct UnknownKind(pub String);

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Sensor, Kind::Greenhouse, Kind::Lamp];

    /// The database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Sensor => "sensor",
            Kind::Greenhouse => "greenhouse",
            Kind::Lamp => "lamp",
        }
    }
}

impl FromStr for Kind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>().unwrap(), k);
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
        }
        assert!("Lamp".parse::<Kind>().is_err());
    }
}
