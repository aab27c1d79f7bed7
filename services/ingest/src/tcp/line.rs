//! The TCP line protocol's grammar, as a pure function (no I/O, unit-tested).
//!
//! One request per line, trailing whitespace (including the `\r` of CRLF) ignored:
//!
//! | line | meaning |
//! |---|---|
//! | `gh-1 temperature=27.3 humidity=61.2 [ts=<unix ms>]` | a reading |
//! | `temperature=27.3` | a reading of the device this connection is bound to |
//! | `{"device":"gh-1","temperature":27.3}` | a reading as JSON (`device` optional once bound) |
//! | `HELLO <device> [token]` | bind this connection to a device (relay target); the token is required unless ingest runs open |
//! | `AUTH <token>` | bind this connection to the token's device (boards that know only their token) |
//! | `PING` | liveness probe for boards that only listen; answered `PONG` |
//! | empty | ignored, no reply |
//!
//! Anything else is `ERR unknown_command …`: a bare word or a sentence such as the seed
//! sketch's greeting `Hai from ESP8266` is not mistaken for a reading (a reading line needs
//! `name=value` pairs), and the board still gets a reply line instead of silence.
//! Tokens travel as [`Secret`]s, whose `Debug` hides them.

use chrono::{DateTime, Utc};
use lentera_protocol::reading::ts_from_unix_ms;
use lentera_protocol::{DeviceId, Reading, ReadingError};
use serde_json::Value;

pub use crate::identity::Secret;

/// A well-formed request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Nothing to do and nothing to answer.
    Empty,
    Ping,
    Hello {
        device: DeviceId,
        token: Option<Secret>,
    },
    Auth {
        token: Secret,
    },
    Reading(Reading),
}

/// Why a line was refused; rendered as `ERR <code> <message>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// Stable, machine-readable; `ReadingError::code()` values or this module's own.
    pub code: &'static str,
    pub message: String,
}

impl LineError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn unknown_command() -> Self {
        Self::new(
            "unknown_command",
            "expected '<device> <metric>=<value> ...', a JSON object, 'HELLO <device> <token>', 'AUTH <token>' or 'PING'",
        )
    }

    pub fn not_utf8() -> Self {
        Self::new("not_utf8", "the line is not valid UTF-8")
    }

    /// The reply line (without newline). Newlines in the message are flattened so one
    /// request always gets exactly one reply line.
    pub fn reply(&self) -> String {
        let message: String = self
            .message
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        format!("ERR {} {}", self.code, message)
    }
}

impl From<ReadingError> for LineError {
    fn from(e: ReadingError) -> Self {
        Self::new(e.code(), e.to_string())
    }
}

/// Parses one line. `bound` is the device this connection said HELLO as, used when a
/// reading names no device; `stamp` gives a reading without `ts` its receive time, and
/// is called only for a reading that is otherwise valid.
pub fn parse(
    line: &str,
    bound: Option<&DeviceId>,
    stamp: impl FnOnce(&DeviceId) -> DateTime<Utc>,
) -> Result<Request, LineError> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(Request::Empty);
    }
    if line.starts_with('{') {
        return parse_json(line, bound, stamp);
    }
    let mut words = line.split_ascii_whitespace();
    let first = words.next().expect("a non-empty trimmed line has a word");
    if first.eq_ignore_ascii_case("HELLO") {
        return parse_hello(words.collect());
    }
    if first.eq_ignore_ascii_case("AUTH") {
        return match words.collect::<Vec<_>>().as_slice() {
            [token] => Ok(Request::Auth {
                token: Secret((*token).to_owned()),
            }),
            [] => Err(LineError::new("missing_token", "expected 'AUTH <token>'")),
            _ => Err(LineError::new(
                "too_many_arguments",
                "expected 'AUTH <token>'",
            )),
        };
    }
    if first.eq_ignore_ascii_case("PING") && words.clone().next().is_none() {
        return Ok(Request::Ping);
    }
    let rest: Vec<&str> = words.collect();
    if first.contains('=') {
        // Pairs only: the device is the bound one.
        let device = bound.cloned().ok_or(ReadingError::MissingDevice)?;
        let pairs = std::iter::once(first).chain(rest);
        return parse_pairs(device, pairs, stamp).map(Request::Reading);
    }
    if !rest.iter().any(|w| w.contains('=')) {
        return Err(LineError::unknown_command());
    }
    let device = DeviceId::parse(first).map_err(|_| ReadingError::InvalidDevice)?;
    parse_pairs(device, rest.into_iter(), stamp).map(Request::Reading)
}

