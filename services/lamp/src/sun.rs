//! The sun's elevation above the horizon, for lamps that have no light sensor.
//!
//! NOAA's solar-position approximation (the "NOAA Solar Calculator" spreadsheet formulas):
//! accurate to a fraction of a degree between 1901 and 2099, which is far more than a
//! street lamp needs and needs no tables or network. Refraction is not modelled; the
//! switch-on threshold (−0.833°, see `LampSettings::sun_on_below_deg`) accounts for it.

use chrono::{DateTime, Timelike, Utc};

/// Elevation of the sun's centre in degrees (negative below the horizon) at `at`, seen
/// from `latitude` (° north) and `longitude` (° east).
pub fn elevation_deg(latitude: f64, longitude: f64, at: DateTime<Utc>) -> f64 {
    let unix_secs = at.timestamp() as f64 + at.timestamp_subsec_millis() as f64 / 1000.0;
    let julian_day = unix_secs / 86_400.0 + 2_440_587.5;
    let jc = (julian_day - 2_451_545.0) / 36_525.0; // Julian centuries since J2000

    let mean_long = (280.46646 + jc * (36000.76983 + jc * 0.0003032)).rem_euclid(360.0);
    let mean_anom = 357.52911 + jc * (35999.05029 - 0.0001537 * jc);
    let ecc = 0.016708634 - jc * (0.000042037 + 0.0000001267 * jc);
    let m = mean_anom.to_radians();
    let centre = m.sin() * (1.914602 - jc * (0.004817 + 0.000014 * jc))
        + (2.0 * m).sin() * (0.019993 - 0.000101 * jc)
        + (3.0 * m).sin() * 0.000289;
    let true_long = mean_long + centre;
    let omega = (125.04 - 1934.136 * jc).to_radians();
    let apparent_long = true_long - 0.00569 - 0.00478 * omega.sin();
    let mean_obliq =
        23.0 + (26.0 + (21.448 - jc * (46.815 + jc * (0.00059 - jc * 0.001813))) / 60.0) / 60.0;
    let obliq = (mean_obliq + 0.00256 * omega.cos()).to_radians();
    let declination = (obliq.sin() * apparent_long.to_radians().sin()).asin();

    // Equation of time, minutes: how far the true sun runs ahead of the mean sun.
    let y = (obliq / 2.0).tan().powi(2);
    let l2 = (2.0 * mean_long).to_radians();
    let eq_time = 4.0
        * (y * l2.sin() - 2.0 * ecc * m.sin() + 4.0 * ecc * y * m.sin() * l2.cos()
            - 0.5 * y * y * (2.0 * l2).sin()
            - 1.25 * ecc * ecc * (2.0 * m).sin())
        .to_degrees();

    let minutes_utc = at.hour() as f64 * 60.0 + at.minute() as f64 + at.second() as f64 / 60.0;
    let true_solar = (minutes_utc + eq_time + 4.0 * longitude).rem_euclid(1440.0);
    let hour_angle = (true_solar / 4.0 - 180.0).to_radians();

    let lat = latitude.to_radians();
    let cos_zenith =
        lat.sin() * declination.sin() + lat.cos() * declination.cos() * hour_angle.cos();
    90.0 - cos_zenith.clamp(-1.0, 1.0).acos().to_degrees()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const YOGYA: (f64, f64) = (-7.8, 110.4);

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn yogyakarta_noon_is_high_and_midnight_is_below_the_horizon() {
        // Local time is UTC+7; solar noon there is about 11:40 local (04:40 UTC).
        for (mo, d) in [(1, 15), (3, 20), (6, 21), (9, 23), (11, 22), (12, 21)] {
            let noon = elevation_deg(YOGYA.0, YOGYA.1, utc(2026, mo, d, 4, 40));
            let midnight = elevation_deg(YOGYA.0, YOGYA.1, utc(2026, mo, d, 17, 0));
            assert!(noon > 45.0, "{mo}-{d} noon {noon}");
            assert!(midnight < -45.0, "{mo}-{d} midnight {midnight}");
        }
    }

    #[test]
    fn yogyakarta_sunrise_and_sunset_fall_near_six() {
        // Near the equator the sun rises and sets around 05:30 and 17:45 local all year.
        let d = (2026, 11, 22);
        let before_sunrise = elevation_deg(YOGYA.0, YOGYA.1, utc(d.0, d.1, d.2 - 1, 22, 0));
        let after_sunrise = elevation_deg(YOGYA.0, YOGYA.1, utc(d.0, d.1, d.2 - 1, 23, 0));
        let before_sunset = elevation_deg(YOGYA.0, YOGYA.1, utc(d.0, d.1, d.2, 10, 30));
        let after_sunset = elevation_deg(YOGYA.0, YOGYA.1, utc(d.0, d.1, d.2, 11, 30));
        assert!(before_sunrise < -0.833 && after_sunrise > -0.833);
        assert!(before_sunset > -0.833 && after_sunset < -0.833);
    }

    #[test]
    fn equinox_noon_at_the_equator_is_nearly_overhead() {
        // 2026-03-20 equinox; at longitude 0 solar noon is ~12:07 UTC (equation of time).
        let e = elevation_deg(0.0, 0.0, utc(2026, 3, 20, 12, 7));
        assert!(e > 88.5, "{e}");
    }

    #[test]
    fn june_solstice_noon_altitude_matches_latitude_geometry() {
        // At 52°N on the June solstice the noon sun stands at 90 - 52 + 23.44 ≈ 61.4°.
        // Solar noon at longitude 0 on 21 June is ~12:02 UTC.
        let e = elevation_deg(52.0, 0.0, utc(2026, 6, 21, 12, 2));
        assert!((e - 61.44).abs() < 0.3, "{e}");
    }
}
