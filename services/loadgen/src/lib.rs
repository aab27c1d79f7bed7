//! `lentera-loadgen`: an MQTT load generator that measures any broker by host and port.
//!
//! Three modes, each printing a human-readable summary or, with `--json`, one JSON object:
//!
//! - `throughput`: N publishers × M subscribers as fast as they can (or at `--rate`);
//!   sent and delivered messages per second, and messages lost at QoS ≥ 1.
//! - `latency`: the same engine at a fixed input rate (default 4,000 msg/s); latency
//!   percentiles from a send timestamp embedded in each payload.
//! - `connections`: many idle connections held open; connect rate, and the broker's
//!   memory per connection when given its `--pid`.
//! - `scale` ([`scale`]): N idle sessions that look like boards (up to 100,000, beyond
//!   `--live-max` as persistent offline sessions), then 1→1 throughput, 1→1,000
//!   fan-out, latency at a fixed rate and a disconnect storm with them in place.
//! - `flood` ([`flood`]): one board floods ingest's HTTP door while another posts at a
//!   steady rate; the steady board's latency and live view, quiet versus flooded.
//!
//! # Layout
//!
//! - [`args`]: hand-rolled option parsing (no clap in the workspace).
//! - [`pubsub`]: the publish/subscribe engine behind `throughput` and `latency`.
//! - [`connections`]: the idle-connection mode, on raw sockets.
//! - [`payload`]: the stamped payload; [`stats`]: percentiles, loss bitsets, `/proc` memory.
//!
//! The exact commands behind `docs/benchmarks.md` are listed there.

pub mod args;
pub mod connections;
pub mod flood;
pub mod payload;
pub mod pubsub;
pub mod scale;
pub mod stats;

use std::time::Duration;

use anyhow::bail;
use rumqttc::QoS;

use args::Args;
use connections::ConnConfig;
use pubsub::{PubSubConfig, Topics};

pub const USAGE: &str = "\
usage: lentera-loadgen MODE [options] [--json]

modes:
  throughput   N publishers x M subscribers, as fast as possible (or --rate)
  latency      fixed input rate, latency percentiles (defaults: 1x1, --rate 4000)
  connections  open and hold idle connections; broker memory with --pid
  scale        N idle board-like sessions, then 1->1, fan-out, latency, disconnect storm
  flood        board A floods ingest over HTTP while board B posts steadily

common:       --host 127.0.0.1  --port 1883  --json  --username U --password P
throughput / latency:
  --publishers N (4 / 1)   --subscribers M (4 / 1; 0 publishes only, topics under
                            lentera-bench/ for an external subscriber to count)
  --topics shared|distinct (shared: one topic for all; distinct: publisher i on its own
                            topic, subscriber j hears publishers i = j mod min(N,M))
  --qos 0|1|2 (0)  --size BYTES (64, min 20)  --rate MSG/S total (unthrottled / 4000)
  --duration 10s   --count PER-PUBLISHER   --drain 3s   --inflight 100
connections:
  --connections N (1000)  --concurrency 64  --hold 10s  --keepalive 60  --pid BROKER_PID
  (raise the open-files limit first for large N: ulimit -n 65536)
