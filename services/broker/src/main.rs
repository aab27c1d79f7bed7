//! Wiring only: settings, telemetry, run until SIGTERM / Ctrl-C.

use lentera_bootstrap::{shutdown, telemetry};
use lentera_broker::{auth::password, settings::Settings, startup};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `echo -n secret | lentera-broker hash-password`: a hash for the auth file.
    if std::env::args().nth(1).as_deref() == Some("hash-password") {
        let mut pw = String::new();
        std::io::stdin().read_line(&mut pw)?;
        let pw = pw.trim_end_matches(['\r', '\n']).as_bytes();
        println!("{}", password::hash_with(pw, password::DEFAULT_ITERATIONS));
        return Ok(());
    }
    let settings: Settings = lentera_bootstrap::load()?;
    let _telemetry = telemetry::init("broker", &settings.telemetry)?;
    startup::run(settings, shutdown::signal()).await
}
