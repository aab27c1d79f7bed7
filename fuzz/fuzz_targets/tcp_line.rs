//! One line of ingest's raw-TCP protocol (port 2004): `lentera_ingest::tcp::line::parse`,
//! on an unbound connection and on one bound by `HELLO gh-1`.
//!
//! Properties: no panic; every refusal renders as exactly one `ERR <code> …` line without
//! control characters; the stamp is called once, and only for a valid reading without
//! `ts`; an accepted reading is well formed and round-trips through its canonical
//! payload (`check_reading`), through a JSON line, and — written back as
//! `<device> name=value … ts=<ms>` — through the line grammar itself.
#![no_main]

use std::fmt::Write;

use chrono::Duration;
use lentera_fuzz::{check_reading, gh1, now};
use lentera_ingest::tcp::line::{Request, parse};
use lentera_protocol::{DeviceId, Reading};
use libfuzzer_sys::fuzz_target;

fn parse_now(line: &str, bound: Option<&DeviceId>) -> Result<Request, String> {
    parse(line, bound, |_| now()).map_err(|e| e.reply())
}

fn check(line: &str, bound: Option<&DeviceId>) {
    let stamp = now() + Duration::microseconds(3);
    let mut calls = 0;
    let result = parse(line, bound, |_| {
        calls += 1;
        stamp
    });
    assert!(calls <= 1, "stamped {calls} times");
    match result {
        Ok(Request::Empty) => {
            assert!(line.trim().is_empty());
            assert_eq!(calls, 0);
        }
        Ok(Request::Ping) => assert_eq!(calls, 0),
        Ok(Request::Hello { device, token }) => {
            assert_eq!(calls, 0);
            assert!(line.contains(device.as_str()));
            if let Some(t) = token {
                // Words split at ASCII whitespace (a token may hold other bytes; the
                // registry refuses it).
                assert!(
                    !t.0.is_empty() && !t.0.contains(|c: char| c.is_ascii_whitespace()),
                    "{t:?}"
                );
            }
        }
        Ok(Request::Auth { token }) => {
            assert_eq!(calls, 0);
            assert!(
                !token.0.is_empty() && !token.0.contains(|c: char| c.is_ascii_whitespace()),
                "{token:?}"
            );
        }
        Ok(Request::Reading(r)) => {
            if calls == 1 {
                assert_eq!(r.ts, stamp);
            }
            if let Some(b) = bound
                && !line.contains("device")
            {
                // Only a JSON line with a "device" can name another device.
                assert!(r.device == *b || line.contains(r.device.as_str()));
            }
            check_reading(&r);
            round_trip(&r, bound);
        }
        Err(e) => {
            assert_eq!(calls, 0, "stamped a refused line");
            let reply = e.reply();
            assert!(reply.starts_with("ERR "), "{reply:?}");
            assert!(!reply.contains(char::is_control), "{reply:?}");
            assert!(
                !e.code.is_empty() && e.code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "code {:?}",
                e.code
            );
            assert!(reply.len() <= 8 * line.len() + 256, "{} bytes", reply.len());
        }
    }
}

/// The reading written back in both of the line protocol's forms parses to itself.
fn round_trip(r: &Reading, bound: Option<&DeviceId>) {
    let json = String::from_utf8(r.to_payload()).expect("JSON is UTF-8");
    match parse_now(&json, Some(&r.device)) {
        Ok(Request::Reading(back)) => {
            assert_eq!(back.metrics, r.metrics);
            assert_eq!(back.device, r.device);
        }
        other => panic!("{json:?} gave {other:?}"),
    }
    // The text form carries whole milliseconds only.
    if r.ts.timestamp_subsec_nanos() % 1_000_000 != 0 {
        return;
    }
    let mut text = String::from(r.device.as_str());
    for (name, value) in &r.metrics {
        // `{}` on f64 prints the shortest text that parses back to the same value.
        write!(text, " {name}={value}").unwrap();
    }
    write!(text, " ts={}", r.ts.timestamp_millis()).unwrap();
    match parse_now(&text, bound) {
        Ok(Request::Reading(back)) => assert_eq!(&back, r, "{text:?}"),
        other => panic!("{text:?} gave {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    // ingest answers `ERR not_utf8` before the grammar sees bytes that are not UTF-8,
    // and splits at '\n' first.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let line = text.split('\n').next().unwrap_or("");
    check(line, None);
    check(line, Some(&gh1()));
});
