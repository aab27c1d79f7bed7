//! Publish/subscribe through the real broker with real MQTT 3.1.1 and 5 clients.

mod common;

use std::time::Duration;

use common::{Broker, Client, reading};

const QUIET: Duration = Duration::from_millis(400);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_qos0_and_qos1_reach_subscriber_and_qos1_publisher_gets_puback() {
    let broker = Broker::start().await;
    let mut sub = Client::v3(&broker, "sub").await;
    assert_eq!(sub.subscribe("lentera/gh-1/telemetry", 1).await, 1);
    let mut publisher = Client::v3(&broker, "pub").await;

    publisher
        .publish("lentera/gh-1/telemetry", &reading(1), 0, false)
        .await;
    let m = sub.next_publish().await;
    assert_eq!(
        (m.topic.as_str(), m.payload, m.qos),
        ("lentera/gh-1/telemetry", reading(1), 0)
    );

    publisher
        .publish("lentera/gh-1/telemetry", &reading(2), 1, false)
        .await;
    publisher.expect_puback().await;
    let m = sub.next_publish().await;
    assert_eq!((m.payload, m.qos, m.retain), (reading(2), 1, false));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_qos0_and_qos1_reach_subscriber_with_user_properties() {
    use rumqttc::v5::mqttbytes::{QoS, v5::PublishProperties};
    let broker = Broker::start().await;
    let mut sub = Client::v5(&broker, "sub5").await;
    assert_eq!(sub.subscribe("lentera/+/telemetry", 1).await, 1);
    let mut publisher = Client::v5(&broker, "pub5").await;

    publisher
        .publish("lentera/gh-2/telemetry", &reading(1), 0, false)
        .await;
    let m = sub.next_publish().await;
    assert_eq!(
        (m.topic.as_str(), m.payload, m.qos),
        ("lentera/gh-2/telemetry", reading(1), 0)
    );

    // Trace context travels in MQTT 5 user properties; the broker must forward them.
    let props = PublishProperties {
        user_properties: vec![("traceparent".into(), "00-abc-def-01".into())],
        ..Default::default()
    };
    publisher
        .v5_client()
        .publish_with_properties(
            "lentera/gh-2/telemetry",
            QoS::AtLeastOnce,
            false,
            reading(2),
            props,
        )
        .await
        .unwrap();
    publisher.expect_puback().await;
    let m = sub.next_publish().await;
    assert_eq!((m.payload, m.qos), (reading(2), 1));
    assert_eq!(
        m.user_properties,
        vec![("traceparent".to_string(), "00-abc-def-01".to_string())]
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_and_v5_clients_exchange_messages() {
    let broker = Broker::start().await;
    let mut v3 = Client::v3(&broker, "old").await;
    let mut v5 = Client::v5(&broker, "new").await;
    v3.subscribe("from/v5", 1).await;
    v5.subscribe("from/v3", 1).await;
    v3.publish("from/v3", b"hi5", 1, false).await;
    v5.publish("from/v5", b"hi3", 1, false).await;
    assert_eq!(v5.next_publish().await.payload, b"hi5");
    assert_eq!(v3.next_publish().await.payload, b"hi3");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_match_per_spec_and_dollar_topics_are_hidden_from_leading_wildcards() {
    let broker = Broker::start().await;
    let mut plus = Client::v3(&broker, "plus").await;
    let mut hash = Client::v5(&broker, "hash").await;
    let mut all = Client::v3(&broker, "all").await;
    let mut sys = Client::v3(&broker, "sys").await;
    plus.subscribe("lentera/+/status", 0).await;
    hash.subscribe("lentera/#", 0).await;
    all.subscribe("#", 0).await;
    // Any `$` topic; clients may not publish under `$SYS/` itself (see tests/sys.rs).
    sys.subscribe("$ops/#", 0).await;
    let publisher = Client::v3(&broker, "p").await;

    publisher
        .publish("$ops/broker/uptime", b"1", 0, false)
        .await;
    publisher
        .publish("lentera/gh-1/lamp/state", b"on", 0, false)
        .await;
    publisher
        .publish("lentera/gh-1/status", b"online", 0, false)
        .await;

    assert_eq!(sys.next_publish().await.topic, "$ops/broker/uptime");
    // `#` sees the two lentera topics, in order, and never the `$SYS` one [MQTT-4.7.2-1].
    assert_eq!(all.next_publish().await.topic, "lentera/gh-1/lamp/state");
    assert_eq!(all.next_publish().await.topic, "lentera/gh-1/status");
    assert_eq!(all.try_next_publish(QUIET).await, None);
    assert_eq!(hash.next_publish().await.topic, "lentera/gh-1/lamp/state");
    assert_eq!(hash.next_publish().await.topic, "lentera/gh-1/status");
    // `+` matches exactly one level: not `lamp/state`.
    assert_eq!(plus.next_publish().await.topic, "lentera/gh-1/status");
    assert_eq!(plus.try_next_publish(QUIET).await, None);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_reaches_late_subscriber_and_empty_payload_deletes_it() {
    let broker = Broker::start().await;
    let mut publisher = Client::v3(&broker, "board").await;
    publisher
        .publish("lentera/lamp-1/lamp/state", b"off", 1, true)
        .await;
    publisher.expect_puback().await;
    publisher
        .publish("lentera/lamp-1/lamp/state", b"on", 1, true)
        .await;
    publisher.expect_puback().await;

    // Late subscribers of both versions get the latest value, flagged as retained.
    let mut late3 = Client::v3(&broker, "late3").await;
    late3.subscribe("lentera/+/lamp/state", 1).await;
    let m = late3.next_publish().await;
    assert_eq!((&m.payload[..], m.retain, m.qos), (&b"on"[..], true, 1));
    assert_eq!(
        late3.try_next_publish(QUIET).await,
        None,
        "replaced value was kept"
    );
    let mut late5 = Client::v5(&broker, "late5").await;
    late5.subscribe("lentera/#", 0).await;
    let m = late5.next_publish().await;
    assert_eq!((&m.payload[..], m.retain, m.qos), (&b"on"[..], true, 0));

    // A live subscriber sees new retained publications with RETAIN cleared [MQTT-3.3.1-9].
    publisher
        .publish("lentera/lamp-1/lamp/state", b"", 1, true)
        .await;
    publisher.expect_puback().await;
    let m = late3.next_publish().await;
    assert_eq!((&m.payload[..], m.retain), (&b""[..], false));

    let mut later = Client::v3(&broker, "later").await;
    later.subscribe("lentera/#", 1).await;
    assert_eq!(
        later.try_next_publish(QUIET).await,
        None,
        "deleted retained message delivered"
    );
    assert!(
        broker
            .metrics()
            .await
            .contains("lentera_broker_retained_messages 0\n")
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_publisher_is_served_and_effective_qos_is_min_of_published_and_granted() {
    // [MQTT-3.8.4-6] (3.1.1) / [MQTT-3.8.4-8] (5.0): delivered at min(published, granted).
    let broker = Broker::start().await;
    let mut sub = Client::v3(&broker, "s").await;
    assert_eq!(sub.subscribe("q2/#", 1).await, 1);
    let mut sub5 = Client::v5(&broker, "s5").await;
    assert_eq!(sub5.subscribe("q2/#", 1).await, 1);
    let p3 = Client::v3(&broker, "p3").await;
    let p5 = Client::v5(&broker, "p5").await;
    p3.publish("q2/a", b"3", 2, false).await;
    p5.publish("q2/b", b"5", 2, false).await;
    for s in [&mut sub, &mut sub5] {
        let mut got = [s.next_publish().await, s.next_publish().await];
        got.sort_by(|a, b| a.topic.cmp(&b.topic));
        assert_eq!((got[0].topic.as_str(), got[0].qos), ("q2/a", 1));
        assert_eq!((got[1].topic.as_str(), got[1].qos), ("q2/b", 1));
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery() {
    let broker = Broker::start().await;
    let mut sub = Client::v3(&broker, "u").await;
    sub.subscribe("t/1", 0).await;
    let p = Client::v3(&broker, "p").await;
    p.publish("t/1", b"a", 0, false).await;
    assert_eq!(sub.next_publish().await.payload, b"a");
    sub.unsubscribe("t/1").await;
    p.publish("t/1", b"b", 0, false).await;
    assert_eq!(sub.try_next_publish(QUIET).await, None);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_report_health_readiness_and_metrics() {
    let broker = Broker::start().await;
    let ready = reqwest::get(format!("http://{}/readyz", broker.admin))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let health = reqwest::get(format!("http://{}/healthz", broker.admin))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    let mut sub = Client::v3(&broker, "m").await;
    sub.subscribe("m/#", 1).await;
    let p = Client::v3(&broker, "mp").await;
    p.publish("m/1", b"x", 1, false).await;
    sub.next_publish().await;
    let text = broker.metrics().await;
    assert!(text.contains("lentera_broker_connections 2\n"), "{text}");
    assert!(
        text.contains("lentera_broker_messages_received_total 1\n"),
        "{text}"
    );
    assert!(
        text.contains("lentera_broker_messages_delivered_total 1\n"),
        "{text}"
    );
    broker.stop().await;
}

/// Shared subscriptions (MQTT 5 §4.8.2): each message matching `$share/{group}/{filter}`
/// goes to one member of the group, the members take turns, a plain subscription to the
/// same filter still gets every message, and a member that leaves gets no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_subscription_gives_each_message_to_one_member_in_turn() {
    let broker = Broker::start().await;
    let mut m1 = Client::v5(&broker, "member-1").await;
    let mut m2 = Client::v5(&broker, "member-2").await;
    let mut m3 = Client::v3(&broker, "member-3-v311").await;
    for m in [&mut m1, &mut m2, &mut m3] {
        assert_eq!(m.subscribe("$share/g/sh/#", 1).await, 1);
    }
    let mut plain = Client::v3(&broker, "plain").await;
    plain.subscribe("sh/#", 1).await;
    let mut p = Client::v3(&broker, "sh-pub").await;
    const N: usize = 30;
    for n in 0..N {
        p.publish("sh/x", format!("{n}").as_bytes(), 1, false).await;
        p.expect_puback().await;
    }
    let mut got = Vec::new();
    for m in [&mut m1, &mut m2, &mut m3] {
        let mut mine = Vec::new();
        while let Some(msg) = m.try_next_publish(QUIET).await {
            mine.push(String::from_utf8(msg.payload).unwrap());
        }
        assert!(!mine.is_empty(), "a member got no share: {got:?}");
        got.push(mine);
    }
    let mut all: Vec<usize> = got.iter().flatten().map(|p| p.parse().unwrap()).collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..N).collect::<Vec<_>>(),
        "each message to exactly one member"
    );
    for _ in 0..N {
        plain.next_publish().await;
    }

    // A member that leaves gets no more; the others share what follows.
    m3.disconnect().await;
    for n in N..N + 10 {
        p.publish("sh/x", format!("{n}").as_bytes(), 1, false).await;
        p.expect_puback().await;
    }
    let mut rest = 0;
    for m in [&mut m1, &mut m2] {
        while m.try_next_publish(QUIET).await.is_some() {
            rest += 1;
        }
    }
    assert_eq!(rest, 10, "the remaining members took every later message");
    broker.stop().await;
}
