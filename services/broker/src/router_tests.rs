//! Unit tests of the routing table (no sockets): delivery rules, retained store, sessions.

use super::*;
use crate::topic_filter::Filter;
use lentera_bootstrap::Observability;
use ntex_bytes::Bytes;
use std::time::Duration;

fn router() -> Router {
    Router::new(Metrics::new(&Observability::new("broker_test")))
}

type Rx = crate::outbox::Inbox;

/// Records whether the router kicked a connection.
#[derive(Clone, Default)]
struct Kicked(Arc<std::sync::atomic::AtomicBool>);

impl Kicked {
    fn kick(&self) -> Kick {
        let flag = self.0.clone();
        Box::new(move |_| flag.store(true, std::sync::atomic::Ordering::SeqCst))
    }

    fn get(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

const BOUNDS: crate::outbox::Bounds = crate::outbox::Bounds {
    qos0: 8,
    untracked: 8,
    bytes: usize::MAX,
};

fn register(r: &Router, client: &str) -> (ConnId, Rx, Kicked) {
    register_with(r, client, true, 0)
}

fn register_with(r: &Router, client: &str, clean_start: bool, expiry: u32) -> (ConnId, Rx, Kicked) {
    let (tx, rx) = crate::outbox::channel(BOUNDS, r.pressure().clone(), r.budget().clone(), || {});
    let kick = Kicked::default();
    let reg = Registration {
        client_id: client.into(),
        kick: kick.kick(),
        will: None,
        clean_start,
        expiry,
        device: false,
    };
    // Eagerly, as a first SUBSCRIBE would: from `connect` when it resumes a session
    // with something to deliver, else from `attach`.
    let tx = std::cell::Cell::new(Some(tx));
    let c = r.connect(reg, || tx.take().unwrap());
    if let Some(tx) = tx.take() {
        r.attach(c.id, || tx);
    }
    (c.id, rx, kick)
}

fn msg(topic: &'static str, payload: &'static str, qos: QoS, retain: bool) -> Message {
    Message {
        topic: ByteString::from_static(topic),
        payload: Bytes::from_static(payload.as_bytes()),
        qos,
        retain,
        properties: None,
    }
}

fn sub(filter: &str, qos: QoS) -> Subscription {
    Subscription {
        filter: Filter::parse(filter).unwrap(),
        qos,
        no_local: false,
        retain_as_published: false,
        id: None,
    }
}

#[test]
fn overlapping_subscriptions_deliver_once_at_the_highest_qos() {
    let r = router();
    let (id, rx, _) = register(&r, "a");
    r.subscribe(id, "x/#", sub("x/#", QoS::AtMostOnce), SendRetained::Always);
    r.subscribe(
        id,
        "x/+",
        sub("x/+", QoS::AtLeastOnce),
        SendRetained::Always,
    );
    r.publish(None, msg("x/y", "1", QoS::ExactlyOnce, false));
    let got = rx.try_recv().unwrap().msg;
    assert_eq!(got.qos, QoS::AtLeastOnce);
    assert!(rx.try_recv().is_none(), "delivered twice");
}

#[test]
fn retained_message_is_stored_replaced_and_deleted_by_empty_payload() {
    let r = router();
    r.publish(None, msg("s/1", "old", QoS::AtLeastOnce, true));
    r.publish(None, msg("s/1", "new", QoS::AtLeastOnce, true));
    let (id, rx, _) = register(&r, "late");
    r.subscribe(
        id,
        "s/+",
        sub("s/+", QoS::AtLeastOnce),
        SendRetained::Always,
    );
    let got = rx.try_recv().unwrap().msg;
    assert_eq!(&got.payload[..], b"new");
    assert!(got.retain);
    assert!(rx.try_recv().is_none());

    r.publish(None, msg("s/1", "", QoS::AtMostOnce, true));
    let (id2, rx2, _) = register(&r, "later");
    r.subscribe(
        id2,
        "s/#",
        sub("s/#", QoS::AtLeastOnce),
        SendRetained::Always,
    );
    assert!(
        rx2.try_recv().is_none(),
        "deleted retained message was delivered"
    );
    assert_eq!(r.metrics().retained.get(), 0);
}

#[test]
fn forwarded_copies_clear_the_retain_flag() {
    let r = router();
    let (id, rx, _) = register(&r, "a");
    r.subscribe(id, "s/1", sub("s/1", QoS::AtMostOnce), SendRetained::Always);
    r.publish(None, msg("s/1", "on", QoS::AtMostOnce, true));
    assert!(!rx.try_recv().unwrap().msg.retain);
}

#[test]
fn takeover_kicks_the_old_connection_and_discards_its_will() {
    let r = router();
    let kick = Kicked::default();
    let old = r
        .connect(
            Registration {
                client_id: "board".into(),
                kick: kick.kick(),
                clean_start: true,
                expiry: 0,
                device: false,
                will: Some(msg(
                    "lentera/board/status",
                    "offline",
                    QoS::AtLeastOnce,
                    true,
                )),
            },
            || unreachable!("a new session has nothing to deliver yet"),
        )
        .id;
    let (new, _rx2, _) = register(&r, "board");
    assert_ne!(old, new);
    assert!(
        r.disconnect(old).is_none(),
        "will of a taken-over connection survived"
    );
    assert_eq!(r.metrics().takeovers.get(), 1);
    assert!(kick.get(), "the old connection was not told");
}

#[test]
fn full_queue_drops_and_counts_instead_of_blocking() {
    let r = router();
    let (id, _rx, _) = register(&r, "slow");
    r.subscribe(id, "t", sub("t", QoS::AtMostOnce), SendRetained::Always);
    for _ in 0..10 {
        r.publish(None, msg("t", "x", QoS::AtMostOnce, false));
    }
    assert_eq!(r.metrics().dropped_queue_full.get(), 2);
}

#[test]
fn shared_subscription_delivers_to_one_member_per_message() {
    let r = router();
    let (a, mut rx_a, _) = register(&r, "h1");
    let (b, mut rx_b, _) = register(&r, "h2");
    for id in [a, b] {
        let f = "$share/hist/d/+";
        r.subscribe(id, f, sub(f, QoS::AtLeastOnce), SendRetained::Always);
    }
    r.publish(None, msg("d/1", "1", QoS::AtLeastOnce, false));
    r.publish(None, msg("d/1", "2", QoS::AtLeastOnce, false));
    let count = |rx: &mut Rx| std::iter::from_fn(|| rx.try_recv()).count();
    assert_eq!((count(&mut rx_a), count(&mut rx_b)), (1, 1));
}

fn router_with_capacity(cap: usize) -> Router {
    let limits = Limits {
        session_queue_capacity: cap,
        ..Limits::default()
    };
    let m = Metrics::new(&Observability::new("broker_test"));
    Router::with_store(m, Store::disabled(), Recovered::default(), limits)
}

#[test]
fn persistent_session_queues_while_offline_and_resends_unacked_in_order_with_dup() {
    let r = router_with_capacity(3);
    let (id, rx, _) = register_with(&r, "h", false, NEVER);
    r.subscribe(id, "t", sub("t", QoS::AtLeastOnce), SendRetained::Always);
    r.publish(None, msg("t", "1", QoS::AtLeastOnce, false));
    let first = rx.try_recv().unwrap();
    assert_eq!((first.seq, first.dup), (Some(1), false));
    assert!(r.disconnect(id).is_none());
    // Offline: QoS 1 queues (bounded: drop newest), QoS 0 does not.
    for p in ["2", "3", "4"] {
        r.publish(None, msg("t", p, QoS::AtLeastOnce, false));
    }
    r.publish(None, msg("t", "q0", QoS::AtMostOnce, false));
    assert_eq!(r.metrics().dropped_session_queue_full.get(), 1);
    let (id2, rx2, _) = register_with(&r, "h", false, NEVER);
    let got: Vec<_> = std::iter::from_fn(|| rx2.try_recv())
        .map(|o| (o.msg.payload.clone(), o.dup))
        .collect();
    assert_eq!(
        got,
        [
            (Bytes::from_static(b"1"), true),
            (Bytes::from_static(b"2"), false),
            (Bytes::from_static(b"3"), false)
        ]
    );
    // An acknowledgement from the connection that is gone completes nothing.
    r.ack(id, 1);
    r.ack(id2, 1);
    assert!(r.disconnect(id2).is_none());
    let (_, rx3, _) = register_with(&r, "h", false, NEVER);
    assert_eq!(rx3.try_recv().unwrap().msg.payload, "2");
}

#[test]
fn clean_start_discards_the_session_and_expiry_ends_it() {
    let r = router();
    let (id, _rx, _) = register_with(&r, "h", false, 1);
    r.subscribe(id, "t", sub("t", QoS::AtLeastOnce), SendRetained::Always);
    r.disconnect(id);
    r.publish(None, msg("t", "1", QoS::AtLeastOnce, false));
    assert_eq!(r.expire_sessions(Instant::now()), 0);
    assert_eq!(
        r.expire_sessions(Instant::now() + Duration::from_secs(2)),
        1
    );
    let (_, rx, _) = register_with(&r, "h", false, 1);
    assert!(rx.try_recv().is_none(), "expired session delivered");

    let (id, _rx, _) = register_with(&r, "k", false, NEVER);
    r.subscribe(id, "t", sub("t", QoS::AtLeastOnce), SendRetained::Always);
    r.disconnect(id);
    r.publish(None, msg("t", "1", QoS::AtLeastOnce, false));
    let (id, rx, _) = register_with(&r, "k", true, 0);
    assert!(rx.try_recv().is_none(), "clean start kept queued messages");
    r.publish(None, msg("t", "2", QoS::AtLeastOnce, false));
    assert!(rx.try_recv().is_none(), "clean start kept subscriptions");
    r.disconnect(id);
}

#[test]
fn offline_sessions_are_bounded_in_bytes_each_and_together_and_acks_give_bytes_back() {
    // Each "t" message of 9 payload bytes costs 10 (topic + payload).
    let limits = Limits {
        session_queue_bytes: 30,
        queued_bytes_total: 40,
        ..Limits::default()
    };
    let m = Metrics::new(&Observability::new("broker_test"));
    let r = Router::with_store(m, Store::disabled(), Recovered::default(), limits);
    let (a, _rx_a, _) = register_with(&r, "a", false, NEVER);
    r.subscribe(a, "t", sub("t", QoS::AtLeastOnce), SendRetained::Always);
    assert!(r.disconnect(a).is_none());
    let m9 = || msg("t", "123456789", QoS::AtLeastOnce, false);
    for _ in 0..3 {
        assert!(!r.publish_held(None, m9()).over_budget);
    }
    assert_eq!(r.budget().used(), 30, "a is at its own bound");
    let (b, rx_b, _) = register_with(&r, "b", false, NEVER);
    r.subscribe(b, "t", sub("t", QoS::AtLeastOnce), SendRetained::Always);
    // a's own bound refuses it for a; b (owed until acknowledged) takes it: total 40.
    assert!(!r.publish_held(None, m9()).over_budget);
    assert_eq!(r.metrics().dropped_queue_bytes.get(), 1);
    assert_eq!(r.budget().used(), 40);
    // Now the total refuses it for b, and the publisher hears of it.
    assert!(r.publish_held(None, m9()).over_budget);
    assert_eq!(r.metrics().dropped_queued_bytes_total.get(), 1);
    assert_eq!(r.metrics().queued_bytes.get(), 40);
    // b acknowledges what it got: the bytes come back and b queues again.
    let got: Vec<_> = std::iter::from_fn(|| rx_b.try_recv()).collect();
    assert_eq!(got.len(), 1);
    r.ack(b, got[0].seq.unwrap());
    assert_eq!(r.budget().used(), 30, "only a's owed messages are left");
    assert!(!r.publish_held(None, m9()).over_budget);
    // a's session ends (clean start): everything it held is given back.
    let (a2, _rx, _) = register_with(&r, "a", true, 0);
    assert!(r.disconnect(a2).is_none());
    assert_eq!(r.budget().used(), 10);
}

/// A SUBSCRIBE looks only under its filter's literal prefix (`retained_candidates`);
/// what it finds there must still be exactly what the filter matches, at the edges of
/// the prefix: the parent level of `a/#`, a sibling sharing the prefix's letters, `$`.
#[test]
fn retained_messages_found_by_prefix_are_exactly_the_matching_ones() {
    let r = router();
    for t in ["a", "a/b", "a/b/c", "ab", "ab/c", "b/b", "$SYS/a", "/a"] {
        r.publish(None, msg(t, t, QoS::AtMostOnce, true));
    }
    let cases: [(&str, &[&str]); 8] = [
        ("a", &["a"]),
        ("a/#", &["a", "a/b", "a/b/c"]),
        ("a/+", &["a/b"]),
        ("+/b", &["a/b", "b/b"]),
        ("#", &["/a", "a", "a/b", "a/b/c", "ab", "ab/c", "b/b"]),
        ("ab/#", &["ab", "ab/c"]),
        ("$SYS/#", &["$SYS/a"]),
        ("/+", &["/a"]),
    ];
    for (n, (filter, want)) in cases.into_iter().enumerate() {
        let (id, rx, _) = register(&r, &format!("c{n}"));
        r.subscribe(
            id,
            filter,
            sub(filter, QoS::AtMostOnce),
            SendRetained::Always,
        );
        let mut got = Vec::new();
        while let Some(o) = rx.try_recv() {
            got.push(o.msg.topic.to_string());
        }
        got.sort();
        assert_eq!(got, want, "retained messages for {filter}");
    }
}
