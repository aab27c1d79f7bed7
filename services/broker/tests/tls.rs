//! MQTT over TLS: a self-signed certificate made with the `openssl` CLI for each test,
//! a rustls client and (when installed) `mosquitto_sub --cafile` exchanging messages
//! with plain TCP clients, the ready file's `tls` key, and refusals.

mod raw;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use raw::*;
use rumqttc::QoS;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A fresh directory holding a throw-away CA (`ca.pem`) and a certificate it signed
/// for `localhost` / 127.0.0.1 (`cert.pem`, `key.pem`). A leaf under a CA rather than
/// one self-signed certificate: webpki refuses a CA certificate used as the server's.
fn self_signed() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "lentera-tls-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let openssl = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(["req", "-x509", "-nodes", "-days", "1", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .args(args)
            .current_dir(&dir)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("the openssl CLI makes the test certificates (apt-get install openssl)");
        assert!(status.success(), "openssl req {args:?} failed");
    };
    openssl(&[
        "-subj",
        "/CN=lentera-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-addext",
        "basicConstraints=critical,CA:FALSE",
        "-keyout",
        "key.pem",
        "-out",
        "cert.pem",
    ]);
    dir
}

fn tls_settings(dir: &Path) -> lentera_broker::settings::Settings {
    let mut s = settings();
    s.broker.tls_cert = Some(dir.join("cert.pem"));
    s.broker.tls_key = Some(dir.join("key.pem"));
    s
}

/// A blocking rustls client that trusts only the test CA.
fn tls_connect(addr: SocketAddr, ca: &Path) -> std::io::Result<TlsStream> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(WAIT))?;
    Ok(StreamOwned::new(conn, tcp))
}