scale (raise the open-files limit first; see scripts/bench/scale.sh):
  --idle N (1000)  --live-max 15000 (beyond: persistent, offline sessions)
  --per-process 8000 (live sessions per scale-idle child)  --concurrency 64 (total)
  --filters board|wildcard (board: lentera/<id>/config + lentera/<id>/cmd/#;
            wildcard: +/<id>/cmd/# + lentera/+/<id>)
  --source-ips 50 (bind to 127.0.0.2..; 0 = no)  --keepalive 60
  --duration 5s (each phase)  --fanout 1000  --rate 10000 (latency phase, msg/s)
  --storm-rate 100  --storm-timeout 30s  --size 64  --pid BROKER_PID  --label NAME
  --metrics-url URL --gauge lentera_broker_connections (Lentera's admin /metrics)
  --sys-topic '$SYS/broker/clients/connected' (Mosquitto, with sys_interval 1)
flood (HTTP, each board with its token):
  --ingest URL  --device-a ID --token-a T  --device-b ID --token-b T
  --rate-a 100  --rate-b 10  --connections-a 16  --seconds 20 (per phase)
  --web URL --viewer-token T (count B's readings a /ws viewer receives)";

/// Runs the mode named in `args` and returns what to print.
pub async fn run(args: impl IntoIterator<Item = String>) -> anyhow::Result<String> {
    let args = Args::parse(args)?;
    if args.flag("help") {
        return Ok(USAGE.to_owned());
    }
    let json = args.flag("json");
    let host: String = args.get("host", "127.0.0.1".to_owned())?;
    let port: u16 = args.get("port", 1883)?;
    let Some(mode) = args.mode.clone() else {
        bail!("no mode given\n{USAGE}");
    };
    match mode.as_str() {
        "throughput" | "latency" => {
            let latency = mode == "latency";
            let cfg = pubsub_config(&args, &host, port, latency)?;
            args.finish()?;
            let r = pubsub::run(cfg).await?;
            Ok(if json {
                r.json(&mode).to_string()
            } else {
                r.human(&mode)
            })
        }
        "connections" => {
            let cfg = ConnConfig {
                host,
                port,
                connections: args.get("connections", 1000)?,
                concurrency: args.get("concurrency", 64)?,
                hold: args.duration("hold", Duration::from_secs(10))?,
                keepalive_secs: args.get("keepalive", 60)?,
                pid: args.opt("pid")?,
                credentials: credentials(&args)?,
            };
            args.finish()?;
            let r = connections::run(cfg).await?;
            Ok(if json {
                r.json().to_string()
            } else {
                r.human()
            })
        }
        "scale" => {
            let d = scale::ScaleConfig::new(&host, port);
            let cfg = scale::ScaleConfig {
                idle: args.get("idle", d.idle)?,
                live_max: args.get("live-max", d.live_max)?,
                per_process: args.get("per-process", d.per_process)?,
                concurrency: args.get("concurrency", d.concurrency)?,
                source_ips: args.get("source-ips", d.source_ips)?,
                keepalive_secs: args.get("keepalive", d.keepalive_secs)?,
                filters: args.get("filters", d.filters)?,
                duration: args.duration("duration", d.duration)?,
                fanout: args.get("fanout", d.fanout)?,
                rate: args.get("rate", d.rate)?,
                storm_rate: args.get("storm-rate", d.storm_rate)?,
                storm_timeout: args.duration("storm-timeout", d.storm_timeout)?,
                size: args.get("size", d.size)?,
                pid: args.opt("pid")?,
                metrics_url: args.opt("metrics-url")?,
                gauge: args.get("gauge", d.gauge.clone())?,
                sys_topic: args.opt("sys-topic")?,
                label: args.get("label", d.label.clone())?,
                ..d
            };
            args.finish()?;
            if cfg.rate <= 0.0 || cfg.storm_rate <= 0.0 {
                bail!("--rate and --storm-rate must be positive");
            }
            let r = scale::run(cfg).await?;
            Ok(if json {
                r.to_string()
            } else {
                scale::human(&r)
            })
        }
        // A child of `scale`, holding its share of the live idle sessions.
        "scale-idle" => {
            let first: usize = args.get("first", 0)?;
            let count: usize = args.get("count", 0)?;
            let run: String = args
                .opt("run")?
                .ok_or_else(|| anyhow::anyhow!("scale-idle needs --run"))?;
            let source_ips = args.get("source-ips", 50)?;
            let concurrency = args.get("concurrency", 64)?;
            let keepalive = args.get("keepalive", 60)?;
            let filters = args.get("filters", scale::Filters::Board)?;
            args.finish()?;
            scale::idle_child(
                &host,
                port,
                &run,
                first..first + count,
                source_ips,
                concurrency,
                scale::Shape { keepalive, filters },
            )
            .await
        }
        "flood" => {
            let need = |key: &str| -> anyhow::Result<String> {
                args.opt(key)?
                    .ok_or_else(|| anyhow::anyhow!("flood needs --{key}"))
            };
            let cfg = flood::FloodConfig {
                ingest: need("ingest")?,
                web: args.opt("web")?,
                viewer_token: args.opt("viewer-token")?,
                device_a: need("device-a")?,
                token_a: need("token-a")?,
                device_b: need("device-b")?,
                token_b: need("token-b")?,
                rate_a: args.get("rate-a", 100.0)?,
                rate_b: args.get("rate-b", 10.0)?,
                connections_a: args.get("connections-a", 16)?,
                phase: args.duration("seconds", Duration::from_secs(20))?,
            };
            // The MQTT options every other mode takes are not used here.
            let _ = (host, port);
            args.finish()?;
            let r = flood::run(cfg).await?;
            Ok(if json {
                r.json().to_string()
            } else {
                r.human()
            })
        }
        other => bail!("unknown mode {other:?}\n{USAGE}"),
    }
}

fn credentials(args: &Args) -> anyhow::Result<Option<(String, String)>> {
    let password: Option<String> = args.opt("password")?;
    match args.opt::<String>("username")? {
        Some(user) => Ok(Some((user, password.unwrap_or_default()))),
        None if password.is_some() => bail!("--password needs --username"),
        None => Ok(None),
    }
}

fn pubsub_config(
    args: &Args,
    host: &str,
    port: u16,
    latency: bool,
) -> anyhow::Result<PubSubConfig> {
    let d = PubSubConfig::new(host, port);
    let clients = if latency { 1 } else { 4 };
    let qos = match args.get("qos", 0u8)? {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        q => bail!("--qos {q}: must be 0, 1 or 2"),
    };
    let rate = match args.opt::<f64>("rate")? {
        Some(r) if r <= 0.0 => bail!("--rate must be positive"),
        Some(r) => Some(r),
        None if latency => Some(4000.0),
        None => None,
    };
    Ok(PubSubConfig {
        publishers: args.get("publishers", clients)?,
        subscribers: args.get("subscribers", clients)?,
        topics: args.get("topics", Topics::Shared)?,
        qos,
        size: args.get("size", d.size)?,
        rate,
        duration: args.duration("duration", d.duration)?,
        count: args.opt("count")?,
        drain: args.duration("drain", d.drain)?,
        inflight: args.get("inflight", d.inflight)?,
        credentials: credentials(args)?,
        ..d
    })
}
