//! `$SYS/broker/…` statistics: published retained by the broker, visible to an explicit
//! `$SYS/#` subscription and not to `#` or `+/…` [MQTT-4.7.2-1], the same figures as
//! `/metrics`, never written to the store.

mod auth_common;
mod common;

use std::collections::HashMap;
use std::time::Duration;

use auth_common::*;
use common::{Broker, Client};
use lentera_broker::settings::Settings;

fn sys_settings(interval: u64) -> Settings {
    let mut s = Settings::default();
    // Not about identity: no registry, every client may connect (auth.open).
    s.auth.open = true;
    s.broker.mqtt_addr = "127.0.0.1:0".into();
    s.broker.admin_addr = "127.0.0.1:0".into();
    s.broker.data_dir = Default::default();
    s.broker.sys_interval_secs = interval;
    s
}

/// Collects `$SYS` values until `done` says they are what the test waits for.
async fn sys_until(
    c: &mut V5,
    done: impl Fn(&HashMap<String, String>) -> bool,
) -> HashMap<String, String> {
    let mut seen = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done(&seen) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some((topic, payload)) = c.try_publish(left).await else {
            panic!("$SYS values never matched; last seen {seen:?}");
        };
        seen.insert(topic, String::from_utf8(payload).unwrap());
    }
    seen
}

#[tokio::test]
async fn sys_reaches_an_explicit_sys_subscription_and_not_hash_or_plus() {
    let b = Broker::start_with(sys_settings(1)).await;
    let mut all = Client::v3(&b, "all").await;
    assert_eq!(all.subscribe("#", 0).await, 0);
    assert_eq!(all.subscribe("+/broker/#", 0).await, 0);
    let mut sys = V5::connect(v5_opts(&b, "sys", None)).await;
    assert_eq!(sys.subscribe("$SYS/#").await, 1);
    // Retained, so they arrive at once, and again as the uptime changes.
    let seen = sys_until(&mut sys, |s| {
        s.contains_key("$SYS/broker/version") && s.contains_key("$SYS/broker/clients/connected")
    })
    .await;
    assert!(seen["$SYS/broker/version"].starts_with("lentera-broker "));
    let (topic, _) = sys
        .try_publish(Duration::from_secs(3))
        .await
        .expect("a periodic update");
    assert!(topic.starts_with("$SYS/broker/"), "{topic}");
    assert_eq!(
        all.try_next_publish(Duration::from_millis(500)).await,
        None,
        "`#` and `+/…` must not match `$SYS` topics [MQTT-4.7.2-1]"
    );
    b.stop().await;
}

#[tokio::test]
async fn sys_figures_match_the_metrics_endpoint() {
    let b = Broker::start_with(sys_settings(1)).await;
    let mut sub = Client::v3(&b, "sub").await;
    assert_eq!(sub.subscribe("t/#", 0).await, 0);
    assert_eq!(sub.subscribe("u/#", 1).await, 1);
    let publ = Client::v3(&b, "pub").await;
    for i in 0..3 {
        publ.publish(&format!("t/{i}"), b"12345", 0, false).await;
        sub.next_publish().await;
    }
    publ.publish("t/kept", b"r", 0, true).await;
    sub.next_publish().await;
    let mut sys = V5::connect(v5_opts(&b, "sys", None)).await;
    assert_eq!(sys.subscribe("$SYS/#").await, 1);
    // 3 subscriptions (sub: 2, sys: 1), 4 messages of 16 payload bytes in; out, those
    // 4 plus the `$SYS` messages themselves.
    let seen = sys_until(&mut sys, |s| {
        let is = |k: &str, v: &str| s.get(k).map(String::as_str) == Some(v);
        is("$SYS/broker/subscriptions/count", "3")
            && is("$SYS/broker/messages/received", "4")
            && is("$SYS/broker/bytes/received", "16")
            && s.get("$SYS/broker/bytes/sent").is_some_and(|v| v != "0")
    })
    .await;
    let sent = |k: &str| seen.get(k).map_or(0, |v| v.parse::<u64>().unwrap());
    assert!(sent("$SYS/broker/messages/sent") >= 4, "{seen:?}");
    assert!(sent("$SYS/broker/bytes/sent") >= 16, "{seen:?}");
    assert_eq!(seen["$SYS/broker/clients/connected"], "3");
    assert_eq!(seen["$SYS/broker/sessions"], "3");
    assert_eq!(
        seen["$SYS/broker/retained/count"], "1",
        "$SYS itself not counted"
    );
    assert_eq!(seen["$SYS/broker/messages/dropped/not_authorized"], "0");

    let m = b.metrics().await;
    for (series, topic) in [
        (
            "lentera_broker_subscriptions",
            "$SYS/broker/subscriptions/count",
        ),
        (
            "lentera_broker_messages_received_total",
            "$SYS/broker/messages/received",
        ),
        (
            "lentera_broker_payload_bytes_received_total",
            "$SYS/broker/bytes/received",
        ),
        (
            "lentera_broker_retained_messages",
            "$SYS/broker/retained/count",
        ),
        (
            "lentera_broker_connections",
            "$SYS/broker/clients/connected",
        ),
    ] {
        assert_eq!(metric(&m, series).to_string(), seen[topic], "{series}\n{m}");
    }
    // `$SYS` deliveries count as sent (they went out), never as received.
    assert!(metric(&m, "lentera_broker_messages_delivered_total") > 4);
    // One HELP/TYPE block per metric name, as the exposition format requires.
    let types: Vec<&str> = m.lines().filter(|l| l.starts_with("# TYPE")).collect();
    let mut unique = types.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(types.len(), unique.len(), "{m}");
    b.stop().await;
}

