//! MUSTs of the MQTT 3.1.1 and 5.0 specifications, one test per statement, each over a
//! real TCP socket with hand-built bytes (a client library would not send them). Where
//! the specification leaves the answer open, the broker does what Mosquitto 2.0.11
//! does; each test says which.

mod common;
mod raw;

use std::time::Duration;

use common::Broker;
use raw::{
    bin16, connect_v5_with, connect_v311_with, connected, expect_closed, expect_connack_refusal,
    expect_disconnect, expect_open, publish_v5, read_packet, send, send_connect, str16,
    subscribe_with, unsubscribe_with,
};

/// Connect flags: clean session / clean start only.
const CLEAN: u8 = 0x02;

async fn v3(broker: &Broker, id: &str) -> tokio::net::TcpStream {
    connected(broker.mqtt, &connect_v311_with(CLEAN, &str16(id))).await
}

async fn v5(broker: &Broker, id: &str) -> tokio::net::TcpStream {
    connected(broker.mqtt, &connect_v5_with(CLEAN, &[], &str16(id))).await
}

/// [MQTT-1.5.4-2] A UTF-8 string must not contain U+0000; a receiver may treat one as a
/// malformed packet. Client id: CONNACK 0x85 / 2 (MQTT 5 §3.1.3.1 lets the server say
/// so; Mosquitto closes without a word). User name: MQTT 5 CONNACK 0x81 Malformed
/// Packet, like any malformed CONNECT here; 3.1.1 closes (Mosquitto closes both).
/// Topic filters and MQTT 5 topic names: DISCONNECT 0x81 then the close (Mosquitto
/// too); MQTT 3.1.1 closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_1_5_4_2_nul_in_strings_closes() {
    let broker = Broker::start().await;
    let nul = b"a\0b";

    let mut s = send_connect(broker.mqtt, &connect_v5_with(CLEAN, &[], &bin16(nul))).await;
    expect_connack_refusal(&mut s, 0x85, "v5 client id").await;
    let mut s = send_connect(broker.mqtt, &connect_v311_with(CLEAN, &bin16(nul))).await;
    expect_connack_refusal(&mut s, 0x02, "v3 client id").await;

    // Flags 0x82: user name + clean.
    let user = [&str16("nul-user")[..], &bin16(nul)].concat();
    let mut s = send_connect(broker.mqtt, &connect_v5_with(0x82, &[], &user)).await;
    expect_connack_refusal(&mut s, 0x81, "v5 user name").await;
    let mut s = send_connect(broker.mqtt, &connect_v311_with(0x82, &user)).await;
    expect_closed(&mut s, "v3 user name").await;

    let mut s = v5(&broker, "nul-sub5").await;
    send(&mut s, &subscribe_with(true, nul, 0)).await;
    expect_disconnect(&mut s, 0x81, "v5 SUBSCRIBE filter").await;
    let mut s = v3(&broker, "nul-sub3").await;
    send(&mut s, &subscribe_with(false, nul, 0)).await;
    expect_closed(&mut s, "v3 SUBSCRIBE filter").await;

    let mut s = v5(&broker, "nul-unsub5").await;
    send(&mut s, &unsubscribe_with(true, nul)).await;
    expect_disconnect(&mut s, 0x81, "v5 UNSUBSCRIBE filter").await;
    let mut s = v3(&broker, "nul-unsub3").await;
    send(&mut s, &unsubscribe_with(false, nul)).await;
    expect_closed(&mut s, "v3 UNSUBSCRIBE filter").await;

    // QoS 0: there is no PUBACK to refuse it in, so only the close says anything.
    let mut s = v5(&broker, "nul-pub5").await;
    send(&mut s, &publish_v5(nul, 0, false, &[], b"x")).await;
    expect_disconnect(&mut s, 0x81, "v5 QoS 0 PUBLISH topic").await;
    broker.stop().await;
}

