//! Lamp commands, lamp modes and device status.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The desired or actual state of a lamp. On the wire it is the plain text `on`/`off`
/// (`lamp/set`, `lamp/state`) so a tiny sketch can compare strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LampCommand {
    On,
    Off,
}

impl LampCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            LampCommand::On => "on",
            LampCommand::Off => "off",
        }
    }

    /// The line the TCP relay sends a bound board (the seed's `led-on` / `led-off`).
    pub fn tcp_line(self) -> &'static str {
        match self {
            LampCommand::On => "led-on",
            LampCommand::Off => "led-off",
        }
    }

    /// Parses a `lamp/set` or `lamp/state` payload; surrounding whitespace and case are
    /// forgiven because boards send `ON\r\n` as readily as `on`.
    pub fn from_payload(payload: &[u8]) -> Option<Self> {
        std::str::from_utf8(payload).ok()?.trim().parse().ok()
    }
}

impl FromStr for LampCommand {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        if s.eq_ignore_ascii_case("on") {
            Ok(LampCommand::On)
        } else if s.eq_ignore_ascii_case("off") {
            Ok(LampCommand::Off)
        } else {
            Err(())
        }
    }
}

impl fmt::Display for LampCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who decides a lamp: the controller (`auto`) or an operator (`on`/`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeKind {
    Auto,
    On,
    Off,
}

impl ModeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModeKind::Auto => "auto",
            ModeKind::On => "on",
            ModeKind::Off => "off",
        }
    }
}

/// The retained `lamp/mode` payload: `{"mode":"auto"|"on"|"off","until":"…"?}`.
/// An override with `until` reverts to `auto` at that instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LampMode {
    pub mode: ModeKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
}

impl LampMode {
    pub const AUTO: LampMode = LampMode {
        mode: ModeKind::Auto,
        until: None,
    };

    /// The mode in force at `now`: an expired override is `auto` again.
    pub fn effective(&self, now: DateTime<Utc>) -> ModeKind {
        match self.until {
            Some(until) if until <= now => ModeKind::Auto,
            _ => self.mode,
        }
    }

    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a lamp mode always serialises")
    }

    pub fn from_payload(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

/// The retained `status` payload, also used as Last Will.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    Online,
    Offline,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Online => "online",
            DeviceStatus::Offline => "offline",
        }
    }

    pub fn from_payload(payload: &[u8]) -> Option<Self> {
        match std::str::from_utf8(payload).ok()?.trim() {
            "online" => Some(DeviceStatus::Online),
            "offline" => Some(DeviceStatus::Offline),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn commands_parse_leniently_and_print_strictly() {
        assert_eq!(LampCommand::from_payload(b"on"), Some(LampCommand::On));
        assert_eq!(
            LampCommand::from_payload(b"OFF\r\n"),
            Some(LampCommand::Off)
        );
        assert_eq!(LampCommand::from_payload(b"dim"), None);
        assert_eq!(LampCommand::On.to_string(), "on");
        assert_eq!(LampCommand::Off.tcp_line(), "led-off");
    }

    #[test]
    fn mode_json_matches_contract() {
        let m = LampMode::from_payload(br#"{"mode":"on","until":"2026-11-22T05:00:00Z"}"#).unwrap();
        assert_eq!(m.mode, ModeKind::On);
        let before = Utc.with_ymd_and_hms(2026, 11, 22, 4, 0, 0).unwrap();
        let after = Utc.with_ymd_and_hms(2026, 11, 22, 6, 0, 0).unwrap();
        assert_eq!(m.effective(before), ModeKind::On);
        assert_eq!(m.effective(after), ModeKind::Auto);
        assert_eq!(LampMode::AUTO.to_payload(), br#"{"mode":"auto"}"#);
        assert!(LampMode::from_payload(br#"{"mode":"dim"}"#).is_err());
        assert!(LampMode::from_payload(br#"{"mode":"on","colour":1}"#).is_err());
    }

    #[test]
    fn status_payloads() {
        assert_eq!(
            DeviceStatus::from_payload(b"online"),
            Some(DeviceStatus::Online)
        );
        assert_eq!(DeviceStatus::from_payload(b"gone"), None);
    }
}
