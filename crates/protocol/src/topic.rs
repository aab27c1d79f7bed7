//! Building and parsing the platform's MQTT topics.
//!
//! | topic | meaning |
//! |---|---|
//! | `{prefix}/{device}/telemetry` | readings (JSON) |
//! | `{prefix}/{device}/lamp/set` | command to the board: `on`/`off` |
//! | `{prefix}/{device}/lamp/state` | what the board drives (retained) |
//! | `{prefix}/{device}/lamp/mode` | operator mode (retained JSON) |
//! | `{prefix}/{device}/status` | `online`/`offline` (retained, Last Will) |

use crate::device::DeviceId;

/// Default topic prefix.
pub const DEFAULT_PREFIX: &str = "lentera";

/// Which of the platform's topics a topic string is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicKind {
    Telemetry,
    LampSet,
    LampState,
    LampMode,
    Status,
}

impl TopicKind {
    /// The topic levels after `{prefix}/{device}/`.
    pub fn suffix(self) -> &'static str {
        match self {
            TopicKind::Telemetry => "telemetry",
            TopicKind::LampSet => "lamp/set",
            TopicKind::LampState => "lamp/state",
            TopicKind::LampMode => "lamp/mode",
            TopicKind::Status => "status",
        }
    }

    fn from_suffix(s: &str) -> Option<Self> {
        Some(match s {
            "telemetry" => TopicKind::Telemetry,
            "lamp/set" => TopicKind::LampSet,
            "lamp/state" => TopicKind::LampState,
            "lamp/mode" => TopicKind::LampMode,
            "status" => TopicKind::Status,
            _ => return None,
        })
    }
}

/// Topic builder and parser bound to one prefix (configurable, default `lentera`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

impl Topics {
    /// A prefix may itself have several levels (`village/lentera`); a trailing `/` is dropped.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The topic of `kind` for `device`.
    pub fn topic(&self, device: &DeviceId, kind: TopicKind) -> String {
        format!("{}/{}/{}", self.prefix, device, kind.suffix())
    }

    pub fn telemetry(&self, device: &DeviceId) -> String {
        self.topic(device, TopicKind::Telemetry)
    }

    pub fn lamp_set(&self, device: &DeviceId) -> String {
        self.topic(device, TopicKind::LampSet)
    }

    pub fn lamp_state(&self, device: &DeviceId) -> String {
        self.topic(device, TopicKind::LampState)
    }

    pub fn lamp_mode(&self, device: &DeviceId) -> String {
        self.topic(device, TopicKind::LampMode)
    }

    pub fn status(&self, device: &DeviceId) -> String {
        self.topic(device, TopicKind::Status)
    }

    /// `{prefix}/{device}/error`: a refusal of something the device sent, published
    /// after the device was answered (see [`crate::rejection`]). Not a [`TopicKind`]:
    /// the platform only ever publishes it.
    pub fn error(&self, device: &DeviceId) -> String {
        format!("{}/{}/error", self.prefix, device)
    }

    /// `{prefix}/+/error`.
    pub fn error_filter(&self) -> String {
        format!("{}/+/error", self.prefix)
    }

    /// The device of an error topic.
    pub fn parse_error(&self, topic: &str) -> Option<DeviceId> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        DeviceId::parse(rest.strip_suffix("/error")?).ok()
    }

    /// The subscription filter matching `kind` for every device: `{prefix}/+/{suffix}`.
    pub fn filter(&self, kind: TopicKind) -> String {
        format!("{}/+/{}", self.prefix, kind.suffix())
    }

    /// Recognises one of the platform's topics. Anything else — another prefix, a
    /// deeper device hierarchy, an invalid device id — is `None`, so a service simply
    /// ignores traffic that is not addressed to it.
    pub fn parse(&self, topic: &str) -> Option<(DeviceId, TopicKind)> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let (device, suffix) = rest.split_once('/')?;
        let kind = TopicKind::from_suffix(suffix)?;
        let device = DeviceId::parse(device).ok()?;
        Some((device, kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(s: &str) -> DeviceId {
        DeviceId::parse(s).unwrap()
    }

    #[test]
    fn builds_the_contract_topics() {
        let t = Topics::default();
        let d = dev("gh-1");
        assert_eq!(t.telemetry(&d), "lentera/gh-1/telemetry");
        assert_eq!(t.lamp_set(&d), "lentera/gh-1/lamp/set");
        assert_eq!(t.lamp_state(&d), "lentera/gh-1/lamp/state");
        assert_eq!(t.lamp_mode(&d), "lentera/gh-1/lamp/mode");
        assert_eq!(t.status(&d), "lentera/gh-1/status");
        assert_eq!(t.filter(TopicKind::Telemetry), "lentera/+/telemetry");
        assert_eq!(t.error(&d), "lentera/gh-1/error");
        assert_eq!(t.parse_error("lentera/gh-1/error"), Some(d.clone()));
        assert_eq!(t.parse_error("lentera/gh-1/x/error"), None);
        assert_eq!(t.parse(&t.error(&d)), None);
    }

    #[test]
    fn parse_inverts_build_for_every_kind() {
        let t = Topics::new("village/lentera/");
        let d = dev("lamp_7");
        for kind in [
            TopicKind::Telemetry,
            TopicKind::LampSet,
            TopicKind::LampState,
            TopicKind::LampMode,
            TopicKind::Status,
        ] {
            assert_eq!(t.parse(&t.topic(&d, kind)), Some((d.clone(), kind)));
        }
    }

    #[test]
    fn parse_rejects_foreign_topics() {
        let t = Topics::default();
        for topic in [
            "lentera",
            "lentera/",
            "lentera/gh-1",
            "lentera/gh-1/other",
            "lentera/gh-1/telemetry/extra",
            "lentera/a/b/telemetry",
            "lentera/bad id/telemetry",
            "lenteraX/gh-1/telemetry",
            "other/gh-1/telemetry",
            "lentera//telemetry",
        ] {
            assert_eq!(t.parse(topic), None, "{topic}");
        }
    }
}