#[tokio::test]
async fn interval_zero_turns_sys_off() {
    let b = Broker::start_with(sys_settings(0)).await;
    let mut sys = V5::connect(v5_opts(&b, "sys", None)).await;
    assert_eq!(sys.subscribe("$SYS/#").await, 1);
    assert_eq!(sys.try_publish(Duration::from_millis(1500)).await, None);
    b.stop().await;
}

#[tokio::test]
async fn sys_values_are_not_kept_in_the_store() {
    let dir = temp_dir("sys-store");
    let mut s = Broker::settings_with_store(&dir);
    s.broker.sys_interval_secs = 1;
    let b = Broker::start_with(s).await;
    let mut sys = V5::connect(v5_opts(&b, "sys", None)).await;
    assert_eq!(sys.subscribe("$SYS/#").await, 1);
    sys_until(&mut sys, |s| s.contains_key("$SYS/broker/uptime")).await;
    let c = Client::v3(&b, "c").await;
    c.publish("kept", b"yes", 1, true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.stop().await;

    // Restarted with $SYS off: the client's retained message is back, no stale $SYS.
    let mut s = Broker::settings_with_store(&dir);
    s.broker.sys_interval_secs = 0;
    let b = Broker::start_with(s).await;
    let mut c = V5::connect(v5_opts(&b, "sys2", None)).await;
    assert_eq!(c.subscribe("$SYS/#").await, 1);
    assert_eq!(c.try_publish(Duration::from_millis(700)).await, None);
    assert_eq!(c.subscribe("kept").await, 1);
    assert_eq!(
        c.try_publish(Duration::from_secs(2)).await,
        Some(("kept".to_owned(), b"yes".to_vec()))
    );
    b.stop().await;
}

#[tokio::test]
async fn sys_follows_the_acl_like_any_other_topic() {
    // gh-1 has no `$SYS` rule; ops has `$SYS/#`; `#` in a rule would not grant it either.
    let b = broker_with_auth(false).await;
    let mut gh1 = V5::connect(v5_opts(&b, "gh-1", Some(("gh-1", GH1_PASSWORD)))).await;
    assert_eq!(gh1.subscribe("$SYS/#").await, 0x87);
    let mut ops = V5::connect(v5_opts(&b, "console", Some(("ops", OPS_PASSWORD)))).await;
    assert_eq!(ops.subscribe("$SYS/broker/version").await, 1);
    let (topic, _) = ops.try_publish(common::WAIT).await.expect("the version");
    assert_eq!(topic, "$SYS/broker/version");
    b.stop().await;
}

#[tokio::test]
async fn mosquitto_sub_sees_sys_with_sys_hash_and_not_with_hash() {
    const TEST: &str = "mosquitto_sub_sees_sys_with_sys_hash_and_not_with_hash";
    let Some(sub) = mosquitto_tool("mosquitto_sub", TEST) else {
        return;
    };
    let b = Broker::start_with(sys_settings(1)).await;
    let out = run_tool(
        &sub,
        args(
            &b,
            &["-t", "$SYS/broker/version", "-C", "1", "-W", "5", "-v"],
        ),
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("$SYS/broker/version lentera-broker "),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `-W 2`: exits after 2 s; `#` must have received nothing by then.
    let out = run_tool(&sub, args(&b, &["-t", "#", "-W", "2", "-v"])).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    b.stop().await;
}
