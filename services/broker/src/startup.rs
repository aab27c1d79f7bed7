//! Builds the broker from its settings: binds both listeners (port 0 allowed), runs
//! ntex-mqtt on its own thread, serves the admin endpoints on the caller's tokio/actix
//! runtime, writes the ready file, and stops both on shutdown.
//!
//! ntex and tokio share the process only with ntex on a thread of its own: ntex's
//! default runtime drives its own I/O reactor and cannot run inside a tokio runtime.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;
use lentera_bootstrap::{Check, Observability, ready_file};
use ntex_mqtt::{MqttServer, MqttServiceConfig, QoS, v3, v5};
use ntex_service::cfg::SharedCfg;
use ntex_util::time::Seconds;

use crate::metrics::Metrics;
use crate::router::{Limits, Router};
use crate::session::{ConnState, Shared};
use crate::settings::{BrokerSettings, Settings};
use crate::store::{Store, recover};
use crate::transport_tls::TlsListener;

type NtexServer = ntex_server::Server<ntex_server::net::Connection>;

/// A bound, running broker.
pub struct Application {
    mqtt_addr: SocketAddr,
    admin_addr: SocketAddr,
    ntex: NtexServer,
    ntex_thread: JoinHandle<()>,
    admin: actix_web::dev::ServerHandle,
    router: Router,
    /// The MQTT-over-WebSocket listener's address and accept task, when enabled.
    ws: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
    /// The MQTT-over-TLS address, when a certificate and key are configured.
    tls_addr: Option<SocketAddr>,
    /// `$SYS` publisher and gauge refresher (`sys.rs`).
    sys: tokio::task::JoinHandle<()>,
    /// Re-reads the auth file on SIGHUP.
    auth: Arc<dyn crate::auth::Authenticator>,
    auth_reload: tokio::task::JoinHandle<()>,
}

impl Application {
    /// Binds and starts everything; must be called inside a tokio runtime (the admin
    /// server is spawned on it).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let obs = Observability::new("broker");
        let mqtt_check = obs.check("mqtt");
        let cfg = &settings.broker;
        let limits = Limits {
            session_queue_capacity: cfg.session_queue_capacity.max(1),
            max_session_expiry: cfg.max_session_expiry_secs,
        };
        let router = open_store(cfg, Metrics::new(&obs), limits)?;
        tokio::spawn(router.clone().expire_sessions_periodically());
        let sys = tokio::spawn(crate::sys::run(router.clone(), cfg.sys_interval_secs));

        let listener = TcpListener::bind(&cfg.mqtt_addr)
            .with_context(|| format!("binding MQTT listener {}", cfg.mqtt_addr))?;
        let mqtt_addr = listener.local_addr()?;
        let auth = crate::auth::from_settings(cfg)?;
        let auth_reload = tokio::spawn(crate::auth::reload_on_sighup(auth.clone()));
        let shared_auth = auth.clone();
        let shared = Shared::new(router.clone(), cfg.queue_capacity, limits, auth)
            .with_max_connections(cfg.max_connections);
        let tls = match (cfg.tls_listen_addr(), &cfg.tls_cert, &cfg.tls_key) {
            (Some(addr), Some(cert), Some(key)) => Some(TlsListener::bind(&addr, cert, key)?),
            _ => None,
        };
        let tls_addr = tls.as_ref().map(|t| t.addr);
        let (ntex, ntex_thread) = start_ntex(listener, tls, cfg.clone(), shared, mqtt_check)?;
        let ws = match cfg.ws_listen_addr() {
            Some(addr) => Some(crate::transport_ws::start(&addr, mqtt_addr).await?),
            None => None,
        };

        let (admin_addr, admin) = obs
            .serve_admin(&cfg.admin_addr)
            .with_context(|| format!("binding admin listener {}", cfg.admin_addr))?;
        let admin_handle = admin.handle();
        tokio::spawn(admin);

