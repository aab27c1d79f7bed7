//! MQTT 5.0 features through the real broker, driven by rumqttc's v5 client: subscription
//! options (Retain Handling, Retain As Published, No Local), subscription identifiers,
//! forwarded PUBLISH properties, message expiry, topic aliases, the will delay interval,
//! and reason strings on negative acknowledgements. Each test names the normative
//! statements it checks.
//!
//! "Nothing else arrived" is shown by a marker published afterwards: messages to one
//! subscriber keep their order, so when the marker comes next, nothing came before it.

mod common;

use std::time::{Duration, Instant};

use common::{Broker, WAIT};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Filter, LastWill, LastWillProperties, Packet, PubAck, PubAckReason, Publish,
    PublishProperties, RetainForwardRule, SubAck, SubscribeProperties, SubscribeReasonCode,
};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A rumqttc v5 client whose event loop forwards every incoming packet.
struct V5 {
    c: AsyncClient,
    rx: mpsc::UnboundedReceiver<Result<Packet, String>>,
    task: JoinHandle<()>,
    connack: ConnAck,
}

impl V5 {
    fn opts(broker: &Broker, id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(id, "127.0.0.1", broker.mqtt.port());
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    async fn new(broker: &Broker, id: &str) -> Self {
        Self::connect(Self::opts(broker, id)).await
    }

    /// Connects and waits for CONNACK. The event loop stops at the first error, so a
    /// closed client stays closed.
    async fn connect(o: MqttOptions) -> Self {
        let (c, mut el) = AsyncClient::new(o, 64);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let p = match el.poll().await {
                    Ok(Event::Incoming(p)) => Ok(p),
                    Ok(_) => continue,
                    Err(e) => Err(e.to_string()),
                };
                let stop = p.is_err();
                if tx.send(p).is_err() || stop {
                    return;
                }
            }
        });
        let connack = match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(Ok(Packet::ConnAck(c)))) => c,
            other => panic!("expected CONNACK, got {other:?}"),
        };
        Self {
            c,
            rx,
            task,
            connack,
        }
    }

    async fn next(&mut self, within: Duration) -> Option<Result<Packet, String>> {
        tokio::time::timeout(within, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// The first incoming packet `pick` accepts, within `WAIT`; panics on close.
    async fn expect<T>(&mut self, what: &str, pick: impl Fn(Packet) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Ok(p)) => {
                    if let Some(t) = pick(p) {
                        return t;
                    }
                }
                Some(Err(e)) => panic!("closed while waiting for {what}: {e}"),
                None => panic!("no {what} in time"),
            }
        }
    }

    async fn publish_in(&mut self) -> Publish {
        self.expect("PUBLISH", |p| match p {
            Packet::Publish(p) => Some(p),
            _ => None,
        })
        .await
    }

    async fn suback(&mut self) -> SubAck {
        self.expect("SUBACK", |p| match p {
            Packet::SubAck(s) => Some(s),
            _ => None,
        })
        .await
    }

    async fn puback(&mut self) -> PubAck {
        self.expect("PUBACK", |p| match p {
            Packet::PubAck(a) => Some(a),
            _ => None,
        })
        .await
    }

    /// Subscribes to one filter with its options and an optional identifier.
    async fn sub_filter(&mut self, f: Filter, id: Option<usize>) -> SubAck {
        let props = SubscribeProperties {
            id,
            user_properties: vec![],
        };
        self.c
            .subscribe_many_with_properties([f], props)
            .await
            .unwrap();
        self.suback().await
    }

    /// QoS 1 publish, waiting for its PUBACK.
    async fn send(&mut self, topic: &str, payload: &[u8], retain: bool, props: PublishProperties) {
        self.c
            .publish_with_properties(topic, QoS::AtLeastOnce, retain, payload.to_vec(), props)
            .await
            .unwrap();
        let ack = self.puback().await;
        assert_eq!(ack.reason, PubAckReason::Success, "{ack:?}");
    }

    /// Publishes until `marker` on `topic` comes back; returns what arrived before it.
    async fn drain_until_marker(&mut self, marker: &mut V5, topic: &str) -> Vec<Publish> {
        marker
            .send(topic, b"marker", false, PublishProperties::default())
            .await;
        let mut before = Vec::new();
        loop {
            let p = self.publish_in().await;
            if p.payload[..] == b"marker"[..] {
                return before;
            }
            before.push(p);
        }
    }

    /// Drops the socket without DISCONNECT.
    fn kill(self) {
        self.task.abort();
    }
}

