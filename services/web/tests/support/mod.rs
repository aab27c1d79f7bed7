//! Test support: a fresh PostgreSQL database per test and the real web app in-process.
//!
//! Each [`TestApp`] creates a randomly named database through the `postgres` maintenance
//! database (from `DATABASE_URL`), migrates it with `lentera_db::migrate`, starts the app
//! on port 0 with MQTT pointed at a closed port (REST needs no broker), and drops the
//! database again in [`TestApp::stop`].
//!
//! Auth is on, as by default: each app has an operator `op` (password [`PASSWORD`]) and
//! `http` sends op's bearer API token; `anon` sends nothing.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, TimeZone, Utc};
pub use lentera_auth::admin::Role;
use lentera_db::write::Record;
use lentera_protocol::{DeviceId, Reading};
use lentera_web::Settings;
use lentera_web::startup::Application;
use sqlx::{Connection, Executor, PgConnection, PgPool};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const DEFAULT_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/lentera";

/// The test operator's password.
pub const PASSWORD: &str = "correct horse battery";

pub struct TestApp {
    pub addr: SocketAddr,
    /// Sends the operator `op`'s API token.
    pub http: reqwest::Client,
    /// Sends no credential.
    pub anon: reqwest::Client,
    /// op's bearer API token.
    pub token: String,
    pub pool: PgPool,
    db_name: String,
    admin_url: String,
    shutdown: oneshot::Sender<()>,
    /// The app's result, its error rendered to text (no anyhow dev-dependency needed).
    handle: JoinHandle<Result<(), String>>,
}

/// `url` with its database name replaced.
fn with_database(url: &str, name: &str) -> String {
    let (base, _) = url
        .rsplit_once('/')
        .expect("DATABASE_URL has a database name");
    let query = url
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    format!("{base}/{name}{query}")
}

/// A port nothing listens on: bound by us, then released.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl TestApp {
    /// The app with MQTT pointed at a closed port.
    pub async fn spawn() -> TestApp {
        Self::spawn_with_mqtt(closed_port()).await
    }

    /// The app with MQTT at `127.0.0.1:{mqtt_port}`.
    pub async fn spawn_with_mqtt(mqtt_port: u16) -> TestApp {
        Self::spawn_with(mqtt_port, |_| {}).await
    }

    /// The app with MQTT at `127.0.0.1:{mqtt_port}` and settings changed by `tweak`.
    pub async fn spawn_with(mqtt_port: u16, tweak: impl FnOnce(&mut Settings)) -> TestApp {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.into());
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let db_name = format!(
            "lentera_web_test_{}_{}_{}",
            std::process::id(),
            nanos,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let admin_url = with_database(&url, "postgres");
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .expect("PostgreSQL at DATABASE_URL must be reachable");
        admin
            .execute(format!(r#"CREATE DATABASE "{db_name}""#).as_str())
            .await
            .unwrap();
        admin.close().await.unwrap();
        let db_url = with_database(&url, &db_name);
        let pool = PgPool::connect(&db_url).await.unwrap();
        lentera_db::migrate(&pool).await.unwrap();

        let mut settings = Settings::default();
        settings.database.url = db_url;
        settings.database.migrate = false;
        settings.database.max_connections = 4;
        settings.mqtt.port = mqtt_port;
        settings.mqtt.client_id = Some(db_name.clone());
        settings.mqtt.ack_timeout_ms = 1_000;
        settings.web.http_addr = "127.0.0.1:0".into();
        settings.web.workers = Some(1);
        settings.web.db_ping_secs = 1;
        settings.web.retry_after_secs = 7;
        tweak(&mut settings);

        lentera_auth::admin::add_operator(&pool, "op", Role::Operator, PASSWORD)
            .await
            .unwrap();
        let token = lentera_auth::admin::new_api_token(&pool, "op", Some("tests"))
            .await
            .unwrap();
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap();

        let app = Application::build(settings).await.unwrap();
        let addr = app.addr();
        let (shutdown, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            app.run_until_stopped(async {
                let _ = rx.await;
            })
            .await
            .map_err(|e| format!("{e:#}"))
        });
        TestApp {
            addr,
            http,
            anon: reqwest::Client::new(),
            token,
            pool,
            db_name,
            admin_url,
            shutdown,
            handle,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self.get(path).await;
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    /// A WebSocket to `path` (e.g. `/ws`) with op's bearer token.
    pub async fn ws(&self, path: &str) -> Ws {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{}{}", self.addr, path)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", self.token).parse().unwrap(),
        );
        tokio_tungstenite::connect_async(req).await.unwrap().0
    }

    /// Creates an account (`viewer` or `operator`) and returns a client with its API token.
    pub async fn client_for(&self, name: &str, role: Role) -> reqwest::Client {
        lentera_auth::admin::add_operator(&self.pool, name, role, PASSWORD)
            .await
            .unwrap();
        let token = lentera_auth::admin::new_api_token(&self.pool, name, None)
            .await
            .unwrap();
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap()
    }

    pub async fn store(&self, records: &[Record]) {
        lentera_db::write::store(&self.pool, records).await.unwrap();
    }

    /// Stops the app (the shutdown future resolves; `run_until_stopped` must return) and
    /// drops the test database.
    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        let result = tokio::time::timeout(Duration::from_secs(15), self.handle)
            .await
            .expect("the app stops promptly after the shutdown future resolves")
            .unwrap();
        assert_eq!(result, Ok(()));
        self.pool.close().await;
        if let Ok(mut admin) = PgConnection::connect(&self.admin_url).await {
            let _ = admin
                .execute(
                    format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.db_name).as_str(),
                )
                .await;
        }
    }
}

pub fn dev(id: &str) -> DeviceId {
    DeviceId::parse(id).unwrap()
}

/// 2026-11-22T00:00:00Z plus `minutes`.
pub fn t0(minutes: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap() + chrono::Duration::minutes(minutes)
}

pub fn reading(device: &str, at: DateTime<Utc>, metrics: &[(&str, f64)]) -> Record {
    Record::Reading(
        Reading::new(
            dev(device),
            at,
            metrics.iter().map(|(k, v)| (k.to_string(), *v)),
        )
        .unwrap(),
    )
}