        tracing::info!(%mqtt_addr, %admin_addr, "broker listening");
        if let Some(path) = &settings.ready_file {
            let mut addrs = serde_json::json!({
                "mqtt": mqtt_addr.to_string(),
                "admin": admin_addr.to_string(),
            });
            if let Some((ws_addr, _)) = &ws {
                addrs["ws"] = ws_addr.to_string().into();
            }
            if let Some(tls_addr) = tls_addr {
                addrs["tls"] = tls_addr.to_string().into();
            }
            ready_file::write(path, &addrs)
                .with_context(|| format!("writing ready file {}", path.display()))?;
        }
        Ok(Self {
            mqtt_addr,
            admin_addr,
            ntex,
            ntex_thread,
            admin: admin_handle,
            router,
            ws,
            tls_addr,
            sys,
            auth: shared_auth,
            auth_reload,
        })
    }

    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The MQTT-over-WebSocket address, when that listener is enabled.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws.as_ref().map(|(addr, _)| *addr)
    }

    /// The MQTT-over-TLS address, when that listener is enabled.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The authenticator in use; `reload()` re-reads the auth file as SIGHUP does.
    pub fn authenticator(&self) -> Arc<dyn crate::auth::Authenticator> {
        self.auth.clone()
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets the workers close
    /// their connections, and stops the admin server.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        shutdown.await;
        self.sys.abort();
        self.auth_reload.abort();
        if let Some((_, accept)) = &self.ws {
            // Bridged WebSocket clients end as ntex closes their MQTT side below.
            accept.abort();
        }
        // MQTT 5 clients are told why (DISCONNECT 0x8B) before ntex closes the sockets.
        self.router.close_connections();
        tracing::info!("stopping MQTT listener");
        self.ntex.stop(true).await;
        let thread = self.ntex_thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("ntex thread panicked"))?;
        self.admin.stop(true).await;
        // Everything acknowledged is already durable; this flushes acks and the rest.
        self.router.store().close();
        tracing::info!("broker stopped");
        Ok(())
    }
}

/// Opens the on-disk store (unless `data_dir` is empty), replays it, and builds the
/// router from what it held.
fn open_store(cfg: &BrokerSettings, metrics: Metrics, limits: Limits) -> anyhow::Result<Router> {
    if cfg.data_dir.as_os_str().is_empty() {
        tracing::info!("no data_dir: retained messages and sessions are kept in memory only");
        return Ok(Router::new_with_limits(metrics, limits));
    }
    let started = std::time::Instant::now();
    let (store, records) = Store::open(&cfg.data_dir, cfg.store_compact_bytes)
        .with_context(|| format!("opening broker store {}", cfg.data_dir.display()))?;
    let n = records.len();
    let recovered = recover::replay(records);
    tracing::info!(
        dir = %cfg.data_dir.display(),
        records = n,
        retained = recovered.retained.len(),
        sessions = recovered.sessions.len(),
        ms = started.elapsed().as_millis() as u64,
        "broker store recovered"
    );
    Ok(Router::with_store(metrics, store, recovered, limits))
}

/// `run` for `main.rs`: build, then serve until `shutdown`.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    Application::build(settings)
        .await?
        .run_until_stopped(shutdown)
        .await
}

/// Starts the ntex system on its own thread and returns its server handle once the
/// listener is being served.
fn start_ntex(
    listener: TcpListener,
    tls: Option<TlsListener>,
    cfg: BrokerSettings,
    shared: Shared,
    ready: Check,
) -> anyhow::Result<(NtexServer, JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("ntex-mqtt".into())
        .spawn(move || {
            let sys = ntex_rt::System::new("broker", ntex_net::DefaultRuntime);
            sys.block_on(async move {
                let server = match build_server(listener, tls, &cfg, shared) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                ready.set(true);
                let _ = tx.send(Ok(server.clone()));
                if let Err(e) = server.await {
                    tracing::error!(error = %e, "MQTT server failed");
                }
                ready.set(false);
            });
        })?;
    let server = rx
        .recv()
        .context("ntex thread ended before starting")?
        .context("starting MQTT server")?;
    Ok((server, thread))
}