fn filter(path: &str, qos: QoS) -> Filter {
    Filter::new(path, qos)
}

fn payloads(ps: &[Publish]) -> Vec<(String, bool)> {
    ps.iter()
        .map(|p| (String::from_utf8_lossy(&p.payload).into_owned(), p.retain))
        .collect()
}

fn sub_ids(p: &Publish) -> Vec<usize> {
    let mut ids = p
        .properties
        .as_ref()
        .map(|p| p.subscription_identifiers.clone())
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

/// [MQTT-3.3.1-9] Retain Handling 0 sends matching retained messages on every
/// SUBSCRIBE; [MQTT-3.3.1-10] 1 sends them only when the subscription is new;
/// [MQTT-3.3.1-11] 2 never sends them. [MQTT-3.3.1-8]-style: those sent because of a
/// subscription carry RETAIN=1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_handling_0_1_2_decides_whether_retained_messages_are_sent() {
    let broker = Broker::start().await;
    let mut p = V5::new(&broker, "rh-pub").await;
    p.send("rh/t", b"kept", true, PublishProperties::default())
        .await;
    let mut s = V5::new(&broker, "rh-sub").await;
    let step = async |s: &mut V5, p: &mut V5, f: &str, rule| {
        let mut f = filter(f, QoS::AtLeastOnce);
        f.retain_forward_rule = rule;
        let ack = s.sub_filter(f, None).await;
        assert_eq!(
            ack.return_codes,
            [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );
        payloads(&s.drain_until_marker(p, "rh/marker").await)
    };
    use RetainForwardRule::*;
    let kept = vec![("kept".to_owned(), true)];
    assert_eq!(step(&mut s, &mut p, "rh/#", OnEverySubscribe).await, kept);
    assert_eq!(
        step(&mut s, &mut p, "rh/#", OnEverySubscribe).await,
        kept,
        "RH=0 again"
    );
    assert_eq!(
        step(&mut s, &mut p, "rh/+", OnNewSubscribe).await,
        kept,
        "RH=1 new"
    );
    assert_eq!(
        step(&mut s, &mut p, "rh/+", OnNewSubscribe).await,
        vec![],
        "RH=1 existing"
    );
    assert_eq!(step(&mut s, &mut p, "rh/t", Never).await, vec![], "RH=2");
    broker.stop().await;
}

/// [MQTT-3.3.1-12] Retain As Published 0: forwarded with RETAIN=0; [MQTT-3.3.1-13] 1:
/// RETAIN as the publisher set it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_as_published_keeps_or_clears_the_retain_flag() {
    let broker = Broker::start().await;
    let mut keep = V5::new(&broker, "rap-1").await;
    let mut f = filter("rap/t", QoS::AtLeastOnce);
    f.preserve_retain = true;
    keep.sub_filter(f, None).await;
    let mut clear = V5::new(&broker, "rap-0").await;
    clear
        .sub_filter(filter("rap/t", QoS::AtLeastOnce), None)
        .await;
    let mut p = V5::new(&broker, "rap-pub").await;
    p.send("rap/t", b"r", true, PublishProperties::default())
        .await;
    p.send("rap/t", b"n", false, PublishProperties::default())
        .await;
    let got = |ps: [Publish; 2]| payloads(&ps);
    let k = [keep.publish_in().await, keep.publish_in().await];
    let c = [clear.publish_in().await, clear.publish_in().await];
    assert_eq!(got(k), [("r".to_owned(), true), ("n".to_owned(), false)]);
    assert_eq!(got(c), [("r".to_owned(), false), ("n".to_owned(), false)]);
    broker.stop().await;
}

