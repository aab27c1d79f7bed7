//! Manual acknowledgements are never lost, however many deliveries arrive at once.
//!
//! A broker with a wide in-flight window (the historian's needs one, see
//! docs/benchmarks.md) can put thousands of QoS 1 PUBLISH packets on the wire in one go;
//! rumqttc then hands them out one after another without reading its request queue, so
//! acknowledgements made meanwhile overflow that queue. Each dropped one used to hold a
//! slot of the broker's window until the next connection; enough of them stalled the
//! historian for good. The broker here is a socket that writes such a burst and counts
//! the PUBACKs that come back.

use std::time::Duration;

use lentera_mqtt::{Client, MqttSettings, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// MQTT 3.1.1 PUBLISH, QoS 1, with packet id `id`.
fn publish(id: u16) -> Vec<u8> {
    let topic = b"lentera/burst/telemetry";
    let payload = format!(r#"{{"seq":{id}}}"#);
    let len = 2 + topic.len() + 2 + payload.len();
    assert!(len < 128, "one-byte remaining length");
    let mut p = vec![0x32, len as u8, 0, topic.len() as u8];
    p.extend_from_slice(topic);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(payload.as_bytes());
    p
}

/// Accepts one client, answers CONNACK, writes `n` PUBLISH packets in one burst and then
/// reports every PUBACK packet id it reads.
async fn bursting_broker(n: u16) -> (u16, mpsc::UnboundedReceiver<u16>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut burst_sent = false;
        loop {
            let got = sock.read(&mut chunk).await.unwrap_or(0);
            if got == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..got]);
            // Whole packets: type byte, remaining length (varint), body.
            while let Some((kind, body, used)) = next_packet(&buf) {
                match kind >> 4 {
                    1 if !burst_sent => {
                        burst_sent = true;
                        let mut out = vec![0x20, 0x02, 0x00, 0x00]; // CONNACK, accepted
                        for id in 1..=n {
                            out.extend(publish(id));
                        }
                        sock.write_all(&out).await.unwrap();
                    }
                    4 => {
                        let _ = tx.send(u16::from_be_bytes([body[0], body[1]]));
                    }
                    _ => {} // SUBSCRIBE and PINGREQ need no answer here
                }
                buf.drain(..used);
            }
        }
    });
    (port, rx)
}

fn next_packet(buf: &[u8]) -> Option<(u8, &[u8], usize)> {
    let (mut len, mut shift, mut i) = (0usize, 0, 1);
    loop {
        let b = *buf.get(i)?;
        len |= usize::from(b & 0x7f) << shift;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let end = i + len;
    (buf.len() >= end).then(|| (buf[0], &buf[i..end], end))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_delivery_of_a_burst_is_acknowledged_once_in_order() {
    const N: u16 = 5_000;
    let (port, mut pubacks) = bursting_broker(N).await;
    let settings = MqttSettings {
        port,
        // A request queue of 32: far fewer than the burst.
        max_inflight: 16,
        ..MqttSettings::default()
    };
    let (client, mut deliveries) = Client::start(
        &settings,
        "burst-test",
        false,
        true,
        vec![("lentera/+/telemetry".into(), QoS::AtLeastOnce)],
        None,
    );
    for _ in 0..N {
        let d = tokio::time::timeout(Duration::from_secs(10), deliveries.recv())
            .await
            .expect("a delivery within 10 s")
            .expect("the connection task runs");
        client.ack(&d);
    }
    for want in 1..=N {
        let id = tokio::time::timeout(Duration::from_secs(10), pubacks.recv())
            .await
            .unwrap_or_else(|_| panic!("PUBACK {want} of {N} never reached the broker"))
            .unwrap();
        assert_eq!(id, want, "acknowledgements out of order");
    }
}
