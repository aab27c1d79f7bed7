//! Wiring only: settings, telemetry, run until SIGTERM / Ctrl-C.

use lentera_bootstrap::{shutdown, telemetry};
use lentera_broker::{settings::Settings, startup};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: Settings = lentera_bootstrap::load()?;
    let _telemetry = telemetry::init("broker", &settings.telemetry)?;
    startup::run(settings, shutdown::signal()).await
}