/// The CONNACK announces subscription identifiers (absent or 1 = available, MQTT 5
/// §3.2.2.3.12); [MQTT-3.3.4-2] overlapping subscriptions give one copy at the highest
/// QoS; [MQTT-3.3.4-3]/[MQTT-3.3.4-4] that copy carries the identifiers of all matching
/// subscriptions; a retained message sent for a new subscription carries its identifier;
/// a subscription without one adds none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_identifiers_of_every_matching_subscription_come_in_one_copy() {
    let broker = Broker::start().await;
    let mut s = V5::new(&broker, "si-sub").await;
    let avail = s
        .connack
        .properties
        .as_ref()
        .and_then(|p| p.subscription_identifiers_available);
    assert_ne!(
        avail,
        Some(0),
        "subscription identifiers announced as unavailable"
    );
    s.sub_filter(filter("si/#", QoS::AtMostOnce), Some(7)).await;
    s.sub_filter(filter("si/+", QoS::AtLeastOnce), Some(9))
        .await;
    s.sub_filter(filter("si/x", QoS::AtMostOnce), None).await;
    let mut p = V5::new(&broker, "si-pub").await;
    p.send("si/x", b"both", false, PublishProperties::default())
        .await;
    p.send("si/y/z", b"deep", false, PublishProperties::default())
        .await;
    p.send("si/r", b"ret", true, PublishProperties::default())
        .await;
    let both = s.publish_in().await;
    assert_eq!(
        (&both.payload[..], both.qos),
        (&b"both"[..], QoS::AtLeastOnce)
    );
    assert_eq!(sub_ids(&both), [7, 9]);
    let deep = s.publish_in().await;
    assert_eq!((&deep.payload[..], sub_ids(&deep)), (&b"deep"[..], vec![7]));
    let ret = s.publish_in().await;
    assert_eq!((&ret.payload[..], sub_ids(&ret)), (&b"ret"[..], vec![7, 9]));

    // Only an identifier-less subscription matches: no identifier at all.
    let mut plain = V5::new(&broker, "si-plain").await;
    plain
        .sub_filter(filter("si/x", QoS::AtMostOnce), None)
        .await;
    // A new subscription's retained copy carries that subscription's identifier.
    plain
        .sub_filter(filter("si/r", QoS::AtMostOnce), Some(11))
        .await;
    let r = plain.publish_in().await;
    assert_eq!(
        (&r.payload[..], r.retain, sub_ids(&r)),
        (&b"ret"[..], true, vec![11])
    );
    p.send("si/x", b"plain", false, PublishProperties::default())
        .await;
    let m = plain.publish_in().await;
    assert_eq!((&m.payload[..], sub_ids(&m)), (&b"plain"[..], vec![]));
    // A shared subscription's copy carries its identifier too.
    plain
        .sub_filter(filter("$share/g/si/s", QoS::AtMostOnce), Some(13))
        .await;
    p.send("si/s", b"shared", false, PublishProperties::default())
        .await;
    let m = plain.publish_in().await;
    assert_eq!((&m.payload[..], sub_ids(&m)), (&b"shared"[..], vec![13]));
    broker.stop().await;
}

/// [MQTT-3.8.3-3] No Local: a client's own publications are not sent back to it, while
/// other subscribers still get them. [MQTT-3.8.3-4] No Local on a shared subscription is
/// refused (here: that filter's SUBACK code is a failure, with a reason string).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_local_hides_own_publications_only() {
    let broker = Broker::start().await;
    let mut me = V5::new(&broker, "nl-me").await;
    let mut f = filter("nl/t", QoS::AtLeastOnce);
    f.nolocal = true;
    me.sub_filter(f, None).await;
    let mut other = V5::new(&broker, "nl-other").await;
    other
        .sub_filter(filter("nl/t", QoS::AtLeastOnce), None)
        .await;
    me.send("nl/t", b"mine", false, PublishProperties::default())
        .await;
    assert_eq!(other.publish_in().await.payload, &b"mine"[..]);
    // The next thing `me` receives is someone else's message, not its own.
    let before = me.drain_until_marker(&mut other, "nl/t").await;
    assert_eq!(payloads(&before), vec![]);

    let mut f = filter("$share/g/nl/t", QoS::AtLeastOnce);
    f.nolocal = true;
    let ack = me.sub_filter(f, None).await;
    assert!(
        matches!(
            ack.return_codes[..],
            [SubscribeReasonCode::TopicFilterInvalid]
        ),
        "{ack:?}"
    );
    let why = ack
        .properties
        .and_then(|p| p.reason_string)
        .unwrap_or_default();
    assert!(why.contains("no_local"), "reason string: {why:?}");
    broker.stop().await;
}

fn rich_properties() -> PublishProperties {
    PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(b"\x00\x01corr".to_vec().into()),
        // Repeated names, in an order that sorting would change [MQTT-3.3.2-18].
        user_properties: vec![
            ("z".into(), "1".into()),
            ("a".into(), "2".into()),
            ("z".into(), "3".into()),
        ],
        ..Default::default()
    }
}

