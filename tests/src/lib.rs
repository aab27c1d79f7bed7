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
mod mqtt_board;
mod pg;
mod process;
pub mod readings;

pub use broker::{REQUIRE_MOSQUITTO, TestBroker};
pub use db::TestDb;
pub use pg::{PrivatePostgres, REQUIRE_PG_CTL};
pub use process::{Service, bin_path};

use std::net::SocketAddr;
use std::path::PathBuf;

/// The services, wired together on OS-chosen ports, with one fresh database.
pub struct Stack {
    pub db: TestDb,
    pub dir: PathBuf,
    /// Our broker (its store in its own directory, kept across restarts) or Mosquitto.
    pub broker: TestBroker,
    /// One, or several sharing a `$share/…` subscription ([`StackBuilder::historians`]).
    pub historians: Vec<Service>,
    pub ingest: Service,
    web: Option<Service>,
    lamp: Option<Service>,
}

/// How to build a [`Stack`]; [`Stack::start`] is `Stack::builder().start()`.
pub struct StackBuilder {
    postgres_url: Option<String>,
    broker: Option<TestBroker>,
    historians: usize,
    shared_group: Option<String>,
    readings_only: bool,
    env: Vec<(&'static str, String, String)>,
}

impl Stack {
    /// All five services on our broker and the `DATABASE_URL` server.
    pub async fn start() -> anyhow::Result<Stack> {
        Stack::builder().start().await
    }

    pub fn builder() -> StackBuilder {
        StackBuilder {
            postgres_url: None,
            broker: None,
            historians: 1,
            shared_group: None,
            readings_only: false,
            env: Vec::new(),
        }
    }

    pub fn mqtt_addr(&self) -> SocketAddr {
        self.broker.addr()
    }

    /// The (first) historian.
    pub fn historian(&self) -> &Service {
        &self.historians[0]
    }

    pub fn historian_mut(&mut self) -> &mut Service {
        &mut self.historians[0]
    }

    /// The web service; panics on a [`StackBuilder::readings_only`] stack.
    pub fn web(&self) -> &Service {
        self.web.as_ref().expect("this stack runs no web service")
    }

    pub fn web_mut(&mut self) -> &mut Service {
        self.web.as_mut().expect("this stack runs no web service")
    }

    /// The lamp controller; panics on a [`StackBuilder::readings_only`] stack.
    pub fn lamp(&self) -> &Service {
        self.lamp.as_ref().expect("this stack runs no lamp service")
    }

    pub fn lamp_mut(&mut self) -> &mut Service {
        self.lamp.as_mut().expect("this stack runs no lamp service")
    }

    /// `http://127.0.0.1:PORT` of a service's address `key`.
    pub fn url(&self, service: &Service, key: &str) -> String {
        format!(
            "http://{}",
            service.addr(key).expect("address in ready file")
        )
    }

    /// `http://…/api/v1/readings` on ingest.
    pub fn readings_url(&self) -> String {
        format!("{}/api/v1/readings", self.url(&self.ingest, "http"))
    }

    /// SIGTERM to every service, the broker last; fails on the first that does not exit 0.
    pub fn terminate_all(&mut self) -> anyhow::Result<()> {
        let mut services: Vec<&mut Service> = vec![&mut self.ingest];
        services.extend(self.web.as_mut());
        services.extend(self.lamp.as_mut());
        services.extend(self.historians.iter_mut());
        for s in services {
            let status = s.terminate()?;
            anyhow::ensure!(
                status.success(),
                "{} exited with {status}:\n{}",
                s.name,
                s.log_text()
            );
        }
        let status = self.broker.terminate()?;
        anyhow::ensure!(
            status.success(),
            "the broker exited with {status}:\n{}",
            self.broker.log_text()
        );
        Ok(())
    }

    /// Restarts ingest on the HTTP and TCP addresses it had, so boards find it again.
    pub fn restart_ingest(&mut self) -> anyhow::Result<()> {
        let http = self.ingest.addr("http")?;
        let tcp = self.ingest.addr("tcp")?;
        self.ingest
            .set_env("LENTERA_INGEST__HTTP_ADDR", http.to_string());
        self.ingest
            .set_env("LENTERA_INGEST__TCP_ADDR", tcp.to_string());
        self.ingest.restart()
    }
}

impl StackBuilder {
    /// Creates the test database on this server (a superuser URL, e.g.
    /// [`PrivatePostgres::url`]) instead of `DATABASE_URL`'s.
    pub fn postgres(mut self, admin_url: String) -> Self {
        self.postgres_url = Some(admin_url);
        self
    }

