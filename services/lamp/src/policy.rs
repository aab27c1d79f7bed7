//! One lamp's decision, pure: inputs in, desired command out. No I/O, no clock — every
//! function takes `now` — so each rule is unit- and property-tested here.
//!
//! Precedence, highest first:
//! 1. An operator override (`mode` `on`/`off`) while it is in force (`LampMode::effective`).
//! 2. Auto with a fresh lux reading: hysteresis — below `on_below_lux` on, above
//!    `off_above_lux` off, in between keep the last lux decision.
//! 3. Auto with no lux decision (no reading, a stale one, or one that has only ever been
//!    between the thresholds): the sun — on while it is below `sun_on_below_deg`.
//!
//! A lamp always has a decision once evaluated, so the controller never leaves a lamp in
//! an unknown state at night just because its sensor is silent.

use chrono::{DateTime, Duration, Utc};
use lentera_protocol::{LampCommand, LampMode, ModeKind};
use serde::Serialize;

use crate::sun;

/// The thresholds and site, from `[lamp]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    pub on_below_lux: f64,
    pub off_above_lux: f64,
    /// A lux reading older than this no longer drives the lamp.
    pub stale_lux: Duration,
    /// Minimum gap between re-sends while the lamp reports another state.
    pub resend: Duration,
    pub sun_on_below_deg: f64,
    pub latitude: f64,
    pub longitude: f64,
}

/// Why the lamp has its desired state; shown in `GET /lamps` and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Not evaluated yet.
    Undecided,
    /// An operator override is in force.
    Override,
    /// A lux reading crossed a threshold.
    Lux,
    /// No usable lux decision; the sun's elevation decided.
    Sun,
}

/// The hysteresis step: the lux decision after a reading of `lux`.
pub fn hysteresis(
    previous: Option<LampCommand>,
    lux: f64,
    on_below: f64,
    off_above: f64,
) -> Option<LampCommand> {
    if lux < on_below {
        Some(LampCommand::On)
    } else if lux > off_above {
        Some(LampCommand::Off)
    } else {
        previous
    }
}

/// Sun rule: on while the sun is below the threshold.
pub fn sun_decision(cfg: &PolicyConfig, now: DateTime<Utc>) -> LampCommand {
    if sun::elevation_deg(cfg.latitude, cfg.longitude, now) < cfg.sun_on_below_deg {
        LampCommand::On
    } else {
        LampCommand::Off
    }
}

/// Everything the controller knows about one lamp.
#[derive(Debug, Clone, PartialEq)]
pub struct Lamp {
    pub mode: LampMode,
    /// Last lux value and when it was received (receive time, not the board's clock,
    /// so staleness does not depend on a board's RTC).
    pub lux: Option<(f64, DateTime<Utc>)>,
    /// The hysteresis memory: what the last threshold crossing decided.
    pub lux_decision: Option<LampCommand>,
    pub desired: Option<LampCommand>,
    pub reason: Reason,
    /// What the board last said it drives (`lamp/state`).
    pub reported: Option<LampCommand>,
    /// The last command the broker acknowledged, and when.
    pub sent: Option<(LampCommand, DateTime<Utc>)>,
}

impl Default for Lamp {
    fn default() -> Self {
        Self {
            mode: LampMode::AUTO,
            lux: None,
            lux_decision: None,
            desired: None,
            reason: Reason::Undecided,
            reported: None,
            sent: None,
        }
    }
}

impl Lamp {
    /// Records a lux reading and steps the hysteresis.
    pub fn observe_lux(&mut self, cfg: &PolicyConfig, lux: f64, now: DateTime<Utc>) {
        self.lux = Some((lux, now));
        self.lux_decision = hysteresis(self.lux_decision, lux, cfg.on_below_lux, cfg.off_above_lux);
    }

    /// True while the last lux reading may still drive the lamp.
    pub fn lux_is_fresh(&self, cfg: &PolicyConfig, now: DateTime<Utc>) -> bool {
        self.lux.is_some_and(|(_, at)| now - at < cfg.stale_lux)
    }

    /// Recomputes `desired` and `reason`; true when `desired` changed.
    pub fn evaluate(&mut self, cfg: &PolicyConfig, now: DateTime<Utc>) -> bool {
        let (desired, reason) = match self.mode.effective(now) {
            ModeKind::On => (LampCommand::On, Reason::Override),
            ModeKind::Off => (LampCommand::Off, Reason::Override),
            ModeKind::Auto => match self.lux_decision {
                Some(d) if self.lux_is_fresh(cfg, now) => (d, Reason::Lux),
                _ => (sun_decision(cfg, now), Reason::Sun),
            },
        };
        if !self.lux_is_fresh(cfg, now) {
            // A stale reading says nothing about now; the next one starts the hysteresis
            // afresh instead of inheriting a decision from hours ago.
            self.lux_decision = None;
        }
        let changed = self.desired != Some(desired);
        self.desired = Some(desired);
        self.reason = reason;
        changed
    }

    /// The command to publish now, if any: the desired state when it has not been sent
    /// (a new decision, or an earlier publish failed), or again when the board reports a
    /// different state and the last send is at least `resend` old.
    pub fn command_due(&self, cfg: &PolicyConfig, now: DateTime<Utc>) -> Option<LampCommand> {
        let desired = self.desired?;
        match self.sent {
            Some((cmd, _)) if cmd != desired => Some(desired),
            None => Some(desired),
            Some((_, at)) => match self.reported {
                Some(r) if r != desired && now - at >= cfg.resend => Some(desired),
                _ => None,
            },
        }
    }

    /// Records that the broker acknowledged `cmd`.
    pub fn mark_sent(&mut self, cmd: LampCommand, now: DateTime<Utc>) {
        self.sent = Some((cmd, now));
    }
}

#[cfg(test)]
mod tests;
