//! Building the whole service from [`Settings`] and running it until a shutdown future.
//!
//! [`Application::build`] binds both listeners (port 0 allowed) and starts the MQTT
//! client, so tests learn the real addresses before anything runs;
//! [`Application::run_until_stopped`] serves until the shutdown future resolves, then
//! drains: HTTP stops accepting and finishes in-flight requests (actix graceful stop),
//! TCP stops accepting and closes each connection after its current line.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use lentera_bootstrap::{Observability, ready_file};
use lentera_mqtt::{Client, QoS};
use lentera_protocol::{DeviceId, TopicKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::http::{self, HttpState, ServerLimits};
use crate::identity::Identity;
use crate::peers::PeerLimit;
use crate::publish::Publisher;
use crate::settings::Settings;
use crate::stamps::Stamps;
use crate::stats::Stats;
use crate::status::{self, Handover, StatusBoard};
use crate::tcp::{self, Limits, Shared, relay};

pub struct Application {
    http_addr: SocketAddr,
    tcp_addr: SocketAddr,
    http: actix_web::dev::Server,
    tcp_listener: tokio::net::TcpListener,
    tcp_shared: Shared,
    client: Client,
    /// False once shutdown has begun: MQTT deliveries are no longer acknowledged.
    accepting: Arc<AtomicBool>,
    statuses: StatusBoard,
    settings: Settings,
    /// Cancels the registry's sampler when the application is dropped or has stopped.
    _background: tokio_util::sync::DropGuard,
}

impl Application {
    /// Binds the listeners and connects (in the background) to the broker. Must be called
    /// inside a tokio runtime.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.validate()?;
        let cfg = &settings.ingest;
        let seed_device = DeviceId::parse(&cfg.seed_device)
            .with_context(|| format!("ingest.seed_device {:?}", cfg.seed_device))?;

        let obs = Observability::new("ingest");
        let stats = Stats::new(&obs);
        let topics = settings.mqtt.topics();
        // Persistent session (clean_session = false): the lamp controller publishes a
        // command once per change (and re-sends only while a board reports otherwise,
        // which TCP boards do not), so a command published while ingest is down would
        // otherwise be lost, and a board reconnecting after ingest's restart would never
        // learn it. The broker queues them for this client id and delivers them on
        // reconnect; the relay keeps the newest per device for the next HELLO.
        // The bound sets of every instance (retained) tell the status board which boards
        // a crashed run left `online`, and which moved to another instance.
        let (client, deliveries) = Client::start(
            &settings.mqtt,
            &cfg.default_client_id(),
            false,
            // Acknowledged by the relay once handled, and not at all once stopping.
            true,
            vec![
                (topics.filter(TopicKind::LampSet), QoS::AtLeastOnce),
                (status::bound_filter(&topics), QoS::AtLeastOnce),
            ],
            Some(obs.check("mqtt")),
        );
        let statuses = StatusBoard::start(
            client.clone(),
            topics.clone(),
            Handover {
                instance: cfg.instance,
                grace: cfg.rebind_grace(),
            },
        );
        let publisher = Publisher::new(client.clone(), topics.clone(), statuses.clone());
        let registry = relay::Registry::default();
        let accepting = Arc::new(AtomicBool::new(true));
        tokio::spawn(relay::run(
            deliveries,
            client.clone(),
            accepting.clone(),
            topics,
            registry.clone(),
            statuses.clone(),
            stats.clone(),
        ));
        let background = CancellationToken::new();
        let identity = Identity::new(
            start_registry(&settings, &obs, background.clone())?,
            &settings.quota,
        );
        let stamps = Stamps::with_limits(cfg.instance, cfg.instances, cfg.in_doubt())
            .counting(stats.stamps_reused.clone(), stats.stamps_in_doubt.clone());

        let http_listener = std::net::TcpListener::bind(&cfg.http_addr)
            .with_context(|| format!("binding HTTP to {}", cfg.http_addr))?;
        let http_addr = http_listener.local_addr()?;
        let state = HttpState {
            publisher: publisher.clone(),
            stats: stats.clone(),
            body_limit: cfg.body_limit_bytes,
            max_batch: cfg.max_batch,
            seed_device,
            limits: Arc::new(settings.limits.clone()),
            stamps: stamps.clone(),
            identity: identity.clone(),
            body_timeout: cfg.http_body_timeout(),
        };
        let http = http::server(
            http_listener,
            state,
            &obs,
            ServerLimits {
                workers: cfg.http_workers,
                shutdown_timeout: cfg.shutdown_timeout(),
                header_timeout: Duration::from_millis(cfg.http_header_timeout_ms),
                disconnect_timeout: Duration::from_millis(cfg.http_disconnect_timeout_ms),
                per_ip: PeerLimit::new(settings.quota.max_connections_per_ip),
            },
        )?;

        let tcp_listener = tokio::net::TcpListener::bind(&cfg.tcp_addr)
            .await
            .with_context(|| format!("binding TCP to {}", cfg.tcp_addr))?;
        let tcp_addr = tcp_listener.local_addr()?;
        let tcp_shared = Shared {
            publisher,
            registry,
            stats,
            limits: Arc::new(Limits {
                max_line_bytes: cfg.tcp_max_line_bytes,
                idle_timeout: cfg.tcp_idle_timeout(),
                partial_line: cfg.tcp_partial_line(),
                max_connections: cfg.tcp_max_connections,
            }),
            reading_limits: Arc::new(settings.limits.clone()),
            stamps,
            identity,
            per_ip: PeerLimit::new(settings.quota.max_connections_per_ip),
        };
        tracing::info!(http = %http_addr, tcp = %tcp_addr, "ingest listening");
        Ok(Self {
            http_addr,
            tcp_addr,
            http,
            tcp_listener,
            tcp_shared,
            client,
            accepting,
            statuses,
            settings,
            _background: background.drop_guard(),
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    /// Serves until `shutdown` resolves (or the HTTP server fails), then drains.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let drain = self.settings.ingest.shutdown_timeout();
        let handle = self.http.handle();
        let mut http_task = tokio::spawn(self.http);
        let (stop_tx, stop_rx) = watch::channel(false);
        let tcp_task = tokio::spawn(tcp::serve(
            self.tcp_listener,
            self.tcp_shared,
            stop_rx,
            drain,
        ));

        tokio::select! {
            _ = shutdown => tracing::info!("shutting down: draining HTTP requests and TCP lines"),
            result = &mut http_task => {
                let _ = stop_tx.send(true);
                result.context("HTTP server task")?.context("HTTP server")?;
                anyhow::bail!("HTTP server stopped unexpectedly");
            }
        }
        let _ = stop_tx.send(true);
        // From here a lamp command cannot reach a board; left unacknowledged, the broker
        // keeps it for this session and hands it to the next run.
        self.accepting.store(false, Ordering::SeqCst);
        let (_, tcp) = tokio::join!(handle.stop(true), tcp_task);
        tcp.context("TCP server task")?;
        http_task
            .await
            .context("HTTP server task")?
            .context("HTTP server")?;
        // The boards just disconnected are announced offline (retained) before leaving,
        // then the bound set is cleared; with the broker away this gives up after a
        // moment, and the retained set tells the next run which boards to announce
        // offline (see services/ingest/README.md).
        if !self.statuses.finish(Duration::from_secs(2)).await {
            tracing::warn!(
                pending = self.statuses.pending(),
                "device statuses not acknowledged before shutdown"
            );
        }
        // Everything acknowledged has been answered; leave the broker cleanly.
        self.client.disconnect().await;
        Ok(())
    }
}

/// Closed mode (the default): the device registry, loading in the background; `/readyz`
/// waits for its first load (check `registry`). Open mode: `None`, said loudly.
fn start_registry(
    settings: &Settings,
    obs: &lentera_bootstrap::Observability,
    stop: CancellationToken,
) -> anyhow::Result<Option<lentera_auth::Registry>> {
    if settings.auth.open {
        // At every start, so an open ingest never goes unnoticed in the logs.
        tracing::warn!(
            "auth.open = true: any device id accepted, no token checked on HTTP or TCP \
             (demo only, never on a reachable host)"
        );
        return Ok(None);
    }
    // Ingest only reads the registry; the historian owns (and migrates) the schema.
    let pool = lentera_db::pool(&settings.database).context("[database] settings")?;
    let registry = lentera_auth::Registry::start(pool, &settings.auth);
    let loaded = obs.check("registry");
    loaded.set(registry.is_loaded());
    let devices = obs.gauge(
        "registry_devices",
        "Devices admitted by the registry snapshot.",
    );
    let sampled = registry.clone();
    // Ends with the application: the registry's own task stops with its last handle.
    tokio::spawn(stop.run_until_cancelled_owned(async move {
        sampled.wait_loaded().await;
        loaded.set(true);
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            devices.set(sampled.len() as i64);
        }
    }));
    Ok(Some(registry))
}

/// Builds, announces the bound addresses in the ready file, and runs until `shutdown`.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let ready = settings.ready_file.clone();
    let app = Application::build(settings).await?;
    if let Some(path) = ready {
        let addrs = serde_json::json!({
            "http": app.http_addr().to_string(),
            "tcp": app.tcp_addr().to_string(),
        });
        ready_file::write(&path, &addrs)
            .with_context(|| format!("writing ready file {}", path.display()))?;
    }
    app.run_until_stopped(shutdown).await
}