/// Forwarded unaltered: [MQTT-3.3.2-4] Payload Format Indicator, [MQTT-3.3.2-15]
/// Response Topic, [MQTT-3.3.2-16] Correlation Data, [MQTT-3.3.2-17] User Properties,
/// [MQTT-3.3.2-18] in their order, [MQTT-3.3.2-20] Content Type — live and from the
/// retained store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_properties_are_forwarded_unchanged_live_and_retained() {
    let broker = Broker::start().await;
    let mut s = V5::new(&broker, "pp-sub").await;
    s.sub_filter(filter("pp/t", QoS::AtLeastOnce), None).await;
    let mut p = V5::new(&broker, "pp-pub").await;
    p.send("pp/t", br#"{"v":1}"#, true, rich_properties()).await;
    let mut late = V5::new(&broker, "pp-late").await;
    late.sub_filter(filter("pp/t", QoS::AtLeastOnce), None)
        .await;
    for got in [s.publish_in().await, late.publish_in().await] {
        let mut props = got.properties.clone().expect("properties forwarded");
        props.topic_alias = None;
        assert_eq!(props, rich_properties(), "{got:?}");
        assert_eq!(got.payload, &br#"{"v":1}"#[..]);
    }
    broker.stop().await;
}

fn expiring(secs: u32) -> PublishProperties {
    PublishProperties {
        message_expiry_interval: Some(secs),
        ..Default::default()
    }
}

fn expiry_of(p: &Publish) -> Option<u32> {
    p.properties
        .as_ref()
        .and_then(|p| p.message_expiry_interval)
}

/// [MQTT-3.3.2-5] a message whose expiry interval has passed is not delivered — neither
/// from the retained store nor from an offline session's queue; [MQTT-3.3.2-6] what is
/// delivered carries the received interval minus the time it waited in the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_messages_are_not_delivered_and_the_rest_carry_the_remaining_interval() {
    let broker = Broker::start().await;
    let mut o = V5::opts(&broker, "me-away");
    o.set_clean_start(false)
        .set_session_expiry_interval(Some(600));
    let mut away = V5::connect(o.clone()).await;
    away.sub_filter(filter("me/q", QoS::AtLeastOnce), None)
        .await;
    away.c.disconnect().await.unwrap();
    assert!(away.next(WAIT).await.is_some_and(|r| r.is_err()), "closes");

    let mut live = V5::new(&broker, "me-live").await;
    live.sub_filter(filter("me/q", QoS::AtLeastOnce), None)
        .await;
    let mut p = V5::new(&broker, "me-pub").await;
    p.send("me/short", b"short", true, expiring(1)).await;
    p.send("me/long", b"long", true, expiring(100)).await;
    p.send("me/q", b"gone", false, expiring(1)).await;
    p.send("me/q", b"kept", false, PublishProperties::default())
        .await;
    p.send("me/q", b"later", false, expiring(100)).await;
    let first = live.publish_in().await;
    assert_eq!(&first.payload[..], b"gone");
    assert!(matches!(expiry_of(&first), Some(1)), "{first:?}");

    // Waiting is the point here: the short intervals must run out.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut late = V5::new(&broker, "me-late").await;
    late.sub_filter(filter("me/+", QoS::AtLeastOnce), None)
        .await;
    let got = late.drain_until_marker(&mut p, "me/marker").await;
    assert_eq!(payloads(&got), [("long".to_owned(), true)]);
    let left = expiry_of(&got[0]).expect("interval forwarded");
    assert!(
        (1..=99).contains(&left),
        "100 s less 1.5 s waited, got {left}"
    );

    // The sweeper forgets the expired retained message within about a second.
    let gauge = "lentera_broker_retained_messages 1\n";
    let deadline = Instant::now() + WAIT;
    while !broker.metrics().await.contains(gauge) {
        assert!(Instant::now() < deadline, "{}", broker.metrics().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut back = V5::connect(o).await;
    assert!(back.connack.session_present);
    let a = back.publish_in().await;
    let b = back.publish_in().await;
    assert_eq!(
        payloads(&[a, b.clone()]),
        [("kept".into(), false), ("later".into(), false)]
    );
    assert!(expiry_of(&b).is_some_and(|s| s <= 99), "{b:?}");
    broker.stop().await;
}

/// [MQTT-3.3.2-5] for an offline session: expired messages leave its queue while it is
/// away, so they do not use up its places (`session_queue_capacity`, here 2) and crowd
/// out what arrives later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_messages_do_not_hold_places_in_an_offline_sessions_queue() {
    let mut settings = lentera_broker::settings::Settings::default();
    // Not about identity: no registry, every client may connect (auth.open).
    settings.auth.open = true;
    settings.broker.mqtt_addr = "127.0.0.1:0".into();
    settings.broker.admin_addr = "127.0.0.1:0".into();
    settings.broker.data_dir = Default::default();
    settings.broker.session_queue_capacity = 2;
    let broker = Broker::start_with(settings).await;
    let mut o = V5::opts(&broker, "mq-away");
    o.set_clean_start(false)
        .set_session_expiry_interval(Some(600));
    let mut away = V5::connect(o.clone()).await;
    away.sub_filter(filter("mq/t", QoS::AtLeastOnce), None)
        .await;
    away.c.disconnect().await.unwrap();
    assert!(away.next(WAIT).await.is_some_and(|r| r.is_err()), "closes");

    let mut p = V5::new(&broker, "mq-pub").await;
    p.send("mq/t", b"old-1", false, expiring(1)).await;
    p.send("mq/t", b"old-2", false, expiring(1)).await;
    // Both places taken until the sweeper (once a second) sees them expired.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    p.send("mq/t", b"new", false, PublishProperties::default())
        .await;
    let mut back = V5::connect(o).await;
    assert!(back.connack.session_present);
    assert_eq!(back.publish_in().await.payload, &b"new"[..]);
    broker.stop().await;
}

/// A persistent session's subscription identifier, and an owed message's properties and
/// expiry, survive a broker restart (the on-disk store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_identifiers_and_expiry_survive_a_restart() {
    let dir = std::env::temp_dir().join(format!("lentera-v5-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let broker = Broker::start_with(Broker::settings_with_store(&dir)).await;
    let mut o = V5::opts(&broker, "dur-sub");
    o.set_clean_start(false)
        .set_session_expiry_interval(Some(600));
    let mut s = V5::connect(o.clone()).await;
    s.sub_filter(filter("dur/t", QoS::AtLeastOnce), Some(21))
        .await;
    s.c.disconnect().await.unwrap();
    assert!(s.next(WAIT).await.is_some_and(|r| r.is_err()), "closes");
    let mut p = V5::new(&broker, "dur-pub").await;
    let props = PublishProperties {
        user_properties: vec![("trace".into(), "abc".into())],
        ..expiring(100)
    };
    p.send("dur/t", b"owed", false, props).await;
    drop(p);
    broker.stop().await;

    let broker = Broker::start_with(Broker::settings_with_store(&dir)).await;
    let mut o2 = V5::opts(&broker, "dur-sub");
    o2.set_clean_start(false)
        .set_session_expiry_interval(Some(600));
    let mut s = V5::connect(o2).await;
    assert!(s.connack.session_present);
    let m = s.publish_in().await;
    assert_eq!((&m.payload[..], sub_ids(&m)), (&b"owed"[..], vec![21]));
    let props = m.properties.unwrap();
    assert_eq!(
        props.user_properties,
        [("trace".to_owned(), "abc".to_owned())]
    );
    assert!(
        props.message_expiry_interval.is_some_and(|e| e <= 100),
        "{props:?}"
    );
    let mut p = V5::new(&broker, "dur-pub").await;
    p.send("dur/t", b"new", false, PublishProperties::default())
        .await;
    let m = s.publish_in().await;
    assert_eq!((&m.payload[..], sub_ids(&m)), (&b"new"[..], vec![21]));
    broker.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Inbound topic aliases (MQTT 5 §3.3.2.3.4): the CONNACK announces a Topic Alias
/// Maximum above 0, a PUBLISH may set an alias and later ones may use it with an empty
/// topic name; the subscriber gets the full topic name either way. The broker sends no
/// aliases of its own, even to a client that allows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_topic_aliases_resolve_and_none_are_sent_outbound() {
    let broker = Broker::start().await;
    let mut o = V5::opts(&broker, "ta-sub");
    o.set_topic_alias_max(Some(10));
    let mut s = V5::connect(o).await;
    s.sub_filter(filter("ta/#", QoS::AtLeastOnce), None).await;
    let mut p = V5::new(&broker, "ta-pub").await;
    let max = p
        .connack
        .properties
        .as_ref()
        .and_then(|c| c.topic_alias_max);
    assert!(max.is_some_and(|m| m > 0), "Topic Alias Maximum {max:?}");
    let alias = |a| PublishProperties {
        topic_alias: Some(a),
        ..Default::default()
    };
    p.send("ta/long/topic/name", b"1", false, alias(1)).await;
    p.send("", b"2", false, alias(1)).await;
    for want in [&b"1"[..], b"2"] {
        let got = s.publish_in().await;
        assert_eq!(
            (&got.topic[..], &got.payload[..]),
            (&b"ta/long/topic/name"[..], want)
        );
        let sent_alias = got.properties.and_then(|p| p.topic_alias);
        assert_eq!(sent_alias, None, "the broker sent an outbound alias");
    }
    broker.stop().await;
}

fn will_client(broker: &Broker, id: &str, delay: u32, expiry: u32) -> MqttOptions {
    let mut o = V5::opts(broker, id);
    o.set_clean_start(true)
        .set_session_expiry_interval(Some(expiry));
    let props = LastWillProperties {
        delay_interval: Some(delay),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: vec![],
    };
    o.set_last_will(LastWill::new(
        format!("will/{id}"),
        "gone",
        QoS::AtLeastOnce,
        false,
        Some(props),
    ));
    o
}

/// Will Delay Interval: [MQTT-3.1.2-8] the will is published once the connection closed
/// and either the delay has passed or the session ended, whichever is first;
/// [MQTT-3.1.3-9] a new connection resuming the session before the delay cancels it.
///
/// - `late`: delay 2 s, session 60 s → after ~2 s (the sweeper ticks every second);
/// - `resumed`: delay 2 s, resumed at once → never;
/// - `short`: delay 60 s, session 1 s → when the session ends, after ~1 s;
/// - `ends`: delay 60 s, session 0 → at once (the session ends with the connection);
/// - `fresh`: delay 60 s, reconnects with clean start (ending the old session) → at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_delay_interval_defers_the_will_until_delay_or_session_end() {
    let broker = Broker::start().await;
    let mut watcher = V5::new(&broker, "will-watch").await;
    watcher
        .sub_filter(filter("will/#", QoS::AtLeastOnce), None)
        .await;
    let clients = [
        ("late", 2, 60),
        ("resumed", 2, 60),
        ("short", 60, 1),
        ("ends", 60, 0),
        ("fresh", 60, 60),
    ];
    let mut conns = Vec::new();
    for (id, delay, expiry) in clients {
        conns.push(V5::connect(will_client(&broker, id, delay, expiry)).await);
    }
    let t0 = Instant::now();
    for c in conns {
        c.kill();
    }
    // Reconnect only once the broker has seen all five go (else the new connection is a
    // takeover of a live one, which discards the will instead of deferring it).
    let deadline = Instant::now() + WAIT;
    while !broker
        .metrics()
        .await
        .contains("lentera_broker_connections 1\n")
    {
        assert!(Instant::now() < deadline, "{}", broker.metrics().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut o = will_client(&broker, "resumed", 2, 60);
    o.set_clean_start(false);
    let resumed = V5::connect(o).await;
    assert!(resumed.connack.session_present);
    let fresh = V5::connect(will_client(&broker, "fresh", 60, 60)).await;
    assert!(!fresh.connack.session_present);

    let mut seen = Vec::new();
    while seen.len() < 4 {
        let p = watcher.publish_in().await;
        seen.push((String::from_utf8(p.topic.to_vec()).unwrap(), t0.elapsed()));
    }
    let at = |id: &str| {
        seen.iter()
            .find(|(t, _)| *t == format!("will/{id}"))
            .unwrap_or_else(|| panic!("no will from {id}: {seen:?}"))
            .1
    };
    assert!(at("ends") < Duration::from_millis(1500), "{seen:?}");
    assert!(at("fresh") < Duration::from_millis(1500), "{seen:?}");
    let short = at("short");
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2900)).contains(&short),
        "{seen:?}"
    );
    let late = at("late");
    assert!(
        (Duration::from_millis(1900)..Duration::from_millis(3900)).contains(&late),
        "{seen:?}"
    );
    // `resumed` would have been due with `late`; nothing else comes.
    let more = watcher.next(Duration::from_millis(1500)).await;
    assert!(
        !matches!(more, Some(Ok(Packet::Publish(_)))),
        "unexpected: {more:?} after {seen:?}"
    );
    drop((resumed, fresh));
    broker.stop().await;
}

