//! Builds the lamp controller from [`Settings`] and runs it until shutdown: the only
//! file here that does I/O besides `admin`.
//!
//! One task owns the loop — deliveries, the periodic tick, the settle timer — so the
//! controller sees events in order; publishing awaits each PUBACK before marking a
//! command sent, so a command the broker never took stays due and is retried.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use lentera_bootstrap::{Counter, Gauge, Observability, ready_file};
use lentera_mqtt::{Client, QoS};
use lentera_protocol::{LampCommand, TopicKind, Topics};
use tokio::time::MissedTickBehavior;

use crate::admin::{self, Shared};
use crate::controller::{Controller, Due, Handled};
use crate::settings::Settings;

/// The client id when `mqtt.client_id` is unset.
pub const DEFAULT_CLIENT_ID: &str = "lentera-lamp";

pub struct Application {
    settings: Settings,
    obs: Observability,
    controller: Shared,
    admin_addr: SocketAddr,
    admin: actix_web::dev::Server,
}

struct Metrics {
    commands_on: Counter,
    commands_off: Counter,
    resends: Counter,
    publish_failures: Counter,
    invalid: Counter,
    lamps: Gauge,
}

impl Metrics {
    fn new(obs: &Observability) -> Self {
        let help = "Lamp commands the broker acknowledged, by command.";
        Self {
            commands_on: obs.counter("commands_total", help, &[("command", "on")]),
            commands_off: obs.counter("commands_total", help, &[("command", "off")]),
            resends: obs.counter(
                "resends_total",
                "Commands repeated because the lamp reported another state.",
                &[],
            ),
            publish_failures: obs.counter(
                "publish_failures_total",
                "Commands the broker did not acknowledge (retried on the next tick).",
                &[],
            ),
            invalid: obs.counter(
                "invalid_messages_total",
                "Messages that could not be used.",
                &[],
            ),
            lamps: obs.gauge("lamps", "Devices the controller treats as lamps."),
        }
    }
}

impl Application {
    /// Binds the admin port and writes the ready file. Call inside a tokio runtime.
    pub fn build(settings: Settings) -> anyhow::Result<Self> {
        let obs = Observability::new("lamp");
        let controller = Arc::new(Mutex::new(Controller::new(
            settings.mqtt.topics(),
            &settings.lamp.lamp_pattern,
            settings.lamp.policy(),
        )));
        let (admin_addr, admin) = admin::serve(&obs, controller.clone(), &settings.lamp.admin_addr)
            .with_context(|| format!("binding admin {}", settings.lamp.admin_addr))?;
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
            controller,
            admin_addr,
            admin,
        })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Application {
            settings,
            obs,
            controller,
            admin,
            ..
        } = self;
        let admin_handle = admin.handle();
        tokio::spawn(admin);
        let metrics = Metrics::new(&obs);
        let topics = settings.mqtt.topics();
        let subscriptions = [
            TopicKind::Telemetry,
            TopicKind::LampMode,
            TopicKind::LampState,
        ]
        .iter()
        .map(|k| (topics.filter(*k), QoS::AtLeastOnce))
        .collect();
        let (client, mut rx) = Client::start(
            &settings.mqtt,
            DEFAULT_CLIENT_ID,
            true,
            false,
            subscriptions,
            Some(obs.check("mqtt")),
        );
        let publisher = Publisher {
            client: client.clone(),
            topics,
            controller: controller.clone(),
            metrics,
        };

        let settle = settle(&client, settings.lamp.settle());
        tokio::pin!(settle, shutdown);
        let mut settled = false;
        let mut tick = tokio::time::interval(settings.lamp.tick());
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = &mut settle, if !settled => {
                    settled = true;
                    tracing::info!("settled: retained modes and states received, deciding");
                    controller.lock().unwrap().settle();
                    publisher.tick().await;
                }
                _ = tick.tick(), if settled => publisher.tick().await,
                Some(d) = rx.recv() => {
                    let p = &d.publish;
                    let (handled, due) = controller
                        .lock()
                        .unwrap()
                        .handle(&p.topic, &p.payload, chrono::Utc::now());
                    if let Handled::Invalid(code) = handled {
                        tracing::warn!(topic = %p.topic, code, "unusable message ignored");
                        publisher.metrics.invalid.inc();
                    }
                    publisher.send(due).await;
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), client.disconnect()).await;
        admin_handle.stop(true).await;
        tracing::info!("lamp controller stopped");
        Ok(())
    }
}

/// Convenience for `main`: build, then run.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    Application::build(settings)?
        .run_until_stopped(shutdown)
        .await
}

/// Resolves `settle` after the first successful connection: retained messages are sent
/// right after SUBACK, so by then the controller knows every mode and reported state.
async fn settle(client: &Client, settle: Duration) {
    while !client.is_connected() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(settle).await;
}

struct Publisher {
    client: Client,
    topics: Topics,
    controller: Shared,
    metrics: Metrics,
}

impl Publisher {
    async fn tick(&self) {
        let due = {
            let mut c = self.controller.lock().unwrap();
            self.metrics.lamps.set(c.lamp_count() as i64);
            c.tick(chrono::Utc::now())
        };
        self.send(due).await;
    }

    async fn send(&self, due: Vec<Due>) {
        // Several commands for one lamp in one batch cannot happen (one per lamp), but keep
        // only the last per device defensively: the newest decision is the one to send.
        let due: HashMap<_, _> = due.into_iter().map(|d| (d.device.clone(), d)).collect();
        for d in due.into_values() {
            let topic = self.topics.lamp_set(&d.device);
            match self
                .client
                .publish_acked(topic, false, d.command.as_str())
                .await
            {
                Ok(()) => {
                    tracing::info!(device = %d.device, command = %d.command, reason = ?d.reason, resend = d.resend, "lamp command sent");
                    self.controller.lock().unwrap().mark_sent(
                        &d.device,
                        d.command,
                        chrono::Utc::now(),
                    );
                    match d.command {
                        LampCommand::On => self.metrics.commands_on.inc(),
                        LampCommand::Off => self.metrics.commands_off.inc(),
                    }
                    if d.resend {
                        self.metrics.resends.inc();
                    }
                }
                Err(e) => {
                    tracing::warn!(device = %d.device, command = %d.command, error = %e, "lamp command not acknowledged; will retry");
                    self.metrics.publish_failures.inc();
                }
            }
        }
    }
}
