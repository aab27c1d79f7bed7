//! Every lamp's [`Lamp`] state, fed by MQTT messages and the clock; still no I/O.
//!
//! The controller turns deliveries (`telemetry`, `lamp/state`, `lamp/mode`) and ticks into
//! the list of commands due now. The async loop in `startup` publishes them and reports
//! back with [`Controller::mark_sent`], so a failed publish simply stays due.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use lentera_protocol::{DeviceId, LampCommand, LampMode, ModeKind, Reading, TopicKind, Topics};
use serde::Serialize;

use crate::glob;
use crate::policy::{Lamp, PolicyConfig, Reason};

/// A command to publish now.
#[derive(Debug, Clone, PartialEq)]
pub struct Due {
    pub device: DeviceId,
    pub command: LampCommand,
    pub reason: Reason,
    /// True when this repeats the last command because the board reports otherwise.
    pub resend: bool,
}

/// What one delivery meant, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    Used,
    /// Not about a lamp (another device's telemetry, a reading without lux).
    Ignored,
    Invalid(&'static str),
}

struct Entry {
    lamp: Lamp,
    /// Matches the pattern or has published `lamp/state`. Entries that are not lamps
    /// exist only to remember a mode set before the device showed itself as a lamp.
    is_lamp: bool,
}

pub struct Controller {
    topics: Topics,
    pattern: String,
    cfg: PolicyConfig,
    /// False until the retained modes and states have had time to arrive; until then
    /// decisions are made but nothing is due, so a restart cannot briefly fight an override.
    settled: bool,
    lamps: BTreeMap<DeviceId, Entry>,
}

/// One lamp as `GET /lamps` shows it.
#[derive(Debug, Serialize)]
pub struct LampView {
    pub device: DeviceId,
    pub desired: Option<LampCommand>,
    pub reported: Option<LampCommand>,
    pub reason: Reason,
    pub mode: LampMode,
    pub effective_mode: ModeKind,
    pub last_lux: Option<f64>,
    pub last_lux_at: Option<DateTime<Utc>>,
    pub lux_fresh: bool,
    pub last_sent: Option<LampCommand>,
    pub last_sent_at: Option<DateTime<Utc>>,
}

impl Controller {
    pub fn new(topics: Topics, pattern: &str, cfg: PolicyConfig) -> Self {
        Self {
            topics,
            pattern: pattern.to_owned(),
            cfg,
            settled: false,
            lamps: BTreeMap::new(),
        }
    }

    pub fn lamp_count(&self) -> usize {
        self.lamps.values().filter(|e| e.is_lamp).count()
    }

    /// Applies one MQTT message; returns what it meant and the commands now due.
    pub fn handle(
        &mut self,
        topic: &str,
        payload: &[u8],
        now: DateTime<Utc>,
    ) -> (Handled, Vec<Due>) {
        let Some((device, kind)) = self.topics.parse(topic) else {
            return (Handled::Invalid("invalid_topic"), Vec::new());
        };
        let matches = glob::matches(&self.pattern, device.as_str());
        let handled = match kind {
            TopicKind::Telemetry => {
                let lux = match Reading::from_payload(payload, &device, now) {
                    Ok(r) => r.metrics.get("lux").copied(),
                    Err(e) => return (Handled::Invalid(e.code()), Vec::new()),
                };
                let Some(v) = lux else {
                    return (Handled::Ignored, Vec::new());
                };
                if !matches && !self.lamps.contains_key(&device) {
                    return (Handled::Ignored, Vec::new());
                }
                let cfg = self.cfg.clone();
                self.entry(&device, true).lamp.observe_lux(&cfg, v, now);
                Handled::Used
            }
            TopicKind::LampState => {
                // An empty payload clears a retained state: the board's state is unknown.
                let state = LampCommand::from_payload(payload);
                if state.is_none() && !payload.is_empty() {
                    return (Handled::Invalid("invalid_lamp_state"), Vec::new());
                }
                let e = self.entry(&device, true);
                e.is_lamp = true;
                e.lamp.reported = state;
                Handled::Used
            }
            TopicKind::LampMode => {
                // An empty payload clears a retained mode: back to auto.
                let mode = if payload.is_empty() {
                    LampMode::AUTO
                } else {
                    match LampMode::from_payload(payload) {
                        Ok(m) => m,
                        Err(_) => return (Handled::Invalid("invalid_lamp_mode"), Vec::new()),
                    }
                };
                self.entry(&device, matches).lamp.mode = mode;
                Handled::Used
            }
            TopicKind::LampSet | TopicKind::Status => return (Handled::Ignored, Vec::new()),
        };
        let due = self.evaluate_one(&device, now);
        (handled, due.into_iter().collect())
    }

