//! Shared test helpers: run the real ingest in-process on port 0, an MQTT subscriber,
//! and a line-oriented TCP client. The broker is `lentera_tests::TestBroker`.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::time::Duration;

use lentera_ingest::Settings;
use lentera_ingest::startup::Application;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Publish, QoS};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Upper bound for anything a test waits on.
pub const WAIT: Duration = Duration::from_secs(5);

/// A port nothing listens on: bound by the OS, then released.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Settings for a test instance: loopback, port 0, its own MQTT client id, and OPEN
/// (`auth.open = true`, as `LENTERA_AUTH__OPEN=true` would set it): these tests are about
/// framing, validation, statuses and receive times, not identity, so they name their
/// devices freely. The identity tests (`tests/identity.rs`) start closed ingests with
/// [`closed_settings`]. For the same reason the per-device quota is off (some send 100
/// readings of one device at once); the quota tests set it.
pub fn settings(mqtt_port: u16) -> Settings {
    let mut s = Settings::default();
    s.auth.open = true;
    s.quota.device_rate_per_sec = 0.0;
    s.ingest.http_addr = "127.0.0.1:0".into();
    s.ingest.tcp_addr = "127.0.0.1:0".into();
    s.ingest.http_workers = 1;
    s.ingest.shutdown_timeout_secs = 5;
    s.mqtt.port = mqtt_port;
    s.mqtt.ack_timeout_ms = 2_000;
    s.mqtt.client_id = Some(format!("ingest-test-{}", closed_port()));
    s
}

pub struct TestApp {
    pub http: SocketAddr,
    pub tcp: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub async fn spawn(settings: Settings) -> TestApp {
        let app = Application::build(settings).await.expect("app builds");
        let (http, tcp) = (app.http_addr(), app.tcp_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        TestApp {
            http,
            tcp,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// Triggers the shutdown future and waits (bounded) for the app to finish draining.
    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        tokio::time::timeout(WAIT * 2, task)
            .await
            .expect("shutdown finished in time")
            .expect("app task did not panic")
            .expect("app ended without error");
    }

    /// Polls `/readyz` until the MQTT connection is up.
    pub async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(r) = client.get(self.url("/readyz")).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "ingest never became ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An MQTT client whose received publishes arrive on a channel.
pub struct Mqtt {
    pub client: AsyncClient,
    pub rx: mpsc::Receiver<Publish>,
}

impl Mqtt {
    /// Connects and subscribes to `filter`, returning once the SUBACK arrived.
    pub async fn connect(port: u16, filter: &str) -> Mqtt {
        let mut opts = MqttOptions::new(format!("test-sub-{}", closed_port()), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let (tx, rx) = mpsc::channel(64);
        let (subscribed_tx, subscribed) = oneshot::channel();
        tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            while let Ok(event) = eventloop.poll().await {
                match event {
                    Event::Incoming(Incoming::SubAck(_)) => {
                        if let Some(t) = subscribed_tx.take() {
                            let _ = t.send(());
                        }
                    }
                    Event::Incoming(Incoming::Publish(p)) => {
                        let _ = tx.send(p).await;
                    }
                    _ => {}
                }
            }
        });
        tokio::time::timeout(WAIT, subscribed)
            .await
            .expect("SUBACK in time")
            .unwrap();
        Mqtt { client, rx }
    }

    /// The next publish on `topic`, skipping others.
    pub async fn next_on(&mut self, topic: &str) -> Vec<u8> {
        self.next_publish(topic).await.payload.to_vec()
    }

    /// The next PUBLISH on `topic`, skipping others, with its flags: `retain` is set when
    /// the broker sends a stored retained message to a new subscription and clear on
    /// live forwarding [MQTT-3.3.1-8, -9]; `qos` is the lower of the publisher's and
    /// the subscription's.
    pub async fn next_publish(&mut self, topic: &str) -> Publish {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let p = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no message on {topic} in time"))
                .expect("subscriber alive");
            if p.topic == topic {
                return p;
            }
        }
    }
}

impl Mqtt {
    /// The next PUBLISH on `topic` within `wait`, or `None`.
    pub async fn next_publish_within(&mut self, topic: &str, wait: Duration) -> Option<Publish> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(p)) if p.topic == topic => return Some(p),
                Ok(Some(_)) => {}
                _ => return None,
            }
        }
    }

    /// The first message arriving within `wait`, if any (for "nothing happens" checks).
    pub async fn quiet_for(&mut self, wait: Duration) -> Option<(String, Vec<u8>)> {
        tokio::time::timeout(wait, self.rx.recv())
            .await
            .ok()
            .flatten()
            .map(|p| (p.topic, p.payload.to_vec()))
    }
}

