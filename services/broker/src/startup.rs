//! Builds the broker from its settings: binds the listeners (port 0 allowed), starts
//! the network workers (`net/`, threads of their own), serves the admin endpoints and
//! the WebSocket bridge on the caller's tokio/actix runtime, writes the ready file, and
//! stops everything on shutdown.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lentera_bootstrap::{Observability, ready_file};

use crate::metrics::Metrics;
use crate::net::tls::TlsListener;
use crate::net::{Listener, Network};
use crate::router::{Limits, Router};
use crate::session::Shared;
use crate::settings::{BrokerSettings, Settings};
use crate::store::{Store, recover};
use crate::telemetry::Telemetry;

/// A bound, running broker.
pub struct Application {
    mqtt_addr: SocketAddr,
    admin_addr: SocketAddr,
    network: Network,
    /// Reports the MQTT listener ready while the workers run.
    mqtt_check: lentera_bootstrap::Check,
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
    /// Follows the device registry (closed mode): revocations, `/readyz`, its size.
    registry_task: Option<tokio::task::JoinHandle<()>>,
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
            session_queue_bytes: cfg.session_queue_bytes.max(1),
            queued_bytes_total: cfg.queued_bytes_total.max(1),
        };
        cfg.telemetry.validate().map_err(anyhow::Error::msg)?;
        settings
            .limits
            .validate()
            .map_err(anyhow::Error::msg)
            .context("invalid [limits]")?;
        let metrics = Metrics::new(&obs);
        let telemetry = Telemetry::new(&cfg.telemetry, settings.limits.clone(), &metrics);
        if cfg.telemetry.prefix.is_empty() {
            tracing::info!(
                "broker.telemetry.prefix is empty: telemetry is neither checked nor stamped"
            );
        }
        let router = open_store(cfg, metrics, limits)?.with_telemetry(telemetry);
        tokio::spawn(router.clone().expire_sessions_periodically());
        let sys = tokio::spawn(crate::sys::run(router.clone(), cfg.sys_interval_secs));

        let listener = TcpListener::bind(&cfg.mqtt_addr)
            .with_context(|| format!("binding MQTT listener {}", cfg.mqtt_addr))?;
        let mqtt_addr = listener.local_addr()?;
        let (auth, registry) = crate::auth::from_settings(&settings)?;
        let device_rate = registry.as_ref().and(rate_limiter(&settings.quota));
        let registry_task = registry
            .map(|r| tokio::spawn(follow_registry(r, router.clone(), obs.check("registry"))));
        let auth_reload = tokio::spawn(crate::auth::reload_on_sighup(auth.clone()));
        let shared_auth = auth.clone();
        let per_ip = crate::quota::PerIp::new(
            settings.quota.max_connections_per_ip,
            router.metrics().refused_per_ip.clone(),
        );
        let shared = Shared::new(
            router.clone(),
            cfg.queue_capacity,
            auth,
            crate::session::Limits {
                max_connections: cfg.max_connections,
                max_packet_bytes: cfg.max_packet_bytes as usize,
                receive_maximum: cfg.receive_maximum,
                max_inflight: cfg.max_inflight,
                connect_timeout: Duration::from_secs(cfg.connect_timeout_secs.into()),
                shutdown_timeout: Duration::from_millis(cfg.shutdown_timeout_ms),
                max_keep_alive: cfg.max_keep_alive_secs,
                packet_timeout: Duration::from_secs(cfg.packet_timeout_secs.into()),
                max_client_id_bytes: cfg.max_client_id_bytes,
                per_ip: per_ip.clone(),
                device_rate,
            },
            tokio::runtime::Handle::current(),
        );
        let tls = match (cfg.tls_listen_addr(), &cfg.tls_cert, &cfg.tls_key) {
            (Some(addr), Some(cert), Some(key)) => Some(TlsListener::bind(
                &addr,
                cert,
                key,
                cfg.tls_max_fragment_bytes,
            )?),
            _ => None,
        };
        let tls_addr = tls.as_ref().map(|t| t.addr);
        let mut listeners = vec![Listener {
            listener,
            tls: None,
        }];
        if let Some(t) = tls {
            let config = t.config();
            listeners.push(Listener {
                listener: t.listener,
                tls: Some(config),
            });
        }
        let network = Network::start(listeners, Arc::new(shared), cfg.workers)
            .context("starting the network workers")?;
        mqtt_check.set(true);
        let ws = match cfg.ws_listen_addr() {
            Some(addr) => Some(crate::net::ws::start(&addr, mqtt_addr, per_ip).await?),
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
            network,
            mqtt_check,
            admin: admin_handle,
            router,
            ws,
            tls_addr,
            sys,
            auth: shared_auth,
            auth_reload,
            registry_task,
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
        if let Some(t) = &self.registry_task {
            t.abort();
        }
        if let Some((_, accept)) = &self.ws {
            // Bridged WebSocket clients end as the workers close their MQTT side below.
            accept.abort();
        }
        // MQTT 5 clients are told why (DISCONNECT 0x8B) before their sockets close.
        tracing::info!("stopping MQTT listeners");
        self.mqtt_check.set(false);
        let network = self.network;
        tokio::task::spawn_blocking(move || network.stop()).await?;
        self.admin.stop(true).await;
        // Everything acknowledged is already durable; this flushes acks and the rest.
        self.router.store().close();
        tracing::info!("broker stopped");
        Ok(())
    }
}

/// The per-device message rate of `[quota]` (`None`: unlimited).
fn rate_limiter(q: &lentera_auth::QuotaSettings) -> Option<lentera_auth::RateLimiter> {
    (q.device_rate_per_sec.is_finite() && q.device_rate_per_sec > 0.0)
        .then(|| lentera_auth::RateLimiter::new(q.device_rate_per_sec, q.device_burst.max(1)))
}

/// Cuts the live connection of every device the registry revokes (disabled, removed,
/// token rotated); reports the registry on `/readyz` (`registry`: a snapshot is loaded)
/// and its size as `registry_devices`.
async fn follow_registry(
    registry: lentera_auth::Registry,
    router: Router,
    check: lentera_bootstrap::Check,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut revoked = registry.revocations();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let metrics = router.metrics().clone();
    loop {
        tokio::select! {
            id = revoked.recv() => match id {
                Ok(id) => {
                    if router.revoke(&id) {
                        metrics.closed_revoked.inc();
                        tracing::info!(device = ?id, "device revoked: its connection is closed");
                    }
                }
                // Missed some: every live device connection is checked again.
                Err(RecvError::Lagged(_)) => {
                    let n = router.revoke_unless(|id| registry.knows(id));
                    metrics.closed_revoked.add(n as u64);
                }
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                check.set(registry.is_loaded());
                metrics.registry_devices.set(registry.len() as i64);
            }
        }
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
