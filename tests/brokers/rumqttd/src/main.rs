//! rumqttd 0.20.0's own `main` (its `src/main.rs`), less the banner, the console's log
//! reloading and `generate-config`: `rumqttd -c <config.toml> [-v|-vv|-vvv]`.

fn main() {
    let mut config = None;
    let mut verbose = 0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-c" | "--config" => config = args.next(),
            "-q" | "--quiet" => {}
            v if v.starts_with("-v") && v[1..].chars().all(|c| c == 'v') => verbose = v.len() - 1,
            other => {
                eprintln!("usage: rumqttd -c <config.toml> [-v|-vv|-vvv]; unknown {other:?}");
                std::process::exit(2);
            }
        }
    }
    let Some(config) = config else {
        eprintln!("usage: rumqttd -c <config.toml> [-v|-vv|-vvv]");
        std::process::exit(2);
    };
    let level = match verbose {
        0 => "rumqttd=warn",
        1 => "rumqttd=info",
        2 => "rumqttd=debug",
        _ => "rumqttd=trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(level)
        .with_ansi(false)
        .init();
    let configs: rumqttd::Config = config::Config::builder()
        .add_source(config::File::with_name(&config))
        .build()
        .and_then(|c| c.try_deserialize())
        .unwrap_or_else(|e| {
            eprintln!("rumqttd: {config}: {e}");
            std::process::exit(2);
        });
    let mut broker = rumqttd::Broker::new(configs);
    if let Err(e) = broker.start() {
        eprintln!("rumqttd: {e}");
        std::process::exit(1);
    }
}
