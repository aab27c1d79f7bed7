//! Topic rules: allow-lists of topic filters for publish and subscribe, with `%c`
//! (client id) and `%u` (user name) substituted per connection, and deny-lists that cut
//! holes in them (`lentera/#` but not `lentera/+/lamp/set`). A deny rule wins over any
//! allow rule: a topic it matches is not published, and a filter that could receive
//! any topic it matches is refused as a whole (a subscription is granted or not at
//! SUBACK; holes in a granted one would be invisible to the subscriber).
//!
//! A substituted value that is empty or contains `/`, `+`, `#` or U+0000 voids the rule
//! for that connection instead of widening it: a client calling itself `+` must not turn
//! `lentera/%c/#` into `lentera/+/#` (Mosquitto refuses the same way). `%u` for an
//! anonymous client voids the rule too.

use serde::Deserialize;

use crate::auth::Authorizer;
use crate::topic_filter::{matches, validate_filter};

/// Rule templates as written in the auth file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Rules {
    /// Topic filters the client may publish to (a topic is allowed when one matches).
    pub publish: Vec<String>,
    /// Topic filters the client may subscribe within (a filter is allowed when one rule
    /// covers every topic it can match).
    pub subscribe: Vec<String>,
    /// Topics refused for publishing even when a `publish` rule matches them.
    pub deny_publish: Vec<String>,
    /// Topics no subscription may reach: a filter that can match one is refused.
    pub deny_subscribe: Vec<String>,
}

impl Rules {
    /// Checks every template is a valid topic filter once substituted.
    pub fn validate(&self) -> Result<(), String> {
        let all = [
            &self.publish,
            &self.subscribe,
            &self.deny_publish,
            &self.deny_subscribe,
        ];
        for t in all.into_iter().flatten() {
            let sample = t.replace("%c", "c").replace("%u", "u");
            validate_filter(&sample).map_err(|e| format!("rule {t:?}: {}", e.code()))?;
        }
        Ok(())
    }

    /// These rules followed by `other`'s.
    pub fn and(&self, other: &Rules) -> Rules {
        let cat = |a: &[String], b: &[String]| a.iter().chain(b).cloned().collect();
        Rules {
            publish: cat(&self.publish, &other.publish),
            subscribe: cat(&self.subscribe, &other.subscribe),
            deny_publish: cat(&self.deny_publish, &other.deny_publish),
            deny_subscribe: cat(&self.deny_subscribe, &other.deny_subscribe),
        }
    }

    /// The concrete rules of one connection.
    pub fn for_client(&self, client_id: &str, username: Option<&str>) -> Acl {
        let expand = |ts: &[String]| {
            ts.iter()
                .filter_map(|t| substitute(t, client_id, username))
                .collect()
        };
        // A deny rule whose substitution is void is widened instead, to every value
        // (`%c` → `+`): a hole must not close because of what a client calls itself.
        let expand_deny = |ts: &[String]| {
            ts.iter()
                .map(|t| {
                    substitute(t, client_id, username)
                        .unwrap_or_else(|| t.replace("%c", "+").replace("%u", "+"))
                })
                .collect()
        };
        Acl {
            publish: expand(&self.publish),
            subscribe: expand(&self.subscribe),
            deny_publish: expand_deny(&self.deny_publish),
            deny_subscribe: expand_deny(&self.deny_subscribe),
        }
    }
}

/// One connection's rules, substitutions done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    pub deny_publish: Vec<String>,
    pub deny_subscribe: Vec<String>,
}

impl Authorizer for Acl {
    fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|rule| matches(rule, topic))
            && !self.deny_publish.iter().any(|rule| matches(rule, topic))
    }

    fn may_subscribe(&self, filter: &str) -> bool {
        self.subscribe.iter().any(|rule| covers(rule, filter))
            && !self
                .deny_subscribe
                .iter()
                .any(|rule| overlaps(rule, filter))
    }
}

/// True when some topic is matched by both filters (both valid): `lentera/#` and
/// `lentera/+/lamp/set` overlap, `lentera/gh-1/#` and `lentera/gh-2/#` do not. As in
/// matching, a leading wildcard does not reach `$`-topics [MQTT-4.7.2-1].
pub fn overlaps(a: &str, b: &str) -> bool {
    let dollar = |f: &str| f.starts_with('$');
    let wild = |f: &str| f.starts_with(['+', '#']);
    if (dollar(a) && wild(b)) || (dollar(b) && wild(a)) {
        return false;
    }
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            // `#` matches the parent level too: `a/#` and `a` share the topic `a`.
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some(l), Some(m)) if l == "+" || m == "+" || l == m => {}
            _ => return false,
        }
    }
}

/// `template` with `%c` and `%u` replaced, or `None` when a value could widen the rule.
fn substitute(template: &str, client_id: &str, username: Option<&str>) -> Option<String> {
    let safe = |v: &str| !v.is_empty() && !v.contains(['/', '+', '#', '\0']);
    let mut out = template.to_owned();
    if out.contains("%c") {
        if !safe(client_id) {
            return None;
        }
        out = out.replace("%c", client_id);
    }
    if out.contains("%u") {
        let u = username.filter(|u| safe(u))?;
        out = out.replace("%u", u);
    }
    Some(out)
}

