//! The lamp controller binary: settings, telemetry, run until SIGTERM.

use lentera_bootstrap::{shutdown, telemetry};
use lentera_lamp::{Settings, startup};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: Settings = lentera_bootstrap::load()?;
    let _telemetry = telemetry::init("lamp", &settings.telemetry)?;
    startup::run(settings, shutdown::signal()).await
}
