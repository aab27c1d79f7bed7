//! Policy tests: the rules one by one, then properties over arbitrary inputs.

use chrono::{TimeZone, Utc};
use lentera_protocol::ModeKind;
use proptest::prelude::*;

use super::*;

fn cfg() -> PolicyConfig {
    PolicyConfig {
        on_below_lux: 10.0,
        off_above_lux: 30.0,
        stale_lux: Duration::minutes(10),
        resend: Duration::seconds(60),
        sun_on_below_deg: -0.833,
        latitude: -7.8,
        longitude: 110.4,
    }
}

/// 2026-11-22 12:00 local in Yogyakarta (05:00 UTC): broad daylight.
fn day() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 5, 0, 0).unwrap()
}

/// 2026-11-22 23:00 local (16:00 UTC): night.
fn night() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 16, 0, 0).unwrap()
}

fn lux(lamp: &mut Lamp, value: f64, now: DateTime<Utc>) -> bool {
    lamp.observe_lux(&cfg(), value, now);
    lamp.evaluate(&cfg(), now)
}

#[test]
fn dark_switches_on_in_between_keeps_bright_switches_off() {
    // In daylight, so the sun would say "off": only the lux rule can say "on".
    let t = day();
    let mut lamp = Lamp::default();
    assert!(lux(&mut lamp, 3.0, t));
    assert_eq!(
        (lamp.desired, lamp.reason),
        (Some(LampCommand::On), Reason::Lux)
    );
    assert!(!lux(&mut lamp, 20.0, t), "between thresholds keeps on");
    assert_eq!(lamp.desired, Some(LampCommand::On));
    assert!(lux(&mut lamp, 31.0, t));
    assert_eq!(lamp.desired, Some(LampCommand::Off));
    assert!(!lux(&mut lamp, 20.0, t), "between thresholds keeps off");
    assert_eq!(lamp.desired, Some(LampCommand::Off));
    assert!(!lux(&mut lamp, 10.0, t), "exactly on_below is not below");
    assert!(!lux(&mut lamp, 30.0, t), "exactly off_above is not above");
}

#[test]
fn with_no_reading_or_only_in_between_readings_the_sun_decides() {
    let mut lamp = Lamp::default();
    assert_eq!(lamp.reason, Reason::Undecided);
    lamp.evaluate(&cfg(), night());
    assert_eq!(
        (lamp.desired, lamp.reason),
        (Some(LampCommand::On), Reason::Sun)
    );
    lamp.evaluate(&cfg(), day());
    assert_eq!(
        (lamp.desired, lamp.reason),
        (Some(LampCommand::Off), Reason::Sun)
    );

    let mut lamp = Lamp::default();
    lux(&mut lamp, 20.0, night());
    assert_eq!(
        (lamp.desired, lamp.reason),
        (Some(LampCommand::On), Reason::Sun)
    );
}

#[test]
fn a_stale_reading_hands_over_to_the_sun_and_resets_the_hysteresis() {
    let mut lamp = Lamp::default();
    let t = day();
    lux(&mut lamp, 3.0, t); // dark sensor in daytime, e.g. covered
    lamp.evaluate(&cfg(), t + Duration::minutes(9));
    assert_eq!(lamp.reason, Reason::Lux);
    assert!(lamp.evaluate(&cfg(), t + Duration::minutes(10)));
    assert_eq!(
        (lamp.desired, lamp.reason),
        (Some(LampCommand::Off), Reason::Sun)
    );
    // The next in-between reading does not resurrect the old "on".
    lux(&mut lamp, 20.0, t + Duration::minutes(11));
    assert_eq!(
        (lamp.desired, lamp.reason),
        (Some(LampCommand::Off), Reason::Sun)
    );
}

#[test]
fn an_override_wins_until_it_expires() {
    let t = day();
    let mut lamp = Lamp::default();
    lux(&mut lamp, 50.0, t);
    assert_eq!(lamp.desired, Some(LampCommand::Off));
    lamp.mode = LampMode {
        mode: ModeKind::On,
        until: Some(t + Duration::minutes(5)),
    };
    assert!(lamp.evaluate(&cfg(), t));
    assert_eq!(
        (lamp.desired, lamp.reason),
        (Some(LampCommand::On), Reason::Override)
    );
    // Readings keep arriving during the override but do not change the decision…
    assert!(!lux(&mut lamp, 80.0, t + Duration::minutes(4)));
    assert_eq!(lamp.desired, Some(LampCommand::On));
    // …until it expires and auto takes over again, from the latest reading.
    assert!(lamp.evaluate(&cfg(), t + Duration::minutes(5)));
    assert_eq!(
        (lamp.desired, lamp.reason),
        (Some(LampCommand::Off), Reason::Lux)
    );
}

