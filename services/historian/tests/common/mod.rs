//! Test helpers: a fresh migrated database per test and the real historian running
//! in-process on OS-chosen ports. The broker is `lentera_tests::TestBroker`.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lentera_historian::Settings;
use lentera_historian::startup::Application;
use sqlx::{Connection, Executor, PgConnection, PgPool};

pub const DEFAULT_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/lentera";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A name no other test run uses, for databases and MQTT client ids.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        nanos,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A freshly created and migrated database; dropped (best effort) by [`TestDb::drop_db`].
pub struct TestDb {
    pub url: String,
    pub name: String,
    pub pool: PgPool,
    admin_url: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let admin_url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.into());
        let name = unique("lentera_hist_test");
        let mut conn = PgConnection::connect(&admin_url)
            .await
            .expect("PostgreSQL must be running (DATABASE_URL)");
        conn.execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .unwrap();
        let (base, _) = admin_url.rsplit_once('/').unwrap();
        let url = format!("{base}/{name}");
        let pool = PgPool::connect(&url).await.unwrap();
        lentera_db::migrate(&pool).await.unwrap();
        TestDb {
            url,
            name,
            pool,
            admin_url,
        }
    }

    pub async fn drop_db(self) {
        self.pool.close().await;
        if let Ok(mut conn) = PgConnection::connect(&self.admin_url).await {
            let _ = conn
                .execute(
                    format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.name).as_str(),
                )
                .await;
        }
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Settings for an in-process historian against `db` and a broker on `mqtt_port`.
pub fn settings(db_url: &str, mqtt_port: u16) -> Settings {
    let mut s = Settings::default();
    s.database.url = db_url.to_owned();
    s.database.acquire_timeout_ms = 1_000;
    s.mqtt.port = mqtt_port;
    s.mqtt.client_id = Some(unique("hist"));
    s.historian.admin_addr = "127.0.0.1:0".into();
    s.historian.batch_interval_ms = 20;
    s
}

/// The real historian, running on its own runtime thread so that stopping it also ends
/// its MQTT connection task.
pub struct RunningApp {
    pub admin: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl RunningApp {
    pub fn spawn(settings: Settings) -> RunningApp {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let app = Application::build(settings)?;
                addr_tx.send(app.admin_addr()).unwrap();
                app.run_until_stopped(async {
                    let _ = stop_rx.await;
                })
                .await
            })
        });
        let admin = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("historian did not bind its admin port");
        RunningApp {
            admin,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Sends the shutdown signal and waits for a clean exit.
    pub fn stop(mut self) {
        self.stop.take().map(|s| s.send(()));
        let t = self.thread.take().unwrap();
        t.join().unwrap().unwrap();
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://{}{path}", self.admin))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Polls `cond` every 50 ms until true or `secs` pass; panics with `what` on timeout.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// A plain rumqttc client for publishing test traffic.
pub fn publisher(port: u16) -> rumqttc::AsyncClient {
    let mut o = rumqttc::MqttOptions::new(unique("pub"), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(o, 100);
    tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    client
}