fn parse_hello(args: Vec<&str>) -> Result<Request, LineError> {
    match args.as_slice() {
        [] => Err(ReadingError::MissingDevice.into()),
        [device, rest @ ..] if rest.len() <= 1 => Ok(Request::Hello {
            device: DeviceId::parse(device).map_err(|_| ReadingError::InvalidDevice)?,
            token: rest.first().map(|t| Secret((*t).to_owned())),
        }),
        _ => Err(LineError::new(
            "too_many_arguments",
            "expected 'HELLO <device> [token]'",
        )),
    }
}

fn parse_pairs<'a>(
    device: DeviceId,
    pairs: impl Iterator<Item = &'a str>,
    stamp: impl FnOnce(&DeviceId) -> DateTime<Utc>,
) -> Result<Reading, LineError> {
    let mut ts = None;
    let mut metrics = Vec::new();
    for pair in pairs {
        let (name, value) = pair.split_once('=').ok_or_else(|| {
            LineError::new(
                "malformed_pair",
                format!("{pair:?} is not a <metric>=<value> pair"),
            )
        })?;
        if name == "ts" {
            ts = Some(
                value
                    .parse::<i64>()
                    .ok()
                    .and_then(ts_from_unix_ms)
                    .ok_or(ReadingError::InvalidTimestamp)?,
            );
            continue;
        }
        let value: f64 = value
            .parse()
            .map_err(|_| ReadingError::NonNumeric(name.to_owned()))?;
        metrics.push((name.to_owned(), value));
    }
    let mut reading = Reading::new(device, DateTime::UNIX_EPOCH, metrics)?;
    reading.ts = match ts {
        Some(ts) => ts,
        None => stamp(&reading.device),
    };
    Ok(reading)
}

