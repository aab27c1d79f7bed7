//! A telemetry payload as a board publishes it on `lentera/gh-1/telemetry` (or posts it
//! over HTTP): `Reading::from_payload`, the broker's first hop `stamp_payload`, and
//! `Reading::from_object_stamped` for a body that names its device.
//!
//! Properties: no panic; an accepted reading is well formed and its canonical payload
//! round-trips (`check_reading`); `stamp_payload` accepts exactly what `from_payload`
//! accepts, calls the stamp once at most and only for a reading without `ts`, and the
//! bytes it forwards read back as the reading it returned.
#![no_main]

use chrono::Duration;
use lentera_fuzz::{check_error, check_reading, gh1, now};
use lentera_protocol::Reading;
use lentera_protocol::reading::stamp_payload;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let dev = gh1();
    let parsed = Reading::from_payload(data, &dev, now());
    match &parsed {
        Ok(r) => {
            assert_eq!(r.device, dev);
            check_reading(r);
        }
        Err(e) => check_error(e, data.len()),
    }

    let stamp = now() + Duration::microseconds(7);
    let mut calls = 0;
    let stamped = stamp_payload(data, &dev, |d| {
        assert_eq!(d, &dev);
        calls += 1;
        stamp
    });
    assert!(calls <= 1, "stamped {calls} times");
    match (stamped, &parsed) {
        (Ok((r, out)), Ok(p)) => {
            assert_eq!(r.metrics, p.metrics);
            match out {
                None => {
                    assert_eq!(calls, 0, "stamped a reading that has a ts");
                    assert_eq!(r.ts, p.ts);
                }
                Some(out) => {
                    assert_eq!(calls, 1);
                    assert_eq!(r.ts, stamp);
                    // A 3-byte `1e5` may come back as `100000.0` when the object is
                    // rewritten (`"ts":null`); otherwise ~35 bytes are inserted.
                    assert!(out.len() <= 6 * data.len() + 64, "{} bytes", out.len());
                    let back = Reading::from_payload(&out, &dev, now()).unwrap_or_else(|e| {
                        panic!(
                            "stamped payload {:?} refused: {e}",
                            String::from_utf8_lossy(&out)
                        )
                    });
                    assert_eq!(back, r, "the stamped bytes say something else");
                }
            }
        }
        (Err(e), Err(p)) => assert_eq!(&e, p, "stamp_payload and from_payload disagree"),
        (s, p) => panic!("stamp_payload {s:?} but from_payload {p:?}"),
    }

    // An HTTP body element names its own device.
    if let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(data) {
        match Reading::from_object_stamped(&obj, None, |_| now()) {
            Ok(r) => check_reading(&r),
            Err(e) => check_error(&e, data.len()),
        }
    }
});
