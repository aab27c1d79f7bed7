//! Graceful shutdown seen from the client: an MQTT 5 client is told why the broker closes
//! its connection (DISCONNECT with reason code 0x8B, Server shutting down); an MQTT 3.1.1
//! client, which has no server DISCONNECT, sees its connection closed.

mod raw;

use std::time::Duration;

use lentera_broker::startup::Application;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads one packet: (first header byte, body).
async fn read_packet(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 1];
    tokio::time::timeout(raw::WAIT, s.read_exact(&mut h))
        .await
        .expect("a packet or the end of the stream in time")
        .ok()?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.ok()?;
        len |= ((b[0] & 0x7f) as usize) << shift;
        shift += 7;
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.ok()?;
    Some((h[0], body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_v5_clients_disconnect_0x8b_and_closes_v3_clients() {
    let app = Application::build(raw::settings()).await.unwrap();
    let mqtt = app.mqtt_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));

    let mut v5 = TcpStream::connect(mqtt).await.unwrap();
    v5.write_all(&raw::connect_v5("bye-v5")).await.unwrap();
    let (connack, body) = read_packet(&mut v5).await.unwrap();
    assert_eq!((connack, body[1]), (0x20, 0), "v5 accepted");
    let mut v3 = TcpStream::connect(mqtt).await.unwrap();
    v3.write_all(&raw::connect_v311("bye-v3")).await.unwrap();
    assert_eq!(read_packet(&mut v3).await, Some((0x20, vec![0, 0])));

    stop.send(()).unwrap();
    // A server DISCONNECT (MQTT 5 §3.14) with reason code 0x8B before the close.
    let (kind, body) = read_packet(&mut v5)
        .await
        .expect("a DISCONNECT before the connection closes");
    assert_eq!(kind, 0xE0, "DISCONNECT");
    assert_eq!(body[0], 0x8B, "Server shutting down");
    assert_eq!(read_packet(&mut v5).await, None, "then closed");
    assert_eq!(read_packet(&mut v3).await, None, "v3: closed, nothing sent");

    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("broker stops")
        .unwrap()
        .unwrap();
}
