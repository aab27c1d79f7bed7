//! The subscription index: every session's subscriptions in one topic trie, so routing
//! a message costs the levels of its topic and the subscriptions it matches, not the
//! number of sessions (a village's ten thousand boards each hold a subscription to their
//! own command topic; a reading for one greenhouse must not look at all of them).
//!
//! One node per filter level: exact children by level, one `+` child, and at the node
//! where a filter ends its subscribers — those of the filter itself and those of the
//! filter followed by `/#` (which also matches the parent level [MQTT-4.7.1-2]). A
//! subscriber is a session's client id with its options; a shared subscription
//! (`$share/{group}/{filter}`) is one member of the group at its filter's node, so the
//! group is found as a whole and one member chosen. Topics starting with `$` are not
//! matched by a leading wildcard [MQTT-4.7.2-1].
//!
//! Subscribe and unsubscribe walk one filter's levels; ending a session walks its own
//! filters (the session's `subs` map, which stays the source of truth for persistence
//! and UNSUBSCRIBE). Empty nodes are pruned on the way back, so a board that comes and
//! goes leaves nothing behind.

use std::sync::Arc;

use ntex_mqtt::QoS;

use super::Subscription;
use super::small_map::SmallMap;
use crate::topic_filter::Filter;

/// What routing needs of one subscription (the rest lives in the session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Opts {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub id: Option<u32>,
}

impl From<&Subscription> for Opts {
    fn from(s: &Subscription) -> Self {
        Self {
            qos: s.qos,
            no_local: s.no_local,
            retain_as_published: s.retain_as_published,
            id: s.id,
        }
    }
}

/// A subscriber as the index holds it: its session's client id and options.
pub(super) type Member = (Arc<str>, Opts);

/// One match of a topic.
pub(super) enum Hit<'a> {
    /// A plain subscription of one session.
    Direct(&'a Arc<str>, Opts),
    /// A shared group: the message goes to one of its members.
    Group(&'a [Member]),
}

#[derive(Default)]
pub(super) struct Index {
    root: Node,
    /// Subscriptions held (plain and shared), for `/metrics` and `$SYS`.
    len: usize,
}

#[derive(Default)]
struct Node {
    children: SmallMap<Box<str>, Node>,
    plus: Option<Box<Node>>,
    /// Boxed and created on demand: most nodes are intermediate levels.
    subs: Option<Box<Subs>>,
}

#[derive(Default)]
struct Subs {
    /// The filter ends at this node.
    exact: Subscribers,
    /// The filter is this node's filter followed by `/#` (or is `#` at the root).
    multi: Subscribers,
}

#[derive(Default)]
struct Subscribers {
    direct: SmallMap<Arc<str>, Opts>,
    /// Group name → members, in subscription order (the round-robin walks them).
    shared: SmallMap<Box<str>, Vec<Member>>,
}

impl Subscribers {
    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.shared.is_empty()
    }

    /// Adds or replaces; returns whether it is new.
    fn insert(&mut self, client: &str, group: Option<&str>, opts: Opts) -> bool {
        match group {
            None => {
                let mut new = false;
                *self.direct.get_or_insert_with(client, || {
                    new = true;
                    opts
                }) = opts;
                new
            }
            Some(g) => {
                let members = self.shared.get_or_insert_with(g, Vec::new);
                if let Some(m) = members.iter_mut().find(|m| &*m.0 == client) {
                    m.1 = opts;
                    return false;
                }
                members.push((client.into(), opts));
                true
            }
        }
    }

    fn remove(&mut self, client: &str, group: Option<&str>) -> bool {
        match group {
            None => self.direct.remove(client).is_some(),
            Some(g) => {
                let Some(members) = self.shared.get_mut(g) else {
                    return false;
                };
                let before = members.len();
                members.retain(|m| &*m.0 != client);
                let removed = members.len() != before;
                if members.is_empty() {
                    self.shared.remove(g);
                }
                removed
            }
        }
    }

    fn collect<'a>(&'a self, out: &mut Vec<Hit<'a>>) {
        out.extend(self.direct.iter().map(|(c, o)| Hit::Direct(c, *o)));
        out.extend(self.shared.iter().map(|(_, m)| Hit::Group(m)));
    }
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.plus.is_none() && self.subs.is_none()
    }

    /// The subscribers of `levels` below this node, created on the way.
    fn insert(&mut self, levels: &[&str], client: &str, group: Option<&str>, opts: Opts) -> bool {
        match levels {
            [] | ["#"] => {
                let subs = self.subs.get_or_insert_default();
                let at = if levels.is_empty() {
                    &mut subs.exact
                } else {
                    &mut subs.multi
                };
                at.insert(client, group, opts)
            }
            ["+", rest @ ..] => self
                .plus
                .get_or_insert_default()
                .insert(rest, client, group, opts),
            [level, rest @ ..] => self
                .children
                .get_or_insert_with(*level, Node::default)
                .insert(rest, client, group, opts),
        }
    }

    /// Removes one subscriber below this node and prunes what it leaves empty.
    fn remove(&mut self, levels: &[&str], client: &str, group: Option<&str>) -> bool {
        match levels {
            [] | ["#"] => {
                let Some(subs) = &mut self.subs else {
                    return false;
                };
                let at = if levels.is_empty() {
                    &mut subs.exact
                } else {
                    &mut subs.multi
                };
                let removed = at.remove(client, group);
                if subs.exact.is_empty() && subs.multi.is_empty() {
                    self.subs = None;
                }
                removed
            }
            ["+", rest @ ..] => {
                let Some(plus) = &mut self.plus else {
                    return false;
                };
                let removed = plus.remove(rest, client, group);
                if plus.is_empty() {
                    self.plus = None;
                }
                removed
            }
            [level, rest @ ..] => {
                let Some(child) = self.children.get_mut(*level) else {
                    return false;
                };
                let removed = child.remove(rest, client, group);
                if child.is_empty() {
                    self.children.remove(*level);
                }
                removed
            }
        }
    }

    /// Every subscriber whose filter matches `rest` (the topic's remaining levels,
    /// `None` once all are consumed) below this node. `root_dollar`: at the root of a
    /// `$` topic, where wildcards do not match.
    fn collect<'a>(&'a self, rest: Option<&str>, root_dollar: bool, out: &mut Vec<Hit<'a>>) {
        if let Some(subs) = &self.subs {
            // `…/#` matches the parent level and everything below it.
            if !root_dollar {
                subs.multi.collect(out);
            }
            if rest.is_none() {
                subs.exact.collect(out);
            }
        }
        let Some(rest) = rest else {
            return;
        };
        let (level, rest) = match rest.split_once('/') {
            Some((level, rest)) => (level, Some(rest)),
            None => (rest, None),
        };
        if let Some(child) = self.children.get(level) {
            child.collect(rest, false, out);
        }
        if let Some(plus) = &self.plus
            && !root_dollar
        {
            plus.collect(rest, false, out);
        }
    }
}