fn exchange(s: &mut impl ReadWrite, send: &[u8], expect_len: usize) -> std::io::Result<Vec<u8>> {
    s.write_all(send)?;
    s.flush()?;
    let mut buf = vec![0; expect_len];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

#[tokio::test]
async fn v311_client_over_tls_exchanges_messages_with_tcp_clients() {
    let dir = self_signed();
    let b = start(tls_settings(&dir)).await;
    let tls_addr = b.tls.expect("TLS listener when cert and key are set");
    let (tcp, el) = tcp_client(b.app_mqtt, "tcp-t").await;
    tcp.subscribe("tls/out", QoS::AtMostOnce).await.unwrap();
    let from_tls = tokio::spawn(next_publish(el));
    // Let the SUBSCRIBE reach the broker before the TLS client publishes.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let ca = dir.join("ca.pem");
    let mut s = tokio::task::spawn_blocking(move || {
        let mut s = tls_connect(tls_addr, &ca).unwrap();
        assert_eq!(
            exchange(&mut s, &connect_v311("tls-a"), 4).unwrap(),
            CONNACK_OK
        );
        assert_eq!(
            exchange(&mut s, &subscribe("tls/in"), 5).unwrap(),
            SUBACK_1_QOS0
        );
        exchange(&mut s, &publish("tls/out", b"over tls"), 0).unwrap();
        s
    })
    .await
    .unwrap();

    let p = tokio::time::timeout(WAIT, from_tls).await.unwrap().unwrap();
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("tls/out", &b"over tls"[..])
    );

    // A second TCP client: the first one's event loop ended with `next_publish`.
    let (tcp2, mut el2) = tcp_client(b.app_mqtt, "tcp-t2").await;
    tokio::spawn(async move { while el2.poll().await.is_ok() {} });
    tcp2.publish("tls/in", QoS::AtMostOnce, false, "to tls")
        .await
        .unwrap();
    let expected = publish("tls/in", b"to tls");
    let got = tokio::task::spawn_blocking(move || exchange(&mut s, &[], expected.len()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, publish("tls/in", b"to tls"));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn v5_client_connects_over_tls_and_ready_file_names_the_listeners() {
    let dir = self_signed();
    let mut settings = tls_settings(&dir);
    settings.ready_file = Some(dir.join("ready.json"));
    let b = start(settings).await;
    let ready: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("ready.json")).unwrap()).unwrap();
    let tls_addr = b.tls.unwrap();
    assert_eq!(ready["tls"], tls_addr.to_string());
    assert_eq!(ready["ws"], b.ws.unwrap().to_string());

    let ca = dir.join("ca.pem");
    let head = tokio::task::spawn_blocking(move || {
        let mut s = tls_connect(tls_addr, &ca).unwrap();
        exchange(&mut s, &connect_v5("tls-v5"), 4).unwrap()
    })
    .await
    .unwrap();
    // CONNACK; after the remaining length, flags 0 and reason code 0 = Success.
    assert_eq!((head[0], head[2], head[3]), (0x20, 0, 0), "{head:02x?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn plain_mqtt_on_the_tls_port_gets_no_connack() {
    let dir = self_signed();
    let b = start(tls_settings(&dir)).await;
    let tls_addr = b.tls.unwrap();
    let got = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(tls_addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        exchange(&mut s, &connect_v311("plain"), 4)
    })
    .await
    .unwrap();
    // No CONNACK: at most a TLS alert record (content type 0x15), then the close.
    assert!(
        got.as_ref().map_or(true, |b| b[0] == 0x15),
        "a TLS port must not answer plain MQTT: {got:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn no_tls_listener_without_a_certificate_and_a_bad_one_stops_start_up() {
    assert_eq!(start(settings()).await.tls, None);

    let dir = self_signed();
    let mut s = tls_settings(&dir);
    s.broker.tls_key = Some(dir.join("missing.pem"));
    let err = lentera_broker::startup::Application::build(s)
        .await
        .err()
        .expect("a missing key file fails start-up");
    assert!(format!("{err:#}").contains("missing.pem"), "{err:#}");
    let _ = std::fs::remove_dir_all(dir);
}

/// An independent client: Mosquitto's own `mosquitto_sub` verifying our certificate.
#[tokio::test]
async fn mosquitto_sub_receives_over_tls() {
    if Command::new("mosquitto_sub")
        .arg("--help")
        .output()
        .is_err()
    {
        let required = std::env::var_os("LENTERA_REQUIRE_MOSQUITTO")
            .is_some_and(|v| !v.is_empty() && v != "0");
        assert!(
            !required,
            "mosquitto_sub_receives_over_tls needs `mosquitto_sub` and \
             LENTERA_REQUIRE_MOSQUITTO is set (apt-get install -y mosquitto-clients)"
        );
        eprintln!(
            "\n*** SKIPPING mosquitto_sub_receives_over_tls: `mosquitto_sub` is not installed \
             (apt-get install -y mosquitto-clients); this test did NOT run. Set \
             LENTERA_REQUIRE_MOSQUITTO=1 to make this a failure. ***\n"
        );
        return;
    }
    let dir = self_signed();
    let b = start(tls_settings(&dir)).await;
    let tls_addr = b.tls.unwrap();
    // -W 5: it gives up by itself, so a failing test leaves nothing running.
    let sub = Command::new("mosquitto_sub")
        .args(["-h", "localhost", "-p", &tls_addr.port().to_string()])
        .arg("--cafile")
        .arg(dir.join("ca.pem"))
        .args(["-t", "tls/m", "-C", "1", "-W", "5", "-i", "mosq-tls"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tcp, mut el) = tcp_client(b.app_mqtt, "tcp-m").await;
    tokio::spawn(async move { while el.poll().await.is_ok() {} });
    // mosquitto_sub subscribes after its TLS handshake: publish until it has the message
    // and exits, instead of guessing how long that takes.
    let publisher = tokio::spawn(async move {
        loop {
            tcp.publish("tls/m", QoS::AtMostOnce, false, "hi mosquitto")
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    let out = tokio::task::spawn_blocking(move || sub.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    publisher.abort();
    assert!(out.status.success(), "mosquitto_sub: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hi mosquitto");
    let _ = std::fs::remove_dir_all(dir);
}

/// Counts the largest TLS record the server sends (its 5-byte headers parsed as the
/// bytes go by), as a board's receive buffer would have to hold it.
struct RecordMeter {
    inner: TcpStream,
    /// Bytes of the current record still to come, or of its header read so far.
    left: usize,
    header: Vec<u8>,
    largest: Arc<std::sync::atomic::AtomicUsize>,
}

impl Read for RecordMeter {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &b in &buf[..n] {
            if self.left > 0 {
                self.left -= 1;
                continue;
            }
            self.header.push(b);
            if self.header.len() == 5 {
                let len = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                self.largest
                    .fetch_max(len, std::sync::atomic::Ordering::Relaxed);
                self.left = len;
                self.header.clear();
            }
        }
        Ok(n)
    }
}

impl Write for RecordMeter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[tokio::test]
async fn a_tls12_only_client_with_a_small_buffer_gets_records_that_fit_it() {
    // What an ESP8266 (BearSSL: TLS 1.2, ECDHE + AES-128-GCM, 512-byte receive buffer
    // with `setBufferSizes(512, 512)`) needs from the broker.
    let dir = self_signed();
    let mut s = tls_settings(&dir);
    s.broker.tls_max_fragment_bytes = Some(512);
    let b = start(s).await;
    let tls_addr = b.tls.unwrap();
    let ca = dir.join("ca.pem");
    let largest = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = largest.clone();
    let mut tls = tokio::task::spawn_blocking(move || {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(&ca).unwrap())
            .unwrap();
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites = vec![
            rustls::crypto::ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ];
        let config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").unwrap();
        let conn = ClientConnection::new(Arc::new(config), name).unwrap();
        let tcp = TcpStream::connect(tls_addr).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        let meter = RecordMeter {
            inner: tcp,
            left: 0,
            header: Vec::new(),
            largest: seen,
        };
        let mut s = StreamOwned::new(conn, meter);
        assert_eq!(
            exchange(&mut s, &connect_v311("esp-1"), 4).unwrap(),
            CONNACK_OK
        );
        assert_eq!(
            s.conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        assert_eq!(
            exchange(&mut s, &subscribe("esp/in"), 5).unwrap(),
            SUBACK_1_QOS0
        );
        s
    })
    .await
    .unwrap();
    // A 4 KiB message arrives in records of at most 512 bytes of plaintext.
    let (tcp, mut el) = tcp_client(b.app_mqtt, "tcp-esp").await;
    tokio::spawn(async move { while el.poll().await.is_ok() {} });
    let payload = vec![b'x'; 4096];
    let mut expected = vec![0x30];
    let body = [&[0u8, 6][..], b"esp/in", &payload].concat();
    let mut n = body.len();
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        expected.push(if n > 0 { byte | 0x80 } else { byte });
        if n == 0 {
            break;
        }
    }
    expected.extend_from_slice(&body);
    tcp.publish("esp/in", QoS::AtMostOnce, false, payload)
        .await
        .unwrap();
    let len = expected.len();
    let got = tokio::task::spawn_blocking(move || exchange(&mut tls, &[], len))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, expected);
    // Plaintext 512 + AES-GCM's explicit nonce (8) and tag (16).
    let largest = largest.load(std::sync::atomic::Ordering::Relaxed);
    assert!(largest <= 512 + 24, "a record of {largest} bytes");
    assert!(largest > 400, "the meter saw full records ({largest})");
    let _ = std::fs::remove_dir_all(dir);
}
