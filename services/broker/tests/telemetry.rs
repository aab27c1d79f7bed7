//! Issue #12, the broker's half: readings boards publish straight to MQTT on
//! `{prefix}/{device}/telemetry` are checked and, without `ts`, stamped by the broker
//! before they are stored or routed, so every subscriber gets the same bytes and a
//! redelivery the same `ts`; refusals are not routed but reported on
//! `{prefix}/{device}/error` and counted. (The SIGKILL half is in `restart.rs`, the
//! settings loaded from file and environment in `binary.rs`, QoS 2 0x99 in
//! `v5_errors.rs`.)

mod auth_common;
mod common;

use std::collections::HashSet;
use std::time::Duration;

use auth_common::V5;
use chrono::{DateTime, Utc};
use common::{Broker, Client, Ev};
use lentera_broker::settings::Settings;

const QUIET: Duration = Duration::from_millis(400);

fn settings() -> Settings {
    let mut s = Settings::default();
    // Not about identity: no registry, every client may connect (auth.open).
    s.auth.open = true;
    s.broker.mqtt_addr = "127.0.0.1:0".into();
    s.broker.admin_addr = "127.0.0.1:0".into();
    s.broker.data_dir = Default::default();
    s.broker.workers = 2;
    s
}

fn v5_opts(broker: &Broker, id: &str) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", broker.mqtt.port());
    o.set_keep_alive(Duration::from_secs(10));
    o
}