/// [MQTT-3.1.2-13] With the Will Flag 0 the Will QoS must be 0: a CONNECT saying
/// otherwise is malformed. MQTT 5 CONNACK 0x81 then the close, 3.1.1 the close
/// (Mosquitto closes both without a CONNACK).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_13_will_qos_without_will_flag_closes() {
    let broker = Broker::start().await;
    for qos in [1u8, 2] {
        let flags = CLEAN | (qos << 3);
        let mut s = send_connect(broker.mqtt, &connect_v5_with(flags, &[], &str16("wq5"))).await;
        expect_connack_refusal(&mut s, 0x81, &format!("v5 will QoS {qos}")).await;
        let mut s = send_connect(broker.mqtt, &connect_v311_with(flags, &str16("wq3"))).await;
        expect_closed(&mut s, &format!("v3 will QoS {qos}")).await;
    }
    broker.stop().await;
}

/// [MQTT-3.1.2-15] With the Will Flag 0 Will Retain must be 0: as for the Will QoS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_15_will_retain_without_will_flag_closes() {
    let broker = Broker::start().await;
    let flags = CLEAN | 0x20;
    let mut s = send_connect(broker.mqtt, &connect_v5_with(flags, &[], &str16("wr5"))).await;
    expect_connack_refusal(&mut s, 0x81, "v5 will retain").await;
    let mut s = send_connect(broker.mqtt, &connect_v311_with(flags, &str16("wr3"))).await;
    expect_closed(&mut s, "v3 will retain").await;
    broker.stop().await;
}

/// [MQTT-3.1.2-22] MQTT 3.1.1: with the User Name Flag 0 the Password Flag must be 0:
/// closed (Mosquitto too). MQTT 5 allows a password alone (§3.1.2.9): accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_22_password_without_user_name_closes() {
    let broker = Broker::start().await;
    let payload = [&str16("pw3")[..], &bin16(b"secret")].concat();
    let mut s = send_connect(broker.mqtt, &connect_v311_with(CLEAN | 0x40, &payload)).await;
    expect_closed(&mut s, "v3 password without user name").await;
    let payload = [&str16("pw5")[..], &bin16(b"secret")].concat();
    let mut s = connected(broker.mqtt, &connect_v5_with(CLEAN | 0x40, &[], &payload)).await;
    expect_open(&mut s, "v5 password without user name").await;
    broker.stop().await;
}

/// [MQTT-3.1.3-1] The CONNECT payload is its fields in order, as the flags say, and
/// nothing else: bytes after the last one make the Remaining Length disagree with the
/// content, a malformed packet. MQTT 5 CONNACK 0x81, 3.1.1 the close (Mosquitto closes
/// both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_3_1_bytes_after_the_connect_payload_close() {
    let broker = Broker::start().await;
    let payload = [&str16("tail5")[..], &str16("z")].concat();
    let mut s = send_connect(broker.mqtt, &connect_v5_with(CLEAN, &[], &payload)).await;
    expect_connack_refusal(&mut s, 0x81, "v5 trailing bytes").await;
    let payload = [&str16("tail3")[..], &str16("z")].concat();
    let mut s = send_connect(broker.mqtt, &connect_v311_with(CLEAN, &payload)).await;
    expect_closed(&mut s, "v3 trailing bytes").await;
    broker.stop().await;
}

/// [MQTT-3.8.3-4] (3.1.1; MQTT-3.8.3-5 in MQTT 5) Reserved bits of the subscription
/// options set: a malformed SUBSCRIBE, the connection closes. MQTT 5 hears DISCONNECT
/// 0x81 first (Mosquitto too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_8_3_4_reserved_subscribe_option_bits_close() {
    let broker = Broker::start().await;
    for bit in [0x40u8, 0x80] {
        let mut s = v5(&broker, "opt5").await;
        send(&mut s, &subscribe_with(true, b"a/b", bit | 1)).await;
        expect_disconnect(&mut s, 0x81, &format!("v5 option bit {bit:#04x}")).await;
    }
    for bit in [0x04u8, 0x08, 0x10, 0x20, 0x40, 0x80] {
        let mut s = v3(&broker, "opt3").await;
        send(&mut s, &subscribe_with(false, b"a/b", bit | 1)).await;
        expect_closed(&mut s, &format!("v3 option bit {bit:#04x}")).await;
    }
    broker.stop().await;
}

