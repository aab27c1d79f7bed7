//! Builds the historian from [`Settings`] and runs it until shutdown.
//!
//! Order matters: the admin port is bound first (so `/readyz` can say "not yet"), then the
//! schema is migrated — retried while PostgreSQL is down — and only then is the MQTT
//! session opened, so no delivery is taken before its table exists.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use lentera_bootstrap::{Check, Observability, ready_file};
use lentera_mqtt::{Client, QoS};
use lentera_protocol::TopicKind;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::batch::BatchPolicy;
use crate::consume::{Consumer, Metrics, stopped};
use crate::settings::Settings;

/// The client id when `mqtt.client_id` is unset. With a persistent session the broker
/// keeps our unacknowledged messages under this id across restarts.
pub const DEFAULT_CLIENT_ID: &str = "lentera-historian";

/// The topics the historian stores, every one QoS 1.
pub const KINDS: [TopicKind; 5] = [
    TopicKind::Telemetry,
    TopicKind::LampSet,
    TopicKind::LampState,
    TopicKind::LampMode,
    TopicKind::Status,
];

pub struct Application {
    settings: Settings,
    obs: Observability,
    admin_addr: SocketAddr,
    admin: actix_web::dev::Server,
}

impl Application {
    /// Binds the admin port and writes the ready file. Call inside a tokio runtime.
    pub fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.limits.validate().map_err(anyhow::Error::msg)?;
        let obs = Observability::new("historian");
        let (admin_addr, admin) = obs
            .serve_admin(&settings.historian.admin_addr)
            .with_context(|| format!("binding admin {}", settings.historian.admin_addr))?;
        if let Some(path) = &settings.ready_file {
            ready_file::write(
                path,
                &serde_json::json!({ "admin": admin_addr.to_string() }),
            )
            .with_context(|| format!("writing {}", path.display()))?;
        }
        tracing::info!(%admin_addr, "admin endpoints listening");
        Ok(Self {
            settings,
            obs,
            admin_addr,
            admin,
        })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Runs until `shutdown` resolves, then writes and acknowledges the batch in hand.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Application {
            settings,
            obs,
            admin,
            ..
        } = self;
        let admin_handle = admin.handle();
        tokio::spawn(admin);

        let db_ready = obs.check("database");
        let mqtt_ready = obs.check("mqtt");
        let metrics = Metrics::new(&obs);
        let pool = lentera_db::pool(&settings.database).context("invalid database settings")?;

        let (stop_tx, stop_rx) = watch::channel(false);
        let worker = tokio::spawn(work(settings, pool, db_ready, mqtt_ready, metrics, stop_rx));
        shutdown.await;
        let _ = stop_tx.send(true);
        let result = worker.await;
        admin_handle.stop(true).await;
        result.context("the consumer task panicked")
    }
}

/// Convenience for `main`: build, then run.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    Application::build(settings)?
        .run_until_stopped(shutdown)
        .await
}

async fn work(
    settings: Settings,
    pool: PgPool,
    db_ready: Check,
    mqtt_ready: Check,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    tokio::select! {
        _ = prepare_database(&pool, settings.database.migrate, &db_ready) => {}
        _ = stopped(&mut stop) => return,
    }
    let dropped = metrics.partitions_dropped.clone();
    tokio::spawn(crate::maintenance::run(
        pool.clone(),
        settings.historian.clone(),
        dropped,
        stop.clone(),
    ));
    let topics = settings.mqtt.topics();
    let subscriptions = KINDS
        .iter()
        .map(|k| topics.filter(*k))
        .chain([topics.error_filter()])
        .map(|f| (settings.historian.subscription(&f), QoS::AtLeastOnce))
        .collect();
    // Acknowledgements go through the client's request queue (2 × max_inflight) without
    // waiting; a whole batch is acknowledged at once, so the queue is sized for four
    // batches (both writes in flight). What does not fit waits in the client, in order
    // (never dropped), at the cost of a copy of each one that waits.
    let mut mqtt = settings.mqtt.clone();
    let needed = (settings.historian.batch_size.saturating_mul(2)).min(u16::MAX as usize) as u16;
    mqtt.max_inflight = mqtt.max_inflight.max(needed);
    let (client, rx) = Client::start(
        &mqtt,
        DEFAULT_CLIENT_ID,
        false,
        true,
        subscriptions,
        Some(mqtt_ready),
    );
    let consumer = Consumer {
        pool,
        client: client.clone(),
        topics,
        limits: settings.limits.clone(),
        retention_days: settings.historian.retention_days,
        policy: BatchPolicy::new(
            settings.historian.batch_size,
            settings.historian.batch_interval(),
        ),
        write_timeout: settings.historian.write_timeout(),
        metrics,
        db_ready,
        stamper: Default::default(),
    };
    consumer.run(rx, stop).await;
    // DISCONNECT goes out after the acknowledgements queued before it, so the broker has
    // them all; it also tells the broker not to publish a Last Will.
    let _ = tokio::time::timeout(Duration::from_secs(2), client.disconnect()).await;
    tracing::info!("historian stopped");
}

/// Migrates (or, with `database.migrate = false`, pings) until PostgreSQL answers,
/// backing off from 100 ms to 5 s; readiness stays false until then.
async fn prepare_database(pool: &PgPool, migrate: bool, ready: &Check) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = if migrate {
            lentera_db::migrate(pool).await.map_err(|e| e.to_string())
        } else if lentera_db::ping(pool).await {
            Ok(())
        } else {
            Err("database unreachable".to_owned())
        };
        match result {
            Ok(()) => {
                tracing::info!(migrate, "database ready");
                ready.set(true);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "database not ready");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
