//! Building and running the whole service, so `main` and the tests run the same thing.
//!
//! [`Application::build`] binds the listener (port 0 allowed), starts the MQTT
//! subscription, the hub task and the database readiness task, and writes the ready file.
//! [`Application::run_until_stopped`] serves until the shutdown future resolves, then
//! closes WebSocket clients with "going away", lets in-flight requests finish and
//! disconnects from the broker.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Service as _;
use actix_web::middleware::ErrorHandlers;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use anyhow::Context;
use lentera_bootstrap::{Check, Observability, ready_file};
use lentera_mqtt::QoS;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use lentera_auth::RateLimiter;

use crate::access::Access;
use crate::api::admin::BoardEndpoints;
use crate::api::error::ApiError;
use crate::api::{self, AppState, params::Limits};
use crate::hub::{self, Hub};
use crate::ws::{self, WsConfig};
use crate::{Settings, dashboard, edges};

/// Seconds actix waits for in-flight requests after a graceful stop.
const SHUTDOWN_TIMEOUT_SECS: u64 = 10;

pub struct Application {
    addr: SocketAddr,
    server: actix_web::dev::Server,
    mqtt: lentera_mqtt::Client,
    /// Tells WebSocket tasks to close; they would otherwise hold the graceful stop open.
    closing: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Application {
    /// Must be called inside a tokio runtime (it spawns the background tasks).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let obs = Observability::new("web");
        let mqtt_ready = obs.check("mqtt");
        let db_ready = obs.check("database");
        let clients = obs.gauge("ws_clients", "Connected WebSocket clients.");
        let lagged = obs.counter(
            "ws_lagged_total",
            "Lag notices sent to WebSocket clients too slow for the live stream.",
            &[],
        );
        let ignored = obs.counter(
            "mqtt_ignored_total",
            "MQTT messages not forwarded: foreign topic or payload breaking the contract.",
            &[],
        );

        let topics = settings.mqtt.topics();
        // QoS 0 and a clean session: the live view wants what is happening now, and
        // history comes from PostgreSQL, so nothing is worth queueing while we are away.
        let subscriptions = hub::subscriptions(&topics)
            .into_iter()
            .map(|t| (t, QoS::AtMostOnce))
            .collect();
        let (mqtt, deliveries) = lentera_mqtt::Client::start(
            &settings.mqtt,
            "lentera-web",
            true,
            false,
            subscriptions,
            Some(mqtt_ready),
        );
        let (closing, closing_rx) = watch::channel(false);
        let hub = Hub::new(
            settings.web.broadcast_capacity,
            settings.web.ws_device_backlog,
            closing_rx,
            clients,
            lagged,
        );
        let pool = lentera_db::pool(&settings.database).context("database settings")?;
        let tasks = vec![
            tokio::spawn(hub::run(hub.clone(), topics.clone(), deliveries, ignored)),
            tokio::spawn(watch_database(
                pool.clone(),
                settings.database.migrate,
                Duration::from_secs(settings.web.db_ping_secs.max(1)),
                db_ready,
            )),
        ];

        let w = &settings.web;
        if settings.auth.open {
            tracing::warn!(
                "auth.open = true: web asks nobody to log in; anyone who can reach it may switch lamps and administer devices (demo only)"
            );
        } else if w.public_read {
            tracing::info!("web.public_read = true: history, device lists and /ws need no login");
        }
        let access = Arc::new(Access {
            open: settings.auth.open,
            public_read: w.public_read,
            session_ttl: chrono::Duration::hours(w.session_hours.clamp(1, 24 * 366) as i64),
            trust_forwarded: w.trust_forwarded,
            by_name: RateLimiter::new(w.login_rate_per_sec, w.login_burst_per_name),
            by_ip: RateLimiter::new(w.login_rate_per_sec, w.login_burst_per_ip),
        });
        let state = web::Data::new(AppState {
            pool,
            mqtt: mqtt.clone(),
            topics,
            limits: Limits {
                max_window: chrono::Duration::days(w.max_window_days.max(1)),
                default_limit: w.default_limit.clamp(1, w.max_limit.max(1)),
                max_limit: w.max_limit.max(1),
            },
            retry_after: w.retry_after_secs,
            access,
            board: BoardEndpoints {
                host: w.board_host.clone(),
                http_port: w.board_http_port,
                tcp_port: w.board_tcp_port,
                mqtt_port: w.board_mqtt_port,
            },
        });
        let body_timeout = Duration::from_secs(w.body_timeout_secs.max(1));
        let hub = web::Data::new(hub);
        let ws_config = web::Data::new(WsConfig {
            heartbeat: Duration::from_secs(w.heartbeat_secs.max(1)),
            client_timeout: Duration::from_secs(w.client_timeout_secs.max(1)),
        });
        let admin = obs.routes();

        let listener = TcpListener::bind(&w.http_addr)
            .with_context(|| format!("binding web.http_addr {}", w.http_addr))?;
        let addr = listener.local_addr()?;
        let mut server = HttpServer::new(move || {
            App::new()
                .wrap(ErrorHandlers::new().default_handler(edges::json_errors))
                .wrap_fn(move |mut req, srv| {
                    edges::body_deadline(&mut req, body_timeout);
                    srv.call(req)
                })
                .app_data(state.clone())
                .app_data(hub.clone())
                .app_data(ws_config.clone())
                .configure(admin.clone())
                .configure(api::routes)
                .configure(dashboard::routes)
                .service(api::res("/ws").get(ws::ws))
                .default_service(web::to(not_found))
        })
        .disable_signals()
        .client_request_timeout(Duration::from_secs(w.header_timeout_secs.max(1)))
        .client_disconnect_timeout(Duration::from_secs(2))
        .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS);
        if let Some(n) = w.workers {
            server = server.workers(n.max(1));
        }
        let server = server.listen(listener)?.run();
        tracing::info!(%addr, "web listening");