impl Index {
    /// Adds `client`'s subscription to `filter`, or replaces its options.
    pub fn insert(&mut self, client: &str, filter: &Filter, opts: Opts) {
        let levels: Vec<&str> = filter.pattern.split('/').collect();
        if self
            .root
            .insert(&levels, client, filter.group.as_deref(), opts)
        {
            self.len += 1;
        }
    }

    pub fn remove(&mut self, client: &str, filter: &Filter) {
        let levels: Vec<&str> = filter.pattern.split('/').collect();
        if self.root.remove(&levels, client, filter.group.as_deref()) {
            self.len -= 1;
        }
    }

    /// Every subscription matching `topic` (a valid topic name), appended to `out`.
    pub fn matches<'a>(&'a self, topic: &str, out: &mut Vec<Hit<'a>>) {
        self.root.collect(Some(topic), topic.starts_with('$'), out);
    }

    pub fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic_filter::matches;
    use proptest::prelude::*;

    fn opts(qos: QoS) -> Opts {
        Opts {
            qos,
            no_local: false,
            retain_as_published: false,
            id: None,
        }
    }

    fn filter(raw: &str) -> Filter {
        match raw.strip_prefix("$share/") {
            Some(rest) => {
                let (g, p) = rest.split_once('/').unwrap();
                Filter {
                    group: Some(g.into()),
                    pattern: p.into(),
                }
            }
            None => Filter {
                group: None,
                pattern: raw.into(),
            },
        }
    }

    /// `(client, group)` of every hit, sorted: what the index says matches.
    fn hits(index: &Index, topic: &str) -> Vec<(String, Option<String>)> {
        let mut out = Vec::new();
        index.matches(topic, &mut out);
        let mut v = Vec::new();
        for h in out {
            match h {
                Hit::Direct(c, _) => v.push((c.to_string(), None)),
                Hit::Group(members) => {
                    for (c, _) in members {
                        v.push((c.to_string(), Some("g".to_string())));
                    }
                }
            }
        }
        v.sort();
        v
    }

    #[test]
    fn levels_wildcards_and_dollar_topics() {
        let mut i = Index::default();
        for (c, f) in [
            ("a", "lentera/+/telemetry"),
            ("b", "lentera/#"),
            ("c", "#"),
            ("d", "+/+/telemetry"),
            ("e", "$SYS/#"),
            ("f", "lentera/gh-1/telemetry"),
            ("g", "lentera/gh-1/telemetry/#"),
        ] {
            i.insert(c, &filter(f), opts(QoS::AtLeastOnce));
        }
        let names = |t| hits(&i, t).into_iter().map(|h| h.0).collect::<Vec<_>>();
        assert_eq!(
            names("lentera/gh-1/telemetry"),
            ["a", "b", "c", "d", "f", "g"]
        );
        assert_eq!(names("lentera"), ["b", "c"]);
        assert_eq!(names("$SYS/broker/uptime"), ["e"]);
        assert_eq!(names("other"), ["c"]);
        assert_eq!(i.len(), 7);
    }

    #[test]
    fn shared_members_and_pruning() {
        let mut i = Index::default();
        i.insert(
            "h1",
            &filter("$share/g/lentera/+/telemetry"),
            opts(QoS::AtLeastOnce),
        );
        i.insert(
            "h2",
            &filter("$share/g/lentera/+/telemetry"),
            opts(QoS::AtLeastOnce),
        );
        // A repeat replaces: still two members.
        i.insert(
            "h2",
            &filter("$share/g/lentera/+/telemetry"),
            opts(QoS::AtMostOnce),
        );
        let mut out = Vec::new();
        i.matches("lentera/x/telemetry", &mut out);
        let [Hit::Group(m)] = out.as_slice() else {
            panic!("one group expected");
        };
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].1.qos, QoS::AtMostOnce);
        drop(out);
        i.remove("h1", &filter("$share/g/lentera/+/telemetry"));
        i.remove("h2", &filter("$share/g/lentera/+/telemetry"));
        // Removing what is not there changes nothing.
        i.remove("h2", &filter("$share/g/lentera/+/telemetry"));
        assert_eq!(i.len(), 0);
        assert!(i.root.is_empty(), "empty nodes are pruned");
    }

    /// Levels drawn from a small alphabet so filters and topics collide often, with the
    /// corner cases: empty levels, `$` levels, wildcards.
    fn level() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["a", "b", "", "$s", "+", "#"])
    }

    fn path() -> impl Strategy<Value = Vec<&'static str>> {
        prop::collection::vec(level(), 1..5)
    }

    proptest! {
        /// The index agrees with the pure matcher it replaces, for every filter (valid
        /// ones: wildcards where the validator allows them) and topic name.
        #[test]
        fn index_agrees_with_linear_matching(
            filters in prop::collection::vec(path(), 1..12),
            topics in prop::collection::vec(path(), 1..12),
            removed in prop::collection::vec(any::<bool>(), 12),
        ) {
            let filters: Vec<String> = filters
                .into_iter()
                .map(|f| f.join("/"))
                .filter(|f| crate::topic_filter::validate_filter(f).is_ok())
                .collect();
            let mut index = Index::default();
            let mut kept = Vec::new();
            for (n, f) in filters.iter().enumerate() {
                let client = format!("c{n}");
                index.insert(&client, &filter(f), opts(QoS::AtMostOnce));
                if removed[n % removed.len()] {
                    index.remove(&client, &filter(f));
                } else {
                    kept.push((client, f.clone()));
                }
            }
            prop_assert_eq!(index.len(), kept.len());
            for t in topics {
                let topic = t.into_iter().filter(|l| *l != "+" && *l != "#").collect::<Vec<_>>().join("/");
                if crate::topic_filter::validate_name(&topic).is_err() {
                    continue;
                }
                let mut want: Vec<(String, Option<String>)> = kept
                    .iter()
                    .filter(|(_, f)| matches(f, &topic))
                    .map(|(c, _)| (c.clone(), None))
                    .collect();
                want.sort();
                prop_assert_eq!(hits(&index, &topic), want, "topic {:?}", topic);
            }
        }
    }
}