#[test]
fn an_override_without_until_lasts_and_auto_mode_gives_control_back() {
    let mut lamp = Lamp {
        mode: LampMode {
            mode: ModeKind::Off,
            until: None,
        },
        ..Lamp::default()
    };
    lux(&mut lamp, 1.0, night());
    assert_eq!(
        (lamp.desired, lamp.reason),
        (Some(LampCommand::Off), Reason::Override)
    );
    lamp.evaluate(&cfg(), night() + Duration::minutes(5));
    assert_eq!(lamp.desired, Some(LampCommand::Off));
    lamp.mode = LampMode::AUTO;
    assert!(lamp.evaluate(&cfg(), night() + Duration::minutes(6)));
    assert_eq!(
        (lamp.desired, lamp.reason),
        (Some(LampCommand::On), Reason::Lux)
    );
    // A month later, still off: an override without `until` does not expire.
    lamp.mode = LampMode {
        mode: ModeKind::Off,
        until: None,
    };
    lamp.evaluate(&cfg(), night() + Duration::days(30));
    assert_eq!(
        (lamp.desired, lamp.reason),
        (Some(LampCommand::Off), Reason::Override)
    );
}

#[test]
fn commands_are_due_on_change_after_failure_and_on_disagreement_after_resend() {
    let c = cfg();
    let t = day();
    let mut lamp = Lamp::default();
    assert_eq!(
        lamp.command_due(&c, t),
        None,
        "nothing decided, nothing to send"
    );
    lux(&mut lamp, 3.0, t);
    assert_eq!(
        lamp.command_due(&c, t),
        Some(LampCommand::On),
        "new decision"
    );
    // Publish failed: still due on the next tick.
    assert_eq!(
        lamp.command_due(&c, t + Duration::seconds(30)),
        Some(LampCommand::On)
    );
    lamp.mark_sent(LampCommand::On, t);
    assert_eq!(lamp.command_due(&c, t), None);
    // The board has not reported: silence is not disagreement.
    assert_eq!(lamp.command_due(&c, t + Duration::hours(1)), None);
    lamp.reported = Some(LampCommand::Off);
    assert_eq!(
        lamp.command_due(&c, t + Duration::seconds(59)),
        None,
        "too soon"
    );
    assert_eq!(
        lamp.command_due(&c, t + Duration::seconds(60)),
        Some(LampCommand::On)
    );
    lamp.reported = Some(LampCommand::On);
    assert_eq!(
        lamp.command_due(&c, t + Duration::hours(1)),
        None,
        "confirmed"
    );
}

proptest! {
    #[test]
    fn hysteresis_follows_the_thresholds(
        prev in prop::option::of(prop_oneof![Just(LampCommand::On), Just(LampCommand::Off)]),
        value in -10.0f64..100.0,
    ) {
        let d = hysteresis(prev, value, 10.0, 30.0);
        if value < 10.0 {
            prop_assert_eq!(d, Some(LampCommand::On));
        } else if value > 30.0 {
            prop_assert_eq!(d, Some(LampCommand::Off));
        } else {
            prop_assert_eq!(d, prev);
        }
    }

    /// Any sequence of readings: the lamp is on after a dark reading and off after a
    /// bright one, and between thresholds it only ever switches because of the sun.
    #[test]
    fn fresh_readings_never_contradict_the_last_crossing(
        readings in prop::collection::vec(0.0f64..60.0, 1..40),
        start_min in 0i64..1440,
    ) {
        let mut lamp = Lamp::default();
        let mut last_crossing = None;
        for (i, v) in readings.iter().enumerate() {
            let now = day() + Duration::minutes(start_min + i as i64);
            lux(&mut lamp, *v, now);
            if *v < 10.0 { last_crossing = Some(LampCommand::On) }
            if *v > 30.0 { last_crossing = Some(LampCommand::Off) }
            match last_crossing {
                Some(d) => {
                    prop_assert_eq!(lamp.desired, Some(d));
                    prop_assert_eq!(lamp.reason, Reason::Lux);
                }
                None => prop_assert_eq!(lamp.reason, Reason::Sun),
            }
            prop_assert!(lamp.desired.is_some());
        }
    }

    /// An override in force decides, whatever the light.
    #[test]
    fn overrides_take_precedence(
        readings in prop::collection::vec(0.0f64..60.0, 0..10),
        on in any::<bool>(),
        minutes_left in 1i64..600,
    ) {
        let t = night();
        let mut lamp = Lamp::default();
        let forced = if on { LampCommand::On } else { LampCommand::Off };
        lamp.mode = LampMode {
            mode: if on { ModeKind::On } else { ModeKind::Off },
            until: Some(t + Duration::minutes(minutes_left)),
        };
        for v in readings {
            lux(&mut lamp, v, t);
        }
        lamp.evaluate(&cfg(), t);
        prop_assert_eq!(lamp.desired, Some(forced));
        prop_assert_eq!(lamp.reason, Reason::Override);
        lamp.evaluate(&cfg(), t + Duration::minutes(minutes_left));
        prop_assert_ne!(lamp.reason, Reason::Override);
    }

    /// Once the broker has the desired command and the board agrees (or is silent),
    /// nothing more is sent, however much time passes.
    #[test]
    fn no_resend_storm(
        reported in prop::option::of(Just(LampCommand::On)),
        later in 0i64..100_000,
    ) {
        let c = cfg();
        let mut lamp = Lamp::default();
        lux(&mut lamp, 1.0, day());
        lamp.mark_sent(LampCommand::On, day());
        lamp.reported = reported;
        prop_assert_eq!(lamp.command_due(&c, day() + Duration::seconds(later)), None);
    }
}
