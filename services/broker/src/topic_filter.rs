//! Topic names and topic filters: validation and matching, pure functions only.
//!
//! Kept free of I/O so the rules that decide who receives what are unit-tested against
//! the MQTT 3.1.1 / 5.0 spec statements they implement (cited as `[MQTT-x.y.z-n]`).

/// Why a topic name or filter was refused; also used as the log/metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    /// Topic names and filters are at least one character long [MQTT-4.7.3-1].
    Empty,
    /// A PUBLISH topic name must not contain wildcards [MQTT-3.3.2-2].
    WildcardInName,
    /// `#` must be last and occupy a whole level; `+` must occupy a whole level
    /// [MQTT-4.7.1-2] [MQTT-4.7.1-3].
    MisplacedWildcard,
    /// U+0000 is not allowed in topic strings [MQTT-4.7.3-2].
    NullCharacter,
    /// `$share/{group}/{filter}` with an empty or wildcard group, or no filter.
    BadSharedSubscription,
}

impl TopicError {
    pub fn code(self) -> &'static str {
        match self {
            TopicError::Empty => "empty",
            TopicError::WildcardInName => "wildcard_in_name",
            TopicError::MisplacedWildcard => "misplaced_wildcard",
            TopicError::NullCharacter => "null_character",
            TopicError::BadSharedSubscription => "bad_shared_subscription",
        }
    }
}

/// Checks a topic name a client publishes to.
pub fn validate_name(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a topic filter a client subscribes with (the part after any `$share/{group}/`).
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        match level {
            "#" if is_last => {}
            "+" => {}
            l if l.contains(['+', '#']) => return Err(TopicError::MisplacedWildcard),
            "#" => return Err(TopicError::MisplacedWildcard),
            _ => {}
        }
    }
    Ok(())
}

/// A subscription filter as given, split into its optional shared-subscription group and
/// the filter that is matched against topic names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// `Some("historian")` for `$share/historian/lentera/+/telemetry` (MQTT 5 §4.8.2):
    /// each message goes to one member of the group instead of to every member.
    pub group: Option<String>,
    /// What is matched: `lentera/+/telemetry`.
    pub pattern: String,
}

impl Filter {
    pub fn parse(raw: &str) -> Result<Self, TopicError> {
        if let Some(rest) = raw.strip_prefix("$share/") {
            let (group, pattern) = rest
                .split_once('/')
                .ok_or(TopicError::BadSharedSubscription)?;
            if group.is_empty() || group.contains(['+', '#']) || pattern.is_empty() {
                return Err(TopicError::BadSharedSubscription);
            }
            validate_filter(pattern)?;
            Ok(Filter {
                group: Some(group.to_owned()),
                pattern: pattern.to_owned(),
            })
        } else {
            validate_filter(raw)?;
            Ok(Filter {
                group: None,
                pattern: raw.to_owned(),
            })
        }
    }
}

/// True when `topic` (a valid topic name) matches `filter` (a valid filter).
pub fn matches(filter: &str, topic: &str) -> bool {
    // A filter starting with a wildcard must not match a topic starting with `$`, so that
    // `#` subscribers do not see `$SYS/…` broker internals [MQTT-4.7.2-1].
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            // `#` matches the parent level too: `a/#` matches `a` [MQTT-4.7.1-2].
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_level_wildcard_matches_parent_and_children() {
        // [MQTT-4.7.1-2] "sport/tennis/player1/#" matches "sport/tennis/player1" too.
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/score/wimbledon"
        ));
        assert!(matches("sport/#", "sport"));
        assert!(matches("#", "a/b/c"));
        assert!(!matches("sport/tennis/#", "sport/football"));
    }

    #[test]
    fn single_level_wildcard_matches_exactly_one_level() {
        // [MQTT-4.7.1-3] "sport/tennis/+" matches "sport/tennis/player1", not
        // "sport/tennis/player1/ranking"; "sport/+" does not match "sport" but does "sport/".
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(matches("lentera/+/telemetry", "lentera/gh-1/telemetry"));
        assert!(!matches("lentera/+/telemetry", "lentera/gh-1/status"));
    }

    #[test]
    fn exact_filters_match_only_the_same_topic() {
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
        assert!(
            !matches("a/b", "A/b"),
            "topics are case sensitive [MQTT-4.7.3-4]"
        );
    }

    #[test]
    fn leading_wildcards_do_not_match_dollar_topics() {
        // [MQTT-4.7.2-1]
        assert!(!matches("#", "$SYS/broker/clients"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS/broker/clients"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
    }

    #[test]
    fn filter_validation_follows_wildcard_placement_rules() {
        for ok in [
            "#",
            "+",
            "a/#",
            "a/+/b",
            "+/+",
            "/",
            "a//b",
            "$SYS/#",
            "sport/+/#",
        ] {
            assert_eq!(validate_filter(ok), Ok(()), "{ok}");
        }
        for bad in ["a#", "a/#/b", "#/a", "a+", "a/b+/c", "+a"] {
            assert_eq!(
                validate_filter(bad),
                Err(TopicError::MisplacedWildcard),
                "{bad}"
            );
        }
        assert_eq!(validate_filter(""), Err(TopicError::Empty));
        assert_eq!(validate_filter("a\0b"), Err(TopicError::NullCharacter));
    }

    #[test]
    fn topic_names_refuse_wildcards_and_empty() {
        assert_eq!(validate_name("lentera/gh-1/telemetry"), Ok(()));
        assert_eq!(validate_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_name("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_name(""), Err(TopicError::Empty));
    }

    #[test]
    fn shared_subscriptions_split_group_and_pattern() {
        let f = Filter::parse("$share/historian/lentera/+/telemetry").unwrap();
        assert_eq!(f.group.as_deref(), Some("historian"));
        assert_eq!(f.pattern, "lentera/+/telemetry");
        let plain = Filter::parse("lentera/#").unwrap();
        assert_eq!(plain.group, None);
        assert_eq!(
            Filter::parse("$share/g"),
            Err(TopicError::BadSharedSubscription)
        );
        assert_eq!(
            Filter::parse("$share//a"),
            Err(TopicError::BadSharedSubscription)
        );
        assert_eq!(
            Filter::parse("$share/g/a#"),
            Err(TopicError::MisplacedWildcard)
        );
    }
}