/// True when every topic `filter` can match is also matched by `rule` (both valid
/// filters): `lentera/+/lamp/set` is covered by `lentera/#` and by itself, not by
/// `lentera/gh-1/#`. Like matching, a rule starting with a wildcard does not cover
/// `$`-topics [MQTT-4.7.2-1]: `#` does not grant `$SYS/#`.
pub fn covers(rule: &str, filter: &str) -> bool {
    if filter.starts_with('$') && rule.starts_with(['+', '#']) {
        return false;
    }
    let mut r = rule.split('/');
    let mut f = filter.split('/');
    loop {
        match (r.next(), f.next()) {
            // `a/#` also matches `a` itself [MQTT-4.7.1-2], so it covers `a` too.
            (Some("#"), _) => return true,
            // `+` covers one level of anything but `#` (which spans many).
            (Some("+"), Some(fl)) if fl != "#" => {}
            (Some(rl), Some(fl)) if rl == fl && rl != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(publish: &[&str], subscribe: &[&str]) -> Rules {
        Rules {
            publish: publish.iter().map(|s| s.to_string()).collect(),
            subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            ..Rules::default()
        }
    }

    #[test]
    fn client_id_and_username_are_substituted() {
        let r = rules(&["lentera/%c/#"], &["users/%u/+/in", "lentera/%c/lamp/set"]);
        let acl = r.for_client("gh-1", Some("alice"));
        assert!(acl.may_publish("lentera/gh-1/telemetry"));
        assert!(
            acl.may_publish("lentera/gh-1"),
            "`#` includes the parent level"
        );
        assert!(
            !acl.may_publish("lentera/gh-2/telemetry"),
            "another device's topic"
        );
        assert!(acl.may_subscribe("users/alice/x/in"));
        assert!(acl.may_subscribe("users/alice/+/in"));
        assert!(!acl.may_subscribe("users/bob/x/in"));
        assert!(acl.may_subscribe("lentera/gh-1/lamp/set"));
        assert!(
            !acl.may_subscribe("lentera/+/lamp/set"),
            "wider than the rule"
        );
    }

    #[test]
    fn values_with_separators_or_wildcards_void_the_rule() {
        let r = rules(&["lentera/%c/#", "u/%u"], &[]);
        for evil in ["+", "#", "a/b", "a+", ""] {
            let acl = r.for_client(evil, Some(evil));
            assert!(acl.publish.is_empty(), "{evil:?} gave {acl:?}");
            assert!(!acl.may_publish("lentera/gh-2/telemetry"));
        }
        let anonymous = r.for_client("gh-1", None);
        assert_eq!(anonymous.publish, vec!["lentera/gh-1/#".to_owned()]);
    }

    #[test]
    fn a_rule_covers_a_filter_only_when_it_matches_all_its_topics() {
        for (rule, filter) in [
            ("#", "a/b"),
            ("#", "#"),
            ("a/#", "a"),
            ("a/#", "a/+/c"),
            ("a/#", "a/#"),
            ("a/+", "a/b"),
            ("a/+", "a/+"),
            ("a/+/c", "a/+/c"),
            ("$SYS/#", "$SYS/broker/+"),
        ] {
            assert!(covers(rule, filter), "{rule} should cover {filter}");
        }
        for (rule, filter) in [
            ("a/+", "a/#"),
            ("a/b", "a/+"),
            ("a/b", "a/#"),
            ("a/+", "a/b/c"),
            ("a/b/#", "a/#"),
            ("a/b", "a"),
            ("#", "$SYS/#"),
            ("+/broker/#", "$SYS/broker/uptime"),
        ] {
            assert!(!covers(rule, filter), "{rule} must not cover {filter}");
        }
    }

    #[test]
    fn deny_rules_cut_holes_in_what_is_allowed() {
        let rules = Rules {
            publish: vec!["lentera/#".into()],
            subscribe: vec!["lentera/#".into()],
            deny_publish: vec!["lentera/+/lamp/set".into()],
            deny_subscribe: vec!["lentera/%c/secret".into()],
        };
        let acl = rules.for_client("gh-1", None);
        assert!(acl.may_publish("lentera/gh-1/telemetry"));
        assert!(!acl.may_publish("lentera/lamp-1/lamp/set"));
        assert!(acl.may_subscribe("lentera/+/telemetry"));
        assert!(!acl.may_subscribe("lentera/gh-1/secret"));
        // Could receive the denied topic: refused as a whole.
        assert!(!acl.may_subscribe("lentera/#"));
        assert!(!acl.may_subscribe("lentera/+/+"));
        assert!(acl.may_subscribe("lentera/gh-2/secret"), "another board's");
        // A client id that voids the substitution widens the hole instead.
        let odd = rules.for_client("a+b", None);
        assert!(!odd.may_subscribe("lentera/gh-2/secret"));
    }

    #[test]
    fn filters_overlap_when_some_topic_matches_both() {
        for (a, b, want) in [
            ("lentera/#", "lentera/+/lamp/set", true),
            ("lentera/gh-1/#", "lentera/gh-2/#", false),
            ("a/#", "a", true),
            ("a/+", "a", false),
            ("+/b", "a/+", true),
            ("#", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/b/c", "a/b", false),
        ] {
            assert_eq!(overlaps(a, b), want, "{a} vs {b}");
            assert_eq!(overlaps(b, a), want, "{b} vs {a}");
        }
    }

    #[test]
    fn templates_must_be_valid_filters() {
        assert!(rules(&["lentera/%c/#"], &["a/+/b"]).validate().is_ok());
        assert!(rules(&["lentera/#/x"], &[]).validate().is_err());
        assert!(rules(&[], &["a+"]).validate().is_err());
    }
}