/// Negative acknowledgements say why: PUBACK 0x90 Topic Name invalid and 0x99 Payload
/// format invalid (MQTT 5 §3.4.2.1) and a SUBACK failure (§3.9.3), each with a reason
/// string (§3.4.2.2.2, §3.9.2.1.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_acks_carry_reason_codes_and_reason_strings() {
    let broker = Broker::start().await;
    let mut c = V5::new(&broker, "neg").await;
    // Nobody publishes under `$SYS/`. (An invalid topic name is not refused in a PUBACK
    // but with DISCONNECT 0x90: tests/conformance.rs.)
    c.c.publish("$SYS/broker/x", QoS::AtLeastOnce, false, b"x".to_vec())
        .await
        .unwrap();
    let ack = c.puback().await;
    assert_eq!(ack.reason, PubAckReason::NotAuthorized, "{ack:?}");
    let why = ack
        .properties
        .and_then(|p| p.reason_string)
        .unwrap_or_default();
    assert!(why.contains("not authorized"), "{why:?}");

    let utf8 = PublishProperties {
        payload_format_indicator: Some(1),
        ..Default::default()
    };
    c.c.publish_with_properties("neg/t", QoS::AtLeastOnce, false, vec![0xff, 0xfe], utf8)
        .await
        .unwrap();
    let ack = c.puback().await;
    assert_eq!(ack.reason, PubAckReason::PayloadFormatInvalid, "{ack:?}");
    assert!(ack.properties.and_then(|p| p.reason_string).is_some());

    let ack = c
        .sub_filter(filter("$share//empty-group", QoS::AtMostOnce), None)
        .await;
    assert!(
        matches!(
            ack.return_codes[..],
            [SubscribeReasonCode::TopicFilterInvalid]
        ),
        "{ack:?}"
    );
    let why = ack
        .properties
        .and_then(|p| p.reason_string)
        .unwrap_or_default();
    assert!(why.contains("$share//empty-group"), "{why:?}");
    // The connection survives all three.
    c.send("neg/ok", b"fine", false, PublishProperties::default())
        .await;

    // [MQTT-3.1.2-29] Request Problem Information 0: the codes, without reason strings.
    let mut o = V5::opts(&broker, "neg-quiet");
    o.set_request_problem_info(Some(0));
    let mut quiet = V5::connect(o).await;
    quiet
        .c
        .publish("$SYS/broker/x", QoS::AtLeastOnce, false, b"x".to_vec())
        .await
        .unwrap();
    let ack = quiet.puback().await;
    assert_eq!(ack.reason, PubAckReason::NotAuthorized, "{ack:?}");
    assert_eq!(ack.properties.and_then(|p| p.reason_string), None);
    let ack = quiet
        .sub_filter(filter("$share//empty-group", QoS::AtMostOnce), None)
        .await;
    assert_eq!(ack.properties.and_then(|p| p.reason_string), None);
    broker.stop().await;
}

/// Overlapping subscriptions on MQTT 3.1.1 as well: one copy, respecting the maximum QoS
/// of all matching subscriptions ([MQTT-3.3.5-1] in 3.1.1, [MQTT-3.3.4-2] in 5.0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_overlapping_subscriptions_get_one_copy_at_the_highest_qos() {
    let broker = Broker::start().await;
    let mut s = common::Client::v3(&broker, "ov3").await;
    assert_eq!(s.subscribe("ov/#", 0).await, 0);
    assert_eq!(s.subscribe("ov/+", 1).await, 1);
    let p = common::Client::v3(&broker, "ov3-pub").await;
    p.publish("ov/x", b"once", 1, false).await;
    p.publish("ov/x", b"marker", 0, false).await;
    let first = s.next_publish().await;
    assert_eq!((&first.payload[..], first.qos), (&b"once"[..], 1));
    assert_eq!(
        s.next_publish().await.payload,
        b"marker",
        "a second copy came"
    );
    broker.stop().await;
}