    /// Uses this broker (e.g. [`TestBroker::mosquitto`]) instead of a fresh one of ours.
    pub fn broker(mut self, broker: TestBroker) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Runs `n` historians sharing the subscription group `group`, each with its own
    /// client id (`lentera-historian-1`, …), logs `historian-1.log`, ….
    pub fn historians(mut self, n: usize, group: &str) -> Self {
        self.historians = n.max(1);
        self.shared_group = Some(group.to_owned());
        self
    }

    /// Only the readings path: broker, historian(s), ingest — no web, no lamp.
    pub fn readings_only(mut self) -> Self {
        self.readings_only = true;
        self
    }

    /// An extra environment variable for `service` ("historian", "ingest", …).
    pub fn env(mut self, service: &'static str, key: &str, value: impl Into<String>) -> Self {
        self.env.push((service, key.to_owned(), value.into()));
        self
    }

    /// Starts the services in dependency order: broker, historian(s) (which migrate the
    /// database; the first one alone, so they do not race to migrate), then ingest, web
    /// and lamp.
    pub async fn start(self) -> anyhow::Result<Stack> {
        let db = match &self.postgres_url {
            Some(url) => TestDb::create_on(url).await?,
            None => TestDb::create().await?,
        };
        let dir = tempdir("stack")?;
        eprintln!("stack logs in {}", dir.display());
        let broker = match self.broker {
            Some(b) => b,
            None => tokio::task::spawn_blocking(TestBroker::start).await?,
        };
        let mqtt_port = broker.port().to_string();
        let extra = &self.env;
        let env_for = |service: &str, own: &[(&str, String)]| {
            let mut env: Vec<(String, String)> = vec![
                ("LENTERA_DATABASE__URL".into(), db.url.clone()),
                ("LENTERA_TELEMETRY__LOG".into(), "info".into()),
                ("LENTERA_MQTT__HOST".into(), "127.0.0.1".into()),
                ("LENTERA_MQTT__PORT".into(), mqtt_port.clone()),
            ];
            env.extend(own.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
            env.extend(
                extra
                    .iter()
                    .filter(|(s, _, _)| *s == service)
                    .map(|(_, k, v)| (k.clone(), v.clone())),
            );
            env
        };
        let mut historians = Vec::new();
        for i in 1..=self.historians {
            let mut own = vec![
                ("LENTERA_HISTORIAN__ADMIN_ADDR", "127.0.0.1:0".to_owned()),
                ("LENTERA_HISTORIAN__BATCH_INTERVAL_MS", "20".to_owned()),
            ];
            let instance = match &self.shared_group {
                Some(group) => {
                    own.push(("LENTERA_HISTORIAN__SHARED_GROUP", group.clone()));
                    own.push(("LENTERA_MQTT__CLIENT_ID", format!("lentera-historian-{i}")));
                    format!("historian-{i}")
                }
                None => "historian".to_owned(),
            };
            let h = Service::spawn_as("historian", &instance, &dir, &env_for("historian", &own))?;
            h.wait_ready("admin").await?;
            historians.push(h);
        }
        let ingest = Service::spawn(
            "ingest",
            &dir,
            &env_for(
                "ingest",
                &[
                    ("LENTERA_INGEST__HTTP_ADDR", "127.0.0.1:0".into()),
                    ("LENTERA_INGEST__TCP_ADDR", "127.0.0.1:0".into()),
                ],
            ),
        )?;
        let (web, lamp) = if self.readings_only {
            (None, None)
        } else {
            let web = Service::spawn(
                "web",
                &dir,
                &env_for("web", &[("LENTERA_WEB__HTTP_ADDR", "127.0.0.1:0".into())]),
            )?;
            let lamp = Service::spawn(
                "lamp",
                &dir,
                &env_for(
                    "lamp",
                    &[("LENTERA_LAMP__ADMIN_ADDR", "127.0.0.1:0".into())],
                ),
            )?;
            web.wait_ready("http").await?;
            lamp.wait_ready("admin").await?;
            (Some(web), Some(lamp))
        };
        ingest.wait_ready("http").await?;
        Ok(Stack {
            db,
            dir,
            broker,
            historians,
            ingest,
            web,
            lamp,
        })
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