        if let Some(path) = &settings.ready_file {
            ready_file::write(path, &serde_json::json!({ "http": addr.to_string() }))
                .with_context(|| format!("writing ready file {}", path.display()))?;
        }
        Ok(Self {
            addr,
            server,
            mqtt,
            closing,
            tasks,
        })
    }

    /// The bound HTTP address (the real port when configured with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self {
            server,
            mqtt,
            closing,
            tasks,
            ..
        } = self;
        let handle = server.handle();
        let mut server = std::pin::pin!(server);
        let result = tokio::select! {
            r = &mut server => r,
            () = shutdown => {
                tracing::info!("shutting down: closing WebSocket clients, draining requests");
                let _ = closing.send(true);
                // The stop command is carried out by the server future, so poll both.
                let ((), r) = tokio::join!(handle.stop(true), &mut server);
                r
            }
        };
        // Bounded: with no broker the request only has to enter rumqttc's queue.
        let _ = tokio::time::timeout(Duration::from_secs(2), mqtt.disconnect()).await;
        for t in tasks {
            t.abort();
        }
        tracing::info!("web stopped");
        result.context("HTTP server failed")
    }
}

/// Builds and runs the service until `shutdown` resolves.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    Application::build(settings)
        .await?
        .run_until_stopped(shutdown)
        .await
}

/// Flips the `database` readiness check from a periodic ping, so `/readyz` answers from
/// memory. With `database.migrate` it also applies pending migrations once PostgreSQL is
/// first reachable (web may start before the historian has created the schema).
async fn watch_database(pool: PgPool, migrate: bool, every: Duration, ready: Check) {
    let mut migrated = !migrate;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut ok = lentera_db::ping(&pool).await;
        if ok && !migrated {
            match lentera_db::migrate(&pool).await {
                Ok(()) => migrated = true,
                Err(e) => {
                    tracing::warn!(error = %e, "database migration failed");
                    ok = false;
                }
            }
        }
        if ok != ready.get() {
            tracing::info!(reachable = ok, "database readiness changed");
        }
        ready.set(ok);
    }
}

/// JSON 404 for every path without a route, in the API's error shape.
async fn not_found(req: HttpRequest) -> HttpResponse {
    use actix_web::ResponseError;
    ApiError::not_found(
        "not_found",
        format!("no route for {} {}", req.method(), req.path()),
    )
    .error_response()
}
