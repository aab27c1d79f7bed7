//! Topics: lentera_protocol's `Topics` (build and parse under any prefix) and the
//! broker's topic names and filters (`lentera_broker::topic_filter`: validation,
//! `$share/` groups, wildcard matching).
//!
//! The input is `prefix \n topic \n filter` (UTF-8; anything else is skipped).
//! Properties: `Topics::parse` and `parse_error` invert the builders exactly; a topic
//! built for a valid device parses back; the filters the protocol builds are valid and
//! match its own topics; `matches` agrees with a plain level-by-level reference on every
//! valid name and filter; a valid name, used as a filter, matches itself.
#![no_main]

use lentera_broker::topic_filter::{Filter, TopicError, matches, validate_filter, validate_name};
use lentera_protocol::{DeviceId, TopicKind, Topics};
use libfuzzer_sys::fuzz_target;

const KINDS: [TopicKind; 5] = [
    TopicKind::Telemetry,
    TopicKind::LampSet,
    TopicKind::LampState,
    TopicKind::LampMode,
    TopicKind::Status,
];

/// MQTT §4.7 matching, written the obvious way, as the oracle for `matches`.
fn reference(filter: &[&str], topic: &[&str]) -> bool {
    match (filter.split_first(), topic.split_first()) {
        (Some((&"#", _)), _) => true,
        (Some((&"+", f)), Some((_, t))) => reference(f, t),
        (Some((fl, f)), Some((tl, t))) => fl == tl && reference(f, t),
        (None, None) => true,
        _ => false,
    }
}

fn reference_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    reference(&f, &t)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\n');
    let prefix = parts.next().unwrap_or("");
    let topic = parts.next().unwrap_or("");
    let filter = parts.next().unwrap_or("");

    // ---- lentera_protocol::topic ----
    let topics = Topics::new(prefix);
    assert!(!topics.prefix().ends_with('/'));
    if let Some((device, kind)) = topics.parse(topic) {
        assert_eq!(
            topics.topic(&device, kind),
            topic,
            "parse does not invert topic()"
        );
    }
    if let Some(device) = topics.parse_error(topic) {
        assert_eq!(
            topics.error(&device),
            topic,
            "parse_error does not invert error()"
        );
        assert_eq!(
            topics.parse(topic),
            None,
            "an error topic is not a TopicKind"
        );
    }
    // Any level of the input that is a device id makes topics that parse back.
    for level in topic.split('/').filter_map(|l| DeviceId::parse(l).ok()) {
        for kind in KINDS {
            let built = topics.topic(&level, kind);
            assert_eq!(topics.parse(&built), Some((level.clone(), kind)), "{built}");
            // What the services subscribe with reaches what the boards publish, as long
            // as the prefix is a valid topic level sequence.
            let sub = topics.filter(kind);
            if validate_name(&built).is_ok() {
                assert_eq!(validate_filter(&sub), Ok(()), "{sub}");
                assert!(matches(&sub, &built), "{sub} misses {built}");
            }
        }
        assert_eq!(
            topics.parse_error(&topics.error(&level)),
            Some(level.clone())
        );
    }

    // ---- lentera_broker::topic_filter ----
    let name_ok = validate_name(topic);
    match name_ok {
        Ok(()) => {
            assert!(!topic.is_empty() && !topic.contains(['+', '#', '\0']));
            // A name is a filter without wildcards, and matches itself.
            assert_eq!(validate_filter(topic), Ok(()));
            assert!(matches(topic, topic), "{topic:?} does not match itself");
            assert_eq!(matches("#", topic), !topic.starts_with('$'));
        }
        Err(TopicError::Empty) => assert!(topic.is_empty()),
        Err(TopicError::NullCharacter) => assert!(topic.contains('\0')),
        Err(TopicError::WildcardInName) => assert!(topic.contains(['+', '#'])),
        Err(e) => panic!("validate_name gave {e:?}"),
    }
    match Filter::parse(filter) {
        Ok(f) => {
            assert_eq!(validate_filter(&f.pattern), Ok(()));
            match &f.group {
                Some(g) => {
                    assert!(!g.is_empty() && !g.contains(['+', '#', '/']), "group {g:?}");
                    assert_eq!(filter, format!("$share/{g}/{}", f.pattern));
                }
                None => assert_eq!(f.pattern, filter),
            }
            if name_ok.is_ok() {
                assert_eq!(
                    matches(&f.pattern, topic),
                    reference_matches(&f.pattern, topic),
                    "filter {:?} topic {topic:?}",
                    f.pattern
                );
            }
        }
        Err(e) => {
            let _ = e.code();
            if !filter.starts_with("$share/") {
                assert_eq!(validate_filter(filter), Err(e));
            }
        }
    }
});