/// [MQTT-4.7.3-1] Topic filters are at least one character long: a SUBSCRIBE or
/// UNSUBSCRIBE with an empty one closes the connection, MQTT 5 after DISCONNECT 0x82
/// Protocol Error (Mosquitto says 0x81).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_7_3_1_zero_length_topic_filter_closes() {
    let broker = Broker::start().await;
    let mut s = v5(&broker, "empty-sub5").await;
    send(&mut s, &subscribe_with(true, b"", 0)).await;
    expect_disconnect(&mut s, 0x82, "v5 SUBSCRIBE").await;
    let mut s = v5(&broker, "empty-unsub5").await;
    send(&mut s, &unsubscribe_with(true, b"")).await;
    expect_disconnect(&mut s, 0x82, "v5 UNSUBSCRIBE").await;
    let mut s = v3(&broker, "empty-sub3").await;
    send(&mut s, &subscribe_with(false, b"", 0)).await;
    expect_closed(&mut s, "v3 SUBSCRIBE").await;
    let mut s = v3(&broker, "empty-unsub3").await;
    send(&mut s, &unsubscribe_with(false, b"")).await;
    expect_closed(&mut s, "v3 UNSUBSCRIBE").await;
    broker.stop().await;
}

/// [MQTT-3.3.2-2] A topic name has no wildcards (and, §3.3.2.1, is not empty without a
/// Topic Alias): MQTT 5 DISCONNECT 0x90 Topic Name invalid, then the close, at every
/// QoS — never a PUBACK/PUBREC, which would let the client go on (Mosquitto closes
/// with 0x82). Nothing is routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_2_2_invalid_topic_name_gets_disconnect_0x90() {
    let broker = Broker::start().await;
    let mut watcher = v5(&broker, "watcher").await;
    send(&mut watcher, &subscribe_with(true, b"#", 0)).await;
    assert_eq!(read_packet(&mut watcher).await.map(|p| p.0), Some(0x90));
    for topic in [&b""[..], b"a/+", b"a/#", b"+", b"#"] {
        for qos in 0..=2 {
            let what = format!("topic {:?} QoS {qos}", String::from_utf8_lossy(topic));
            let mut s = v5(&broker, "badtopic").await;
            send(&mut s, &publish_v5(topic, qos, false, &[], b"x")).await;
            expect_disconnect(&mut s, 0x90, &what).await;
        }
    }
    expect_open(&mut watcher, "nothing was routed to the watcher").await;
    broker.stop().await;
}

/// [MQTT-3.3.4-6] A PUBLISH from a client must not carry a Subscription Identifier:
/// DISCONNECT 0x82 Protocol Error (Mosquitto 2.0.11 lets it through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_4_6_subscription_identifier_in_publish_gets_disconnect_0x82() {
    let broker = Broker::start().await;
    for qos in 0..=2 {
        let mut s = v5(&broker, "subid").await;
        // Property 0x0B Subscription Identifier = 5.
        send(&mut s, &publish_v5(b"a/b", qos, false, &[0x0B, 5], b"x")).await;
        expect_disconnect(&mut s, 0x82, &format!("QoS {qos}")).await;
    }
    broker.stop().await;
}

