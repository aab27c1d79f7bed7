//! `lentera-web` binary: load settings, start logging, run until SIGTERM / Ctrl-C.

use lentera_web::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: Settings = lentera_bootstrap::load()?;
    let _telemetry = lentera_bootstrap::telemetry::init("web", &settings.telemetry)?;
    lentera_web::startup::run(settings, lentera_bootstrap::shutdown::signal()).await
}
