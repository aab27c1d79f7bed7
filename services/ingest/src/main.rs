//! `lentera-ingest`: load settings, start logging, run until SIGTERM / Ctrl-C.

use lentera_ingest::{Settings, startup};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: Settings = lentera_bootstrap::load()?;
    let _telemetry = lentera_bootstrap::telemetry::init("ingest", &settings.telemetry)?;
    startup::run(settings, lentera_bootstrap::shutdown::signal()).await
}