/// Splits a payload the broker stamped into its `ts` and the board's bytes without it:
/// the broker writes `"ts":"…",` right after the opening brace and changes nothing else.
/// Panics unless the `ts` is RFC 3339 UTC with exactly six fractional digits.
fn split_stamp(payload: &[u8]) -> (String, Vec<u8>) {
    let text = std::str::from_utf8(payload).expect("UTF-8");
    let rest = text
        .strip_prefix(r#"{"ts":""#)
        .unwrap_or_else(|| panic!("not stamped: {text}"));
    let (ts, rest) = rest.split_once(r#"","#).expect("ts then the board's bytes");
    let parsed = DateTime::parse_from_rfc3339(ts)
        .unwrap_or_else(|e| panic!("ts {ts:?} is not RFC 3339: {e}"))
        .with_timezone(&Utc);
    assert_eq!(
        lentera_protocol::reading::format_ts(parsed),
        ts,
        "microsecond RFC 3339 with Z"
    );
    assert!(
        (Utc::now() - parsed).num_seconds().abs() < 60,
        "ts {ts} is not the receive time"
    );
    (ts.to_owned(), format!("{{{rest}").into_bytes())
}

/// The value of one series in Prometheus text.
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// Issue #12's numbers: 5,000 QoS 1 readings of one device without `ts`, as fast as an
/// MQTT 3.1.1 client can publish them (the historian stored 108,493 of 200,000 when it
/// stamped milliseconds itself). Each arrives with its own microsecond, the board's bytes
/// otherwise unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_fast_qos1_readings_without_ts_get_five_thousand_distinct_stamps() {
    const N: usize = 5_000;
    let broker = Broker::start_with(settings()).await;
    let mut sub = Client::v3(&broker, "historian").await;
    assert_eq!(sub.subscribe("lentera/+/telemetry", 1).await, 1);
    let board = Client::v3(&broker, "gh-1").await;
    let sent: Vec<Vec<u8>> = (0..N)
        .map(|i| format!(r#"{{"lux":{}.5, "seq":{i}}}"#, i % 1000).into_bytes())
        .collect();
    let publishing = tokio::spawn(async move {
        for p in &sent {
            board.publish("lentera/gh-1/telemetry", p, 1, false).await;
        }
        (board, sent)
    });
    let mut got = Vec::with_capacity(N);
    for _ in 0..N {
        got.push(sub.next_publish().await);
    }
    let (_board, sent) = publishing.await.unwrap();
    let mut stamps = HashSet::new();
    let mut last = String::new();
    for (m, original) in got.iter().zip(&sent) {
        assert_eq!(m.topic, "lentera/gh-1/telemetry");
        let (ts, rest) = split_stamp(&m.payload);
        assert_eq!(rest, *original, "the board's own bytes, in order");
        assert!(
            ts > last,
            "stamps of one device increase: {ts} after {last}"
        );
        last.clone_from(&ts);
        stamps.insert(ts);
    }
    assert_eq!(stamps.len(), N, "every reading has its own receive time");
    let m = broker.metrics().await;
    assert_eq!(
        metric(&m, "lentera_broker_telemetry_stamped_total"),
        N as u64
    );
    broker.stop().await;
}

/// Every subscriber gets the same bytes, a retained reading is stamped once (a late
/// subscriber gets the same `ts`), a reading with its own `ts` passes byte for byte,
/// and what is not a board's reading is not looked at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_share_one_stamp_retained_included_and_other_payloads_pass_untouched() {
    let broker = Broker::start_with(settings()).await;
    let mut a = Client::v3(&broker, "web").await;
    a.subscribe("lentera/#", 1).await;
    let mut b = Client::v5(&broker, "lamp").await;
    b.subscribe("lentera/+/telemetry", 1).await;
    let board = Client::v3(&broker, "gh-1").await;

    board
        .publish("lentera/gh-1/telemetry", br#"{"lux":7}"#, 1, true)
        .await;
    let first = a.next_publish().await;
    assert_eq!(b.next_publish().await.payload, first.payload, "one stamp");
    let (_, rest) = split_stamp(&first.payload);
    assert_eq!(rest, br#"{"lux":7}"#);
    let mut late = Client::v3(&broker, "late").await;
    late.subscribe("lentera/gh-1/telemetry", 1).await;
    let retained = late.next_publish().await;
    assert!(retained.retain);
    assert_eq!(
        retained.payload, first.payload,
        "the retained copy is stamped"
    );

    // Its own ts: byte for byte, whitespace and all.
    let ts = Utc::now().to_rfc3339();
    let own = format!(r#" {{ "lux" : 1.50 , "ts" : "{ts}" }} "#).into_bytes();
    board
        .publish("lentera/gh-1/telemetry", &own, 1, false)
        .await;
    assert_eq!(a.next_publish().await.payload, own);
    assert_eq!(b.next_publish().await.payload, own);

    // Not a board's reading: deeper levels, ids that are no device ids, other topics.
    for topic in [
        "lentera/gh-1/telemetry/x",
        "lentera/gh.1/telemetry",
        "lentera/gh-1/status",
    ] {
        board.publish(topic, b"not json", 1, false).await;
        let m = a.next_publish().await;
        assert_eq!(
            (m.topic.as_str(), &m.payload[..]),
            (topic, &b"not json"[..])
        );
    }
    // An empty retained payload deletes the retained reading.
    board.publish("lentera/gh-1/telemetry", b"", 1, true).await;
    assert!(a.next_publish().await.payload.is_empty());
    let mut later = Client::v3(&broker, "later").await;
    later.subscribe("lentera/gh-1/telemetry", 1).await;
    assert_eq!(later.try_next_publish(QUIET).await, None, "deleted");
    assert_eq!(a.try_next_publish(QUIET).await, None, "no error reports");
    broker.stop().await;
}

/// (c) MQTT 5: `{"lux":1e308}` gets PUBACK 0x99 Payload format invalid with the reason;
/// telemetry subscribers get nothing, `lentera/+/error` gets the rejection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_out_of_range_gets_puback_0x99_and_only_the_rejection_is_routed() {
    let broker = Broker::start_with(settings()).await;
    let mut readings = Client::v3(&broker, "historian").await;
    readings.subscribe("lentera/+/telemetry", 1).await;
    let mut errors = Client::v3(&broker, "dead-letters").await;
    errors.subscribe("lentera/+/error", 1).await;
    let mut board = V5::connect(v5_opts(&broker, "gh-1")).await;

    let (code, why) = board
        .publish_qos1("lentera/gh-1/telemetry", br#"{"lux":1e308}"#)
        .await;
    assert_eq!(code, 0x99);
    let why = why.expect("a reason string");
    assert!(why.contains("out_of_range") && why.contains("lux"), "{why}");

    let e = errors.next_publish().await;
    assert_eq!(
        (e.topic.as_str(), e.qos, e.retain),
        ("lentera/gh-1/error", 1, false)
    );
    let v: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
    assert_eq!(v["reason"], "out_of_range");
    assert_eq!(v["source"], "broker");
    assert_eq!(v["topic"], "lentera/gh-1/telemetry");
    assert_eq!(v["payload"], r#"{"lux":1e308}"#);
    assert!(v["detail"].as_str().unwrap().contains("lux"), "{v}");
    let at = DateTime::parse_from_rfc3339(v["at"].as_str().unwrap()).unwrap();
    assert!((Utc::now() - at.with_timezone(&Utc)).num_seconds().abs() < 60);
    assert_eq!(readings.try_next_publish(QUIET).await, None, "not routed");

    // The board sees its own refusals too (no ACL here), and a good reading still goes.
    assert_eq!(board.subscribe("lentera/gh-1/error").await, 1);
    let (code, _) = board
        .publish_qos1("lentera/gh-1/telemetry", br#"{"device":"gh-2","lux":1}"#)
        .await;
    assert_eq!(code, 0x99);
    let (topic, payload) = board.try_publish(common::WAIT).await.expect("its report");
    assert_eq!(topic, "lentera/gh-1/error");
    let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(v["reason"], "device_mismatch");
    assert_eq!(
        board
            .publish_qos1("lentera/gh-1/telemetry", br#"{"lux":1}"#)
            .await
            .0,
        0
    );
    split_stamp(&readings.next_publish().await.payload);
    broker.stop().await;
}

/// (d) MQTT 3.1.1 cannot refuse in a PUBACK: the refused reading is acknowledged as
/// usual (QoS 1 PUBACK, QoS 2 PUBREC/PUBCOMP) and QoS 0 taken, none is routed, each
/// is reported once on the error topic. (e) The metrics count them by reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt311_refusals_are_acknowledged_not_routed_reported_and_counted() {
    let broker = Broker::start_with(settings()).await;
    let mut readings = Client::v5(&broker, "historian").await;
    readings.subscribe("lentera/+/telemetry", 2).await;
    let mut errors = Client::v3(&broker, "dead-letters").await;
    errors.subscribe("lentera/+/error", 2).await;
    let mut board = Client::v3(&broker, "gh-7").await;

    let cases: [(&[u8], u8, &str); 6] = [
        (b"{not json", 1, "malformed_json"),
        (b"[1,2]", 1, "not_an_object"),
        (br#"{"lux":"bright"}"#, 0, "non_numeric_value"),
        (br#"{"humidity":140}"#, 2, "out_of_range"),
        (br#"{"lux":1,"ts":"yesterday"}"#, 1, "invalid_timestamp"),
        (br#"{"device":"gh-8","lux":1}"#, 1, "device_mismatch"),
    ];
    for (payload, qos, reason) in cases {
        board
            .publish("lentera/gh-7/telemetry", payload, qos, false)
            .await;
        match qos {
            1 => board.expect_puback().await,
            2 => board.expect_pubcomp().await,
            _ => {}
        }
        let e = errors.next_publish().await;
        assert_eq!(e.topic, "lentera/gh-7/error");
        let v: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
        assert_eq!(v["reason"], reason, "{v}");
        assert_eq!(v["payload"], std::str::from_utf8(payload).unwrap());
    }
    assert_eq!(readings.try_next_publish(QUIET).await, None, "none routed");
    assert_eq!(
        errors.try_next_publish(QUIET).await,
        None,
        "each reported once"
    );

    board
        .publish("lentera/gh-7/telemetry", br#"{"lux":2}"#, 1, false)
        .await;
    board.expect_puback().await;
    split_stamp(&readings.next_publish().await.payload);

    let m = broker.metrics().await;
    let rejected = |reason: &str| {
        metric(
            &m,
            &format!("lentera_broker_telemetry_rejected_total{{reason=\"{reason}\"}}"),
        )
    };
    for (_, _, reason) in cases {
        assert_eq!(rejected(reason), 1, "{reason}");
    }
    assert_eq!(rejected("timestamp_in_future"), 0, "every reason is listed");
    assert_eq!(metric(&m, "lentera_broker_telemetry_stamped_total"), 1);
    assert_eq!(
        m.matches("# TYPE lentera_broker_telemetry_rejected_total counter")
            .count(),
        1
    );
    broker.stop().await;
}

/// A will on a telemetry topic is a reading published on the board's behalf: stamped
/// when it is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_on_a_telemetry_topic_is_stamped_when_published() {
    let broker = Broker::start_with(settings()).await;
    let mut sub = Client::v3(&broker, "historian").await;
    sub.subscribe("lentera/#", 1).await;
    let mut o = Client::v3_options(&broker, "gh-3");
    o.set_last_will(rumqttc::LastWill::new(
        "lentera/gh-3/telemetry",
        r#"{"battery":0}"#,
        rumqttc::QoS::AtLeastOnce,
        false,
    ));
    let board = Client::connect_v3(o).await;
    board.kill();
    let m = sub.next_publish().await;
    assert_eq!(m.topic, "lentera/gh-3/telemetry");
    assert_eq!(split_stamp(&m.payload).1, br#"{"battery":0}"#);
    broker.stop().await;
}

/// `broker.telemetry.prefix`: another prefix moves the check, empty turns it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prefix_setting_moves_or_turns_off_the_check() {
    let mut s = settings();
    s.broker.telemetry.prefix = "village/lentera".into();
    let broker = Broker::start_with(s).await;
    let mut sub = Client::v3(&broker, "sub").await;
    sub.subscribe("#", 1).await;
    let p = Client::v3(&broker, "p").await;
    p.publish("village/lentera/gh-1/telemetry", br#"{"lux":1}"#, 1, false)
        .await;
    split_stamp(&sub.next_publish().await.payload);
    p.publish("lentera/gh-1/telemetry", br#"{"lux":1}"#, 1, false)
        .await;
    assert_eq!(sub.next_publish().await.payload, br#"{"lux":1}"#);
    broker.stop().await;

    let mut s = settings();
    s.broker.telemetry.prefix = String::new();
    let broker = Broker::start_with(s).await;
    let mut sub = Client::v3(&broker, "sub").await;
    sub.subscribe("lentera/#", 1).await;
    let mut p = Client::v3(&broker, "p").await;
    p.publish("lentera/gh-1/telemetry", br#"{"lux":1e308}"#, 1, false)
        .await;
    p.expect("PUBACK", |e| matches!(e, Ev::PubAck)).await;
    let m = sub.next_publish().await;
    assert_eq!(m.payload, br#"{"lux":1e308}"#, "routed as it came");
    assert_eq!(sub.try_next_publish(QUIET).await, None);
    broker.stop().await;
}

/// Start-up refuses settings it cannot honour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_telemetry_settings_or_limits_stop_the_start() {
    use lentera_broker::startup::Application;
    let mut s = settings();
    s.broker.telemetry.stamp_offset = 1;
    s.broker.telemetry.stamp_stride = 1;
    let err = Application::build(s).await.err().expect("refused");
    assert!(format!("{err:#}").contains("stamp_offset"), "{err:#}");
    let mut s = settings();
    s.limits.default_range = lentera_protocol::Range::new(Some(5.0), Some(1.0));
    let err = Application::build(s).await.err().expect("refused");
    assert!(format!("{err:#}").contains("default_range"), "{err:#}");
}