/// [MQTT-3.1.2-24] The server must not send a packet larger than the client's Maximum
/// Packet Size. Two bytes cannot hold any CONNACK: the broker closes without one
/// (Mosquitto too) rather than leave the client waiting for an answer that never comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_24_maximum_packet_size_too_small_for_connack_closes() {
    let broker = Broker::start().await;
    // Property 0x27 Maximum Packet Size = 2.
    let tiny = [0x27, 0, 0, 0, 2];
    let mut s = send_connect(broker.mqtt, &connect_v5_with(CLEAN, &tiny, &str16("tiny"))).await;
    expect_closed(&mut s, "Maximum Packet Size 2").await;
    // One that holds the CONNACK is served as usual.
    let roomy = [0x27, 0, 0, 4, 0];
    let mut s = connected(
        broker.mqtt,
        &connect_v5_with(CLEAN, &roomy, &str16("roomy")),
    )
    .await;
    expect_open(&mut s, "Maximum Packet Size 1024").await;
    broker.stop().await;
}

/// MQTT 5 §3.3.2.3.3 Message Expiry Interval: a Four Byte Integer, 0 included. Mosquitto
/// treats 0 as no expiry at all (delivered, retained for later subscribers, forwarded
/// without the property), and so does the broker; ntex-mqtt's decoder refused it as
/// malformed, closing real clients that send it. The same for a will's (§3.1.3.2.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_2_3_3_message_expiry_interval_0_is_no_expiry() {
    let broker = Broker::start().await;
    let mut sub = v5(&broker, "exp-sub").await;
    send(&mut sub, &subscribe_with(true, b"exp/#", 1)).await;
    assert_eq!(
        read_packet(&mut sub).await.map(|p| p.0),
        Some(0x90),
        "SUBACK"
    );

    // Property 0x02 Message Expiry Interval = 0, with a user property after it (so the
    // rewrite keeps what follows).
    let zero = [&[0x02, 0, 0, 0, 0][..], &[0x26], &str16("k"), &str16("v")].concat();
    let mut publisher = v5(&broker, "exp-pub").await;
    send(
        &mut publisher,
        &publish_v5(b"exp/a", 1, true, &zero, b"kept"),
    )
    .await;
    let (h, body) = read_packet(&mut publisher).await.expect("PUBACK");
    assert_eq!((h, &body[..2]), (0x40, &[0, 1][..]), "PUBACK {body:02x?}");
    assert!(body.len() == 2 || body[2] == 0, "success: {body:02x?}");
    expect_open(&mut publisher, "publisher").await;

    let (h, body) = read_packet(&mut sub).await.expect("PUBLISH");
    assert_eq!(h & 0xF0, 0x30, "PUBLISH {body:02x?}");
    // topic "exp/a", packet id, properties: the user property only.
    let props = &body[2 + 5 + 2..];
    assert_eq!(
        &props[..props.len() - 4],
        &[&[7u8, 0x26][..], &str16("k"), &str16("v")].concat()[..],
        "forwarded without an expiry: {body:02x?}"
    );
    assert!(body.ends_with(b"kept"));

    // Past the sweeper's second: still retained, so it did not expire.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut late = v5(&broker, "exp-late").await;
    send(&mut late, &subscribe_with(true, b"exp/#", 0)).await;
    assert_eq!(
        read_packet(&mut late).await.map(|p| p.0),
        Some(0x90),
        "SUBACK"
    );
    let (h, body) = read_packet(&mut late).await.expect("the retained message");
    assert_eq!(h, 0x31, "retained PUBLISH {body:02x?}");
    assert!(body.ends_with(b"kept"));

    // A will with Message Expiry Interval 0 (flags: will + clean start).
    let will = [
        &str16("exp-will")[..],
        &raw::props(&[0x02, 0, 0, 0, 0]),
        &str16("exp/will"),
        &bin16(b"bye"),
    ]
    .concat();
    let mut s = connected(broker.mqtt, &connect_v5_with(0x06, &[], &will)).await;
    expect_open(&mut s, "will with expiry 0").await;
    drop(s);
    let (h, body) = read_packet(&mut sub).await.expect("the will");
    assert_eq!(h & 0xF0, 0x30, "will PUBLISH {body:02x?}");
    assert!(body.ends_with(b"bye"));
    broker.stop().await;
}
