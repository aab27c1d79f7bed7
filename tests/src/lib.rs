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
pub mod identity;
mod mqtt_board;
mod pg;
mod process;
pub mod readings;

pub use broker::{
    BrokerKind, REQUIRE_MOSQUITTO, REQUIRE_RUMQTTD, RUMQTTD_BIN, RUMQTTD_VERSION, TestBroker,
};
pub use db::TestDb;
pub use pg::{PrivatePostgres, REQUIRE_PG_CTL};
pub use process::{Service, bin_path};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;

/// The services, wired together on OS-chosen ports, with one fresh database.
pub struct Stack {
    pub db: TestDb,
    pub dir: PathBuf,
    /// Our broker (its store in its own directory, kept across restarts), Mosquitto or
    /// rumqttd.
    pub broker: TestBroker,
    /// One, or several sharing a `$share/…` subscription ([`StackBuilder::historians`]).
    pub historians: Vec<Service>,
    pub ingest: Service,
    web: Option<Service>,
    lamp: Option<Service>,
    /// Tokens of the devices provisioned so far ([`Stack::provision`]).
    tokens: Mutex<HashMap<String, String>>,
    /// Bearer API token of the stack's operator account.
    operator_token: String,
    /// The read-only broker user's name and password.
    observer: (String, String),
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

    /// A builder whose stack runs on `kind`: ours closed, as deployed (the default), or
    /// Mosquitto or rumqttd. `None`, after saying SKIPPING, when that broker is not
    /// installed and its `LENTERA_REQUIRE_*` is not set (see [`TestBroker::mosquitto`]).
    pub fn on(kind: BrokerKind) -> Option<StackBuilder> {
        match kind {
            BrokerKind::Ours => Some(Stack::builder()),
            other => TestBroker::of(other).map(|b| Stack::builder().broker(b)),
        }
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

    /// `http://…/api/v1/readings` on ingest (it needs `Authorization: Bearer <token>`).
    pub fn readings_url(&self) -> String {
        format!("{}/api/v1/readings", self.url(&self.ingest, "http"))
    }

    /// Provisions `device` of `kind` (`greenhouse`, `lamp`, `sensor`) with the `lentera`
    /// CLI, as an operator would, and returns its token (also kept for
    /// [`Stack::board_url`] and [`Stack::token`]). Provisioning it again returns the same.
    pub async fn provision(&self, device: &str, kind: &str) -> anyhow::Result<String> {
        if let Some(token) = self.token(device) {
            return Ok(token);
        }
        let out = identity::cli(
            &self.db.url,
            &["devices", "add", device, "--kind", kind],
            "",
        )
        .await?;
        let token = identity::last_word(&out)?;
        self.tokens
            .lock()
            .unwrap()
            .insert(device.to_owned(), token.clone());
        Ok(token)
    }

    /// The token of a device provisioned on this stack.
    pub fn token(&self, device: &str) -> Option<String> {
        self.tokens.lock().unwrap().get(device).cloned()
    }

    /// `http://…/api/v1/devices/{token}/readings` on ingest, for the board `device`
    /// (provisioned as a greenhouse if it was not yet): the door for boards that cannot
    /// set a header, so the harness's HTTP streams need nothing but a URL.
    pub async fn board_url(&self, device: &str) -> anyhow::Result<String> {
        let token = self.provision(device, "greenhouse").await?;
        Ok(format!(
            "{}/api/v1/devices/{token}/readings",
            self.url(&self.ingest, "http")
        ))
    }

    /// The bearer API token of the stack's operator (may switch lamps, add devices).
    pub fn operator_token(&self) -> &str {
        &self.operator_token
    }

    /// User name and password of a broker user that may subscribe to `lentera/#` and
    /// publish nothing (works on Mosquitto and rumqttd too, which run without authentication).
    pub fn observer(&self) -> (String, String) {
        self.observer.clone()
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
            self.broker.stopped_cleanly(status),
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
        // Migrated before anything starts, so the registry the broker and ingest load
        // exists, and devices can be provisioned as soon as `start` returns.
        identity::cli(&db.url, &["migrate"], "").await?;
        let users = identity::ServiceUsers::generate();
        let auth_file = dir.join("broker-auth.toml");
        users.write_auth_file(&auth_file)?;
        let broker = match self.broker {
            Some(b) => b,
            None => {
                let url = db.url.clone();
                tokio::task::spawn_blocking(move || {
                    TestBroker::start_closed(&url, &auth_file, &fault_test_quota())
                })
                .await?
            }
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
            env.extend(fault_test_quota());
            env.extend(users.env(service));
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
        identity::cli(
            &db.url,
            &["operators", "add", "tester", "--role", "operator"],
            "tester's password\n",
        )
        .await?;
        let operator_token = identity::last_word(
            &identity::cli(
                &db.url,
                &["tokens", "add", "tester", "--label", "tests"],
                "",
            )
            .await?,
        )?;
        Ok(Stack {
            db,
            dir,
            broker,
            historians,
            ingest,
            web,
            lamp,
            tokens: Mutex::default(),
            operator_token,
            observer: users.credentials(identity::OBSERVER),
        })
    }
}

/// The fault tests stream one board at 25-200 readings a second (and one publishes
/// 5,000 as fast as it can), far above a real board and the default quota (10/s, burst
/// 100); the quota has its own tests, at its defaults, in services/ingest,
/// services/broker and tests/tests/identity.rs.
fn fault_test_quota() -> Vec<(String, String)> {
    vec![
        (
            "LENTERA_QUOTA__DEVICE_RATE_PER_SEC".into(),
            "1000000".into(),
        ),
        ("LENTERA_QUOTA__DEVICE_BURST".into(), "1000000".into()),
    ]
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
