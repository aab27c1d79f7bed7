//! What the fuzz targets share: a fixed clock, a device, and the checks every accepted
//! reading must pass whichever door it came through.

use chrono::{DateTime, TimeZone, Utc};
use lentera_protocol::reading::{MAX_METRICS, format_ts, is_valid_metric_name};
use lentera_protocol::{DeviceId, Limits, Reading, ReadingError};

/// The receiver's clock: fixed, so a crash reproduces whatever day it is re-run.
pub fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap()
}

/// The device a topic (or a HELLO) names.
pub fn gh1() -> DeviceId {
    DeviceId::parse("gh-1").unwrap()
}

/// The invariants of every [`Reading`] a decoder accepts, and the one the platform
/// relies on most: its canonical payload ([`Reading::to_payload`], what ingest publishes
/// and the historian stores) reads back as the same reading, and is a fixed point.
pub fn check_reading(r: &Reading) {
    assert!(!r.metrics.is_empty(), "a reading without metrics");
    assert!(
        r.metrics.len() <= MAX_METRICS,
        "{} metrics",
        r.metrics.len()
    );
    for (name, value) in &r.metrics {
        assert!(is_valid_metric_name(name), "metric name {name:?}");
        assert!(value.is_finite(), "{name} = {value}");
    }
    // Limits never panic, whatever the reading (default and disabled checks).
    let _ = Limits::default().check(r, now());
    let _ = Limits::none().check(r, now());

    let payload = r.to_payload();
    // Bounded: 64 metrics of ≤ 64-character names and ≤ 24-character numbers, plus `ts`.
    assert!(
        payload.len() <= 64 * (64 + 28) + 64,
        "{} bytes",
        payload.len()
    );
    let back = Reading::from_payload(&payload, &r.device, now()).unwrap_or_else(|e| {
        panic!(
            "the canonical payload {:?} of an accepted reading is refused: {e}",
            String::from_utf8_lossy(&payload)
        )
    });
    assert_eq!(back.device, r.device);
    assert_eq!(
        back.metrics, r.metrics,
        "metrics changed in the canonical payload"
    );
    // `ts` keeps microseconds, so compare it as the platform writes it.
    assert_eq!(format_ts(back.ts), format_ts(r.ts), "ts changed");
    assert_eq!(
        back.to_payload(),
        payload,
        "the canonical payload is not a fixed point"
    );
}

/// An error is one of the documented codes, and its message stays in proportion to the
/// input (it is echoed into HTTP bodies, TCP `ERR` lines and `{prefix}/{device}/error`).
pub fn check_error(e: &ReadingError, input_len: usize) {
    assert!(
        ReadingError::CODES.contains(&e.code()),
        "undocumented code {}",
        e.code()
    );
    let message = e.to_string();
    // `{:?}` escapes may turn one input byte into `\u{1f}` (7 characters).
    assert!(
        message.len() <= 8 * input_len + 256,
        "a {}-byte message for a {input_len}-byte input",
        message.len()
    );
}
