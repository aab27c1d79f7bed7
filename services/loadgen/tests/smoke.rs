//! Smoke tests: short runs of every mode against our broker (a real `lentera-broker`
//! process from `lentera_tests::TestBroker`), checking the numbers add up.

use std::time::Duration;

use lentera_loadgen::connections::{self, ConnConfig};
use lentera_loadgen::pubsub::{self, PubSubConfig, Topics};
use lentera_tests::TestBroker;
use rumqttc::QoS;

#[tokio::test]
async fn throughput_at_qos1_delivers_every_acknowledged_message() {
    let broker = TestBroker::start();
    let r = pubsub::run(PubSubConfig {
        publishers: 2,
        subscribers: 2,
        qos: QoS::AtLeastOnce,
        count: Some(500),
        duration: Duration::from_secs(10),
        ..PubSubConfig::new("127.0.0.1", broker.port())
    })
    .await
    .unwrap();
    assert_eq!(r.sent, 1000, "{}", r.human("throughput"));
    assert_eq!(r.acked, 1000);
    // Shared topic: each of the 2 subscribers gets every message.
    assert_eq!(r.expected, 2000);
    assert_eq!(r.lost(), 0, "{}", r.human("throughput"));
    assert_eq!(r.delivered - r.duplicates, 2000);
    assert!(r.delivered_rate() > 0.0);
    assert_eq!(r.latency.samples as u64, r.delivered);
}

#[tokio::test]
async fn fan_in_on_distinct_topics_reaches_the_one_subscriber() {
    let broker = TestBroker::start();
    let r = pubsub::run(PubSubConfig {
        publishers: 4,
        subscribers: 1,
        topics: Topics::Distinct,
        qos: QoS::AtLeastOnce,
        count: Some(200),
        ..PubSubConfig::new("127.0.0.1", broker.port())
    })
    .await
    .unwrap();
    assert_eq!(
        (r.expected, r.lost()),
        (800, 0),
        "{}",
        r.human("throughput")
    );
}

#[tokio::test]
async fn latency_mode_holds_the_requested_rate() {
    let broker = TestBroker::start();
    let out = lentera_loadgen::run(
        format!(
            "latency --port {} --rate 1000 --duration 1s --json",
            broker.port()
        )
        .split_whitespace()
        .map(str::to_owned),
    )
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let sent = v["sent"].as_u64().unwrap();
    // 1 s at 1,000 msg/s, give or take the timer's millisecond granularity.
    assert!((900..=1100).contains(&sent), "{out}");
    assert_eq!(v["delivered"].as_u64(), Some(sent), "{out}");
    assert!(v["latency"]["p99_us"].as_u64().unwrap() > 0, "{out}");
}

#[tokio::test]
async fn connections_mode_opens_and_holds_every_connection() {
    let broker = TestBroker::start();
    let r = connections::run(ConnConfig {
        host: "127.0.0.1".into(),
        port: broker.port(),
        connections: 100,
        concurrency: 20,
        hold: Duration::from_millis(300),
        keepalive_secs: 60,
        pid: Some(broker.service().expect("our broker").pid()),
        credentials: None,
    })
    .await
    .unwrap();
    assert_eq!((r.connected, r.failed), (100, 0), "{}", r.human());
    assert_eq!(r.closed_while_held, 0);
    // The broker's own memory, read before and after (a few KiB more, or equal when its
    // allocator had room already).
    let (before, after) = (r.rss_before_kib.unwrap(), r.rss_after_kib.unwrap());
    assert!(
        after >= before && before > 1000,
        "RSS {before} -> {after} KiB"
    );
}

#[tokio::test]
async fn throughput_at_qos2_completes_every_exchange_without_loss() {
    let broker = TestBroker::start();
    let r = pubsub::run(PubSubConfig {
        publishers: 2,
        subscribers: 2,
        qos: QoS::ExactlyOnce,
        count: Some(300),
        duration: Duration::from_secs(10),
        ..PubSubConfig::new("127.0.0.1", broker.port())
    })
    .await
    .unwrap();
    assert_eq!((r.sent, r.acked), (600, 600), "{}", r.human("throughput"));
    assert_eq!(r.expected, 1200);
    assert_eq!(r.lost(), 0, "{}", r.human("throughput"));
    assert_eq!(r.duplicates, 0, "exactly once: {}", r.human("throughput"));
}

#[tokio::test]
async fn publish_only_reaches_an_external_subscriber() {
    let broker = TestBroker::start();
    // A subscriber the load generator does not own, as the readings benchmark runs one.
    let mut opts = rumqttc::MqttOptions::new("external-sub", "127.0.0.1", broker.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (sub, mut el) = rumqttc::AsyncClient::new(opts, 100);
    sub.subscribe("lentera-bench/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) = el.poll().await.unwrap() {
            break;
        }
    }
    let counted = tokio::spawn(async move {
        let mut n = 0;
        while n < 600 {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(_)) = el.poll().await.unwrap()
            {
                n += 1;
            }
        }
        n
    });

    let r = pubsub::run(PubSubConfig {
        publishers: 2,
        subscribers: 0,
        qos: QoS::AtLeastOnce,
        count: Some(300),
        duration: Duration::from_secs(10),
        ..PubSubConfig::new("127.0.0.1", broker.port())
    })
    .await
    .unwrap();
    assert_eq!((r.sent, r.acked, r.expected), (600, 600, 0));
    assert_eq!(r.lost(), 0);
    let n = tokio::time::timeout(Duration::from_secs(10), counted)
        .await
        .expect("the external subscriber got every message")
        .unwrap();
    assert_eq!(n, 600);
}