fn parse_json(
    line: &str,
    bound: Option<&DeviceId>,
    stamp: impl FnOnce(&DeviceId) -> DateTime<Utc>,
) -> Result<Request, LineError> {
    let value: Value =
        serde_json::from_str(line).map_err(|e| ReadingError::MalformedJson(e.to_string()))?;
    let obj = value.as_object().ok_or(ReadingError::NotAnObject)?;
    // A named device wins, so a gateway bound as itself can still forward other boards'
    // readings; without one, the bound device is the reading's device.
    let topic_device = if obj.contains_key("device") {
        None
    } else {
        bound
    };
    Ok(Request::Reading(Reading::from_object_stamped(
        obj,
        topic_device,
        stamp,
    )?))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap()
    }

    fn dev(s: &str) -> DeviceId {
        DeviceId::parse(s).unwrap()
    }

    fn reading(line: &str) -> Reading {
        match parse(line, None, |_| now()) {
            Ok(Request::Reading(r)) => r,
            other => panic!("{line:?} gave {other:?}"),
        }
    }

    fn code(line: &str) -> &'static str {
        parse(line, None, |_| now()).unwrap_err().code
    }

    #[test]
    fn a_good_line_is_a_reading_stamped_now() {
        let r = reading("gh-1 temperature=27.3 humidity=61.2");
        assert_eq!(r.device, dev("gh-1"));
        assert_eq!(r.ts, now());
        assert_eq!(r.metrics["temperature"], 27.3);
        assert_eq!(r.metrics["humidity"], 61.2);
    }

    #[test]
    fn only_a_valid_reading_without_ts_is_stamped() {
        let mut calls = Vec::new();
        for line in [
            "gh-1 t=1",
            r#"{"device":"gh-2","t":1}"#,
            "gh-1 t=1 ts=1700000000000",
            r#"{"device":"gh-2","t":1,"ts":1700000000000}"#,
            "gh-1 t=hot",
            r#"{"device":"gh-2","t":"x"}"#,
            "HELLO gh-3",
        ] {
            let _ = parse(line, None, |d| {
                calls.push(d.to_string());
                now()
            });
        }
        assert_eq!(calls, ["gh-1", "gh-2"]);
    }

    #[test]
    fn ts_is_unix_milliseconds() {
        let r = reading("gh-1 temperature=27.3 ts=1700000000123");
        assert_eq!(r.ts.timestamp_millis(), 1_700_000_000_123);
        assert!(!r.metrics.contains_key("ts"));
        assert_eq!(code("gh-1 t=1 ts=yesterday"), "invalid_timestamp");
    }

    #[test]
    fn crlf_and_extra_spaces_are_tolerated() {
        let r = reading("gh-1  temperature=27.3\r");
        assert_eq!(r.metrics["temperature"], 27.3);
        assert_eq!(
            parse("HELLO gh-1\r", None, |_| now()).unwrap(),
            Request::Hello {
                device: dev("gh-1"),
                token: None
            }
        );
    }

    #[test]
    fn a_json_line_is_a_reading() {
        let r = reading(r#"{"device":"gh-2","lux":3.1,"ts":"2026-11-22T01:00:00Z"}"#);
        assert_eq!(r.device, dev("gh-2"));
        assert_eq!(r.metrics["lux"], 3.1);
        assert_eq!(code(r#"{"lux":3.1}"#), "missing_device");
        assert_eq!(code(r#"{"device":"gh-2","lux":"x"}"#), "non_numeric_value");
        assert_eq!(code(r#"{"device":"#), "malformed_json");
    }

    #[test]
    fn a_bound_connection_may_omit_the_device() {
        let b = dev("lamp-3");
        let Ok(Request::Reading(r)) = parse("lux=2.5", Some(&b), |_| now()) else {
            panic!()
        };
        assert_eq!((r.device, r.metrics["lux"]), (b.clone(), 2.5));
        let Ok(Request::Reading(r)) = parse(r#"{"lux":1}"#, Some(&b), |_| now()) else {
            panic!()
        };
        assert_eq!(r.device, b);
        let Ok(Request::Reading(r)) = parse(r#"{"device":"gh-1","lux":1}"#, Some(&b), |_| now())
        else {
            panic!()
        };
        assert_eq!(r.device, dev("gh-1"));
        assert_eq!(code("lux=2.5"), "missing_device");
    }

    #[test]
    fn hello_and_auth_carry_hidden_tokens() {
        assert_eq!(
            parse("HELLO gh-1 s3cret", None, |_| now()).unwrap(),
            Request::Hello {
                device: dev("gh-1"),
                token: Some(Secret("s3cret".into()))
            }
        );
        assert_eq!(
            parse("auth lt_abc", None, |_| now()).unwrap(),
            Request::Auth {
                token: Secret("lt_abc".into())
            }
        );
        assert_eq!(code("AUTH"), "missing_token");
        assert_eq!(code("AUTH a b"), "too_many_arguments");
        let debug = format!("{:?}", parse("HELLO gh-1 s3cret", None, |_| now()));
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(matches!(
            parse("hello gh-1", None, |_| now()),
            Ok(Request::Hello { .. })
        ));
        assert_eq!(code("HELLO"), "missing_device");
        assert_eq!(code("HELLO a/b"), "invalid_device");
        assert_eq!(code("HELLO gh-1 tok extra"), "too_many_arguments");
    }

    #[test]
    fn a_bad_number_is_non_numeric() {
        assert_eq!(code("gh-1 temperature=hot"), "non_numeric_value");
        assert_eq!(code("gh-1 temperature="), "non_numeric_value");
        assert_eq!(code("gh-1 temperature=NaN"), "non_finite_value");
    }

    #[test]
    fn missing_metrics_and_bad_pairs_are_refused() {
        assert_eq!(code("gh-1 ts=1700000000000"), "no_metrics");
        assert_eq!(code("gh-1 temperature=1 humid"), "malformed_pair");
        assert_eq!(code("gh-1 bad!name=1"), "invalid_metric_name");
        assert_eq!(code("a/b temperature=1"), "invalid_device");
    }

    #[test]
    fn unknown_commands_get_an_error_not_silence() {
        for line in ["Hai from ESP8266", "gh-1", "GET / HTTP/1.1", "PING extra"] {
            assert_eq!(code(line), "unknown_command", "{line}");
        }
        let reply = LineError::unknown_command().reply();
        assert!(reply.starts_with("ERR unknown_command "), "{reply}");
    }

    #[test]
    fn empty_lines_and_ping() {
        assert_eq!(parse("", None, |_| now()).unwrap(), Request::Empty);
        assert_eq!(parse(" \r", None, |_| now()).unwrap(), Request::Empty);
        assert_eq!(parse("PING", None, |_| now()).unwrap(), Request::Ping);
    }

    #[test]
    fn replies_are_one_line() {
        let e = LineError::new("x", "a\nb\rc");
        assert_eq!(e.reply(), "ERR x a b c");
    }
}