    /// Re-evaluates every lamp (override expiry, stale lux, the sun) and returns every
    /// command due, including re-sends.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Vec<Due> {
        let devices: Vec<DeviceId> = self
            .lamps
            .iter()
            .filter(|(_, e)| e.is_lamp)
            .map(|(d, _)| d.clone())
            .collect();
        devices
            .iter()
            .filter_map(|d| self.evaluate_one(d, now))
            .collect()
    }

    /// From now on decisions are published; the caller follows with a [`Self::tick`].
    pub fn settle(&mut self) {
        self.settled = true;
    }

    pub fn mark_sent(&mut self, device: &DeviceId, command: LampCommand, now: DateTime<Utc>) {
        if let Some(e) = self.lamps.get_mut(device) {
            e.lamp.mark_sent(command, now);
        }
    }

    pub fn view(&self, now: DateTime<Utc>) -> Vec<LampView> {
        self.lamps
            .iter()
            .filter(|(_, e)| e.is_lamp)
            .map(|(device, e)| {
                let l = &e.lamp;
                LampView {
                    device: device.clone(),
                    desired: l.desired,
                    reported: l.reported,
                    reason: l.reason,
                    mode: l.mode.clone(),
                    effective_mode: l.mode.effective(now),
                    last_lux: l.lux.map(|(v, _)| v),
                    last_lux_at: l.lux.map(|(_, at)| at),
                    lux_fresh: l.lux_is_fresh(&self.cfg, now),
                    last_sent: l.sent.map(|(c, _)| c),
                    last_sent_at: l.sent.map(|(_, at)| at),
                }
            })
            .collect()
    }

    fn entry(&mut self, device: &DeviceId, is_lamp: bool) -> &mut Entry {
        self.lamps.entry(device.clone()).or_insert_with(|| Entry {
            lamp: Lamp::default(),
            is_lamp,
        })
    }

    fn evaluate_one(&mut self, device: &DeviceId, now: DateTime<Utc>) -> Option<Due> {
        let e = self.lamps.get_mut(device)?;
        if !e.is_lamp {
            return None;
        }
        e.lamp.evaluate(&self.cfg, now);
        if !self.settled {
            return None;
        }
        let command = e.lamp.command_due(&self.cfg, now)?;
        Some(Due {
            device: device.clone(),
            command,
            reason: e.lamp.reason,
            resend: e.lamp.sent.is_some_and(|(c, _)| c == command),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn cfg() -> PolicyConfig {
        crate::settings::LampSettings::default().policy()
    }

    /// Midday in Yogyakarta, so the sun alone would keep lamps off.
    fn day() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 5, 0, 0).unwrap()
    }

    fn settled() -> Controller {
        let mut c = Controller::new(Topics::default(), "lamp*", cfg());
        c.settle();
        c
    }

    fn dev(s: &str) -> DeviceId {
        DeviceId::parse(s).unwrap()
    }

    #[test]
    fn a_dark_reading_on_a_pattern_lamp_commands_on_once() {
        let mut c = settled();
        let (h, due) = c.handle("lentera/lamp-1/telemetry", br#"{"lux":2}"#, day());
        assert_eq!(h, Handled::Used);
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].command, due[0].resend), (LampCommand::On, false));
        c.mark_sent(&dev("lamp-1"), LampCommand::On, day());
        let (_, due) = c.handle("lentera/lamp-1/telemetry", br#"{"lux":3}"#, day());
        assert!(due.is_empty(), "same decision, nothing new to send");
    }

    #[test]
    fn other_devices_are_not_lamps_until_they_report_a_state() {
        let mut c = settled();
        let (h, due) = c.handle("lentera/gh-1/telemetry", br#"{"lux":2}"#, day());
        assert_eq!((h, due.len()), (Handled::Ignored, 0));
        assert_eq!(c.lamp_count(), 0);
        let (_, due) = c.handle("lentera/gh-1/lamp/state", b"off", day());
        assert_eq!(c.lamp_count(), 1);
        assert_eq!(due[0].command, LampCommand::Off, "daytime sun decides");
        let (_, due) = c.handle("lentera/gh-1/telemetry", br#"{"lux":2}"#, day());
        assert_eq!(due[0].command, LampCommand::On);
    }

    #[test]
    fn nothing_is_due_before_settling_and_everything_after() {
        let mut c = Controller::new(Topics::default(), "lamp*", cfg());
        let (_, due) = c.handle("lentera/lamp-1/telemetry", br#"{"lux":2}"#, day());
        assert!(due.is_empty());
        let (_, due) = c.handle("lentera/lamp-1/lamp/mode", br#"{"mode":"off"}"#, day());
        assert!(due.is_empty());
        c.settle();
        let due = c.tick(day());
        assert_eq!(due.len(), 1);
        assert_eq!(
            (due[0].command, due[0].reason),
            (LampCommand::Off, Reason::Override)
        );
    }

    #[test]
    fn tick_expires_overrides_and_resends_on_disagreement() {
        let mut c = settled();
        let until = day() + Duration::minutes(1);
        let mode = format!(r#"{{"mode":"on","until":"{}"}}"#, until.to_rfc3339());
        c.handle("lentera/lamp-1/telemetry", br#"{"lux":90}"#, day());
        let (_, due) = c.handle("lentera/lamp-1/lamp/mode", mode.as_bytes(), day());
        assert_eq!(due[0].command, LampCommand::On);
        c.mark_sent(&dev("lamp-1"), LampCommand::On, day());
        c.handle("lentera/lamp-1/lamp/state", b"off", day());
        assert!(
            c.tick(day() + Duration::seconds(30)).is_empty(),
            "resend not yet due"
        );
        // The override has expired by now: auto (bright) says off, which the board reports.
        let due = c.tick(day() + Duration::seconds(90));
        assert_eq!(
            (due[0].command, due[0].reason),
            (LampCommand::Off, Reason::Lux)
        );
    }

    #[test]
    fn a_state_the_board_keeps_contradicting_is_resent() {
        let mut c = settled();
        c.handle("lentera/lamp-1/telemetry", br#"{"lux":1}"#, day());
        c.mark_sent(&dev("lamp-1"), LampCommand::On, day());
        c.handle("lentera/lamp-1/lamp/state", b"off", day());
        let due = c.tick(day() + Duration::seconds(61));
        assert_eq!(due.len(), 1);
        assert!(due[0].resend);
    }

    #[test]
    fn bad_payloads_are_reported_and_change_nothing() {
        let mut c = settled();
        let t = day();
        assert_eq!(
            c.handle("lentera/lamp-1/telemetry", b"{", t).0,
            Handled::Invalid("malformed_json")
        );
        assert_eq!(
            c.handle("lentera/lamp-1/lamp/mode", b"{}", t).0,
            Handled::Invalid("invalid_lamp_mode")
        );
        assert_eq!(
            c.handle("lentera/lamp-1/lamp/state", b"dim", t).0,
            Handled::Invalid("invalid_lamp_state")
        );
        assert_eq!(c.lamp_count(), 0);
    }
}