/// The MQTT service (v3.1.1 and v5 handlers) for one listener. A macro, not a function:
/// its closure types cannot be named, and each listener infers its own I/O type (plain
/// TCP, or TCP under TLS).
macro_rules! mqtt_service {
    ($shared:expr) => {{
        let shared = $shared.clone();
        let (s3, s5) = (shared.clone(), shared.clone());
        MqttServer::new()
            .v3(v3::MqttServer::new(async |s: &v3::Session<ConnState>, p| {
                crate::v3::publish(s, p).await
            })
            .protocol(async |s: &v3::Session<ConnState>, m| crate::v3::protocol(s, m).await)
            .build(async move |c| crate::v3::connect(&s3, c).await))
            .v5(v5::MqttServer::new(async |s: &v5::Session<ConnState>, p| {
                crate::v5::publish(s, p).await
            })
            .protocol(async |s: &v5::Session<ConnState>, m| crate::v5::protocol(s, m).await)
            .control(async |s: &v5::Session<ConnState>, m| crate::v5::control(s, m).await)
            .build(async move |c| crate::v5::connect(&s5, c).await))
    }};
}

fn build_server(
    listener: TcpListener,
    tls: Option<TlsListener>,
    cfg: &BrokerSettings,
    shared: Shared,
) -> std::io::Result<NtexServer> {
    // Built once per listener: the config is moved into each listener's SharedCfg.
    let mqtt_cfg = || {
        MqttServiceConfig::new()
            // Accept QoS 2 publishers (routed at PUBLISH, acknowledged with PUBREC/PUBCOMP)
            // instead of disconnecting them; delivery to subscribers is capped at QoS 1.
            .set_max_qos(QoS::ExactlyOnce)
            // A PUBLISH that arrives together with DISCONNECT must still be routed.
            .set_handle_qos_after_disconnect(Some(QoS::ExactlyOnce))
            .set_max_size(cfg.max_packet_bytes)
            .set_max_send(cfg.max_inflight.max(1))
            .set_max_receive(cfg.receive_maximum.max(1))
            .set_connect_timeout(Seconds(cfg.connect_timeout_secs))
    };
    // ntex keeps a read buffer posted for every idle connection (io-uring), by default
    // 16 KiB: most of an idle connection's memory. `read_buffer_bytes` > 0 replaces it —
    // but see settings.rs: small buffers stall under a flooding publisher.
    let with_io_cfg = |c: ntex_service::cfg::SharedCfgBuilder| match cfg.read_buffer_bytes {
        0 => c,
        n => {
            let high = n.max(256);
            c.add(ntex_io::IoConfig::new().set_read_buf(high, (high / 8).max(64), 128))
        }
    };
    let tls_cfg = with_io_cfg(
        SharedCfg::new("MQTT-TLS")
            .add(mqtt_cfg())
            .add(ntex_tls::TlsConfig::new()),
    );
    let shared_cfg = with_io_cfg(SharedCfg::new("MQTT").add(mqtt_cfg()));

    ntex_server::net::build()
        .workers(cfg.workers.max(1))
        .shutdown_timeout(ntex_util::time::Millis(
            cfg.shutdown_timeout_ms.min(u32::MAX as u64) as u32,
        ))
        // SIGTERM is handled once, by `shutdown::signal()` on the tokio side.
        .disable_signals()
        .listen("mqtt", listener, shared_cfg, {
            let shared = shared.clone();
            async move |_| mqtt_service!(shared)
        })
        .and_then(|b| match tls {
            None => Ok(b),
            Some(tls) => {
                let config = tls.config();
                b.listen("mqtt-tls", tls.listener, tls_cfg, async move |_| {
                    // TLS handshake first, then the very same MQTT service.
                    let mqtt = ntex_service::service(mqtt_service!(shared))
                        .map_err(|e| std::io::Error::other(format!("{e:?}")));
                    ntex_service::service(crate::transport_tls::acceptor(&config)).and_then(mqtt)
                })
            }
        })
        .map(|b| b.run())
}
