//! End-to-end test harness: the real Lentera binaries against a real PostgreSQL.
//!
//! Modelled on influxdb3's server tests: each service is spawned as its own process with
//! every port set to 0, learns its addresses from the OS and writes them to a ready file,
//! which the harness reads. Processes are killed on `Drop`, so a failing test leaves
//! nothing running. Logs go to files in a per-stack temporary directory whose path is
//! printed, so a failure can be read afterwards.
//!
//! Build the binaries first (`cargo build --workspace --bins`, which `scripts/test` does).
//!
//! The services' own integration tests use this crate too (as a dev-dependency), for
//! [`TestBroker`]: a throw-away `lentera-broker` per test.

mod broker;
mod db;
mod process;

pub use broker::{REQUIRE_MOSQUITTO, TestBroker};
pub use db::TestDb;
pub use process::{Service, bin_path};

use std::net::SocketAddr;
use std::path::PathBuf;

/// The five services, wired together on OS-chosen ports, with one fresh database.
pub struct Stack {
    pub db: TestDb,
    pub dir: PathBuf,
    pub broker: Service,
    pub historian: Service,
    pub ingest: Service,
    pub web: Service,
    pub lamp: Service,
}

impl Stack {
    /// Starts PostgreSQL-backed services in dependency order: broker, historian (which
    /// migrates the database), then ingest, web and lamp.
    pub async fn start() -> anyhow::Result<Stack> {
        let db = TestDb::create().await?;
        let dir = tempdir("stack")?;
        eprintln!("stack logs in {}", dir.display());
        let common = |extra: &[(&str, String)]| {
            let mut env: Vec<(String, String)> = vec![
                ("LENTERA_DATABASE__URL".into(), db.url.clone()),
                ("LENTERA_TELEMETRY__LOG".into(), "info".into()),
            ];
            env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
            env
        };
        let broker = Service::spawn(
            "broker",
            &dir,
            &common(&[
                ("LENTERA_BROKER__MQTT_ADDR", "127.0.0.1:0".into()),
                ("LENTERA_BROKER__ADMIN_ADDR", "127.0.0.1:0".into()),
            ]),
        )?;
        let mqtt_port = broker.addr("mqtt")?.port().to_string();
        let with_mqtt = |extra: &[(&str, String)]| {
            let mut env = common(extra);
            env.push(("LENTERA_MQTT__HOST".into(), "127.0.0.1".into()));
            env.push(("LENTERA_MQTT__PORT".into(), mqtt_port.clone()));
            env
        };
        let historian = Service::spawn(
            "historian",
            &dir,
            &with_mqtt(&[
                ("LENTERA_HISTORIAN__ADMIN_ADDR", "127.0.0.1:0".into()),
                ("LENTERA_HISTORIAN__BATCH_INTERVAL_MS", "20".into()),
            ]),
        )?;
        historian.wait_ready("admin").await?;
        let ingest = Service::spawn(
            "ingest",
            &dir,
            &with_mqtt(&[
                ("LENTERA_INGEST__HTTP_ADDR", "127.0.0.1:0".into()),
                ("LENTERA_INGEST__TCP_ADDR", "127.0.0.1:0".into()),
            ]),
        )?;
        let web = Service::spawn(
            "web",
            &dir,
            &with_mqtt(&[("LENTERA_WEB__HTTP_ADDR", "127.0.0.1:0".into())]),
        )?;
        let lamp = Service::spawn(
            "lamp",
            &dir,
            &with_mqtt(&[("LENTERA_LAMP__ADMIN_ADDR", "127.0.0.1:0".into())]),
        )?;
        for (s, key) in [(&ingest, "http"), (&web, "http"), (&lamp, "admin")] {
            s.wait_ready(key).await?;
        }
        Ok(Stack {
            db,
            dir,
            broker,
            historian,
            ingest,
            web,
            lamp,
        })
    }

    pub fn mqtt_addr(&self) -> SocketAddr {
        self.broker
            .addr("mqtt")
            .expect("broker has an mqtt address")
    }

    /// `http://127.0.0.1:PORT` of a service's address `key`.
    pub fn url(&self, service: &Service, key: &str) -> String {
        format!(
            "http://{}",
            service.addr(key).expect("address in ready file")
        )
    }
}

/// A fresh directory under the system temp dir.
pub fn tempdir(tag: &str) -> std::io::Result<PathBuf> {
    let dir =
        std::env::temp_dir().join(format!("lentera-{tag}-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A process-unique number, for names.
pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    nanos.wrapping_mul(1000) + N.fetch_add(1, Ordering::Relaxed)
}