/// A line-oriented TCP client for the ingest's line protocol.
pub struct Line {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Line {
    pub async fn connect(addr: SocketAddr) -> Line {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (r, w) = stream.into_split();
        Line {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// The next line without its newline; `None` on EOF. Panics after `WAIT`.
    pub async fn recv(&mut self) -> Option<String> {
        self.recv_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("no reply line within {WAIT:?}"))
    }

    /// `None` when nothing arrived in `wait`; `Some(None)` on EOF.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Option<String>> {
        let mut line = String::new();
        match tokio::time::timeout(wait, self.reader.read_line(&mut line)).await {
            Err(_) => None,
            Ok(Ok(0)) => Some(None),
            Ok(Ok(_)) => Some(Some(line.trim_end_matches('\n').to_owned())),
            Ok(Err(_)) => Some(None),
        }
    }

    /// Sends one line and returns the reply.
    pub async fn request(&mut self, line: &str) -> String {
        self.send(format!("{line}\n").as_bytes()).await;
        self.recv().await.expect("a reply, not EOF")
    }
}

/// Settings for a closed test instance (the default mode) whose registry lives in
/// `database_url`, with the default quota.
pub fn closed_settings(mqtt_port: u16, database_url: &str) -> Settings {
    let mut s = settings(mqtt_port);
    s.auth = Default::default();
    s.quota = Default::default();
    s.database.url = database_url.to_owned();
    s.database.acquire_timeout_ms = 500;
    s
}

/// A fresh, migrated database (`DATABASE_URL`'s server) with devices provisioned as an
/// operator would (`lentera_auth::admin`); ingest itself never migrates.
pub struct Registry {
    pub db: lentera_tests::TestDb,
    pub pool: sqlx::PgPool,
}

impl Registry {
    pub async fn create() -> Registry {
        let db = lentera_tests::TestDb::create()
            .await
            .expect("test database");
        let pool = db.connect().await.expect("connect");
        lentera_db::MIGRATOR.run(&pool).await.expect("migrate");
        Registry { db, pool }
    }

    /// Provisions `id` (a greenhouse) and returns its token.
    pub async fn add(&self, id: &str) -> String {
        lentera_auth::admin::add_device(
            &self.pool,
            lentera_auth::admin::NewDevice {
                id: id.into(),
                kind: lentera_auth::Kind::Greenhouse,
                name: None,
                location: None,
            },
        )
        .await
        .expect("device added")
    }

    pub async fn disable(&self, id: &str) {
        lentera_auth::admin::set_disabled(&self.pool, id, true)
            .await
            .expect("device disabled");
    }

    pub async fn drop_db(self) {
        self.pool.close().await;
        let _ = self.db.drop_db().await;
    }
}

/// A TCP proxy to the PostgreSQL server of `DATABASE_URL`: [`PgProxy::cut`] drops every
/// proxied connection and refuses new ones, so PostgreSQL "goes away" for whoever
/// connects through it while the shared server keeps serving the other tests.
pub struct PgProxy {
    pub addr: SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl PgProxy {
    pub async fn start() -> PgProxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = pg_server();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> =
            Default::default();
        let (up2, tasks2) = (up.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue;
                }
                let target = target.clone();
                let h = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tasks2.lock().unwrap().push(h.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        PgProxy { addr, up, tasks }
    }

    /// `url` (a database on `DATABASE_URL`'s server) reached through this proxy.
    pub fn url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap();
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let userinfo = authority.rsplit_once('@').map(|(u, _)| format!("{u}@"));
        format!(
            "{scheme}://{}{}{path}",
            userinfo.unwrap_or_default(),
            self.addr
        )
    }

    /// PostgreSQL is gone for this proxy's clients (the listener stays, refusing).
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        let mut tasks = self.tasks.lock().unwrap();
        // The first is the accept loop: it keeps running, dropping new clients.
        for h in tasks.drain(1..) {
            h.abort();
        }
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        for h in self.tasks.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

fn pg_server() -> String {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into());
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(&url);
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let hostport = authority.rsplit('@').next().unwrap_or(authority);
    if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:5432")
    }
}

/// A raw HTTP/1.1 exchange: writes `request` as is, reads until the server closes or
/// `wait` passes; returns what arrived.
pub async fn raw_http(stream: &mut TcpStream, request: &[u8], wait: Duration) -> String {
    use tokio::io::AsyncReadExt;
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}
