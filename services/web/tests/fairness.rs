//! A flood from one device must not cost a `/ws` viewer another device's readings
//! (issue 13). Real broker, real web, a viewer with a small receive buffer that falls
//! behind while device A floods and device B sends 20 readings in the middle of it:
//! the viewer is told it lagged, loses A's messages, and still gets all of B's.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt;
use lentera_tests::TestBroker;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::Value;
use support::TestApp;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const FLOOD: usize = 3_000;
const B_READINGS: usize = 20;

fn mqtt(name: &str, port: u16) -> AsyncClient {
    let mut opts = MqttOptions::new(name, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 256);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_viewer_loses_the_flooders_messages_not_the_other_devices() {
    let broker = TestBroker::start();
    let app = TestApp::spawn_with(broker.port(), |s| {
        s.web.client_timeout_secs = 120;
    })
    .await;
    for _ in 0..100 {
        let (_, body) = app.get_json("/readyz").await;
        if body["checks"]["mqtt"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A viewer whose socket holds little, so it falls behind as soon as it stops reading.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(app.addr).await.unwrap();
    let mut req = format!("ws://{}/ws", app.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", app.token).parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream).await.unwrap();

    // ~3 KB per live message from A: 60 metrics (the protocol allows 64) with long names.
    let big: String = {
        let fields: Vec<String> = (0..60)
            .map(|i| format!("\"a_rather_long_metric_name_for_the_flood_{i:02}\":{i}.5"))
            .collect();
        format!("{{{}}}", fields.join(","))
    };
    let a = mqtt("flood-a", broker.port());
    let b = mqtt("quiet-b", broker.port());
    let flood = tokio::spawn(async move {
        for _ in 0..FLOOD {
            a.publish(
                "lentera/dev-a/telemetry",
                QoS::AtMostOnce,
                false,
                big.clone(),
            )
            .await
            .unwrap();
        }
        a
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..B_READINGS {
        b.publish(
            "lentera/dev-b/telemetry",
            QoS::AtLeastOnce,
            false,
            format!(r#"{{"temperature":{i}}}"#),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _a = flood.await.unwrap();
    // Let the broker and the hub finish; the viewer still reads nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut b_seen = BTreeSet::new();
    let mut a_seen = 0usize;
    let mut lagged = 0u64;
    loop {
        let msg = match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
            Err(_) => break, // quiet: everything queued has arrived
            Ok(m) => m.expect("open").unwrap(),
        };
        let Message::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(&t).unwrap();
        match (v["type"].as_str(), v["device"].as_str()) {
            (Some("lagged"), _) => lagged += v["missed"].as_u64().unwrap(),
            (Some("reading"), Some("dev-a")) => a_seen += 1,
            (Some("reading"), Some("dev-b")) => {
                b_seen.insert(v["metrics"]["temperature"].as_f64().unwrap() as usize);
            }
            _ => {}
        }
    }
    assert!(lagged > 0, "the viewer fell behind (a_seen {a_seen})");
    assert!(a_seen < FLOOD, "the flooder lost messages: {a_seen}");
    assert_eq!(
        b_seen,
        (0..B_READINGS).collect::<BTreeSet<_>>(),
        "every one of B's readings reached the lagging viewer (A: {a_seen}, lagged {lagged})"
    );
    app.stop().await;
}
