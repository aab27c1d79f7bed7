//! The readings-path benchmark of `docs/benchmarks.md` ("Readings path"), two modes:
//!
//! - `drain`: how fast the real historian stores readings from MQTT into PostgreSQL,
//!   against a raw `COPY` of the same rows in the same run. The historian subscribes
//!   once (persistent session) and stops; N telemetry messages are published at QoS 1
//!   and queued by the broker; the historian starts again and the clock runs until its
//!   `readings_stored_total` reaches N (then `count(*)` is checked). The same N rows are
//!   then loaded by one binary `COPY` (`FORMAT binary`, as the historian writes) into an
//!   identical, freshly migrated database. Against a closed broker (the default) give
//!   `--username/--password` of a broker user that may subscribe to the historian's
//!   topics and publish `lentera/+/telemetry` and `lentera/+/status`: the historian and
//!   the publisher both log in with it.
//! - `e2e`: HTTP accept → row committed: posts one reading per request to a running
//!   ingest at a fixed rate and polls PostgreSQL (every `--poll-ms`) for the rows; the
//!   latency of a reading is from just before its request was sent to the poll that saw
//!   it committed (so it includes up to one poll interval). Every reading is device
//!   `--device`'s (default `e2e{pid}`), sent with `--token` as `Authorization: Bearer`
//!   (ingest is closed by default: provision the device first, `lentera devices add`).
//!
//! `DATABASE_URL` names the server (its database is only used to create the fresh ones).
//! Run through `scripts/bench/readings.sh`, which starts everything it needs; by hand:
//!
//! ```text
//! cargo run --release -p lentera-historian --example bench -- drain --mqtt-port 1883 \
//!     --username bench --password … --readings 200000
//! cargo run --release -p lentera-historian --example bench -- e2e --ingest http://127.0.0.1:8080 \
//!     --database-url postgres://…/lentera --device e2e-1 --token lt_… --rate 200 --duration-secs 20
//! ```
//!
//! Output: one JSON object on stdout.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, TimeZone, Utc};
use lentera_historian::settings::Settings;
use lentera_historian::startup::Application;
use lentera_mqtt::{Client, MqttSettings};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::oneshot;

const USAGE: &str =
    "usage: bench drain --mqtt-port P [--username U --password PW] [--readings N] [--devices D]
                   [--batch-size B] [--batch-interval-ms MS]
       bench e2e --ingest URL --database-url URL [--device ID] [--token T] [--rate R]
                 [--duration-secs S] [--poll-ms MS]";

struct Args(HashMap<String, String>);

impl Args {
    fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> anyhow::Result<T> {
        match self.0.get(name) {
            Some(v) => v.parse().map_err(|_| anyhow::anyhow!("bad --{name} {v}")),
            None => Ok(default),
        }
    }
    fn opt(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
    fn need(&self, name: &str) -> anyhow::Result<String> {
        self.0
            .get(name)
            .cloned()
            .with_context(|| format!("--{name} is required\n{USAGE}"))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut argv = std::env::args().skip(1);
    let mode = argv.next().unwrap_or_default();
    let mut map = HashMap::new();
    while let Some(k) = argv.next() {
        let Some(k) = k.strip_prefix("--") else {
            bail!("unexpected {k}\n{USAGE}")
        };
        let v = argv
            .next()
            .with_context(|| format!("--{k} needs a value"))?;
        map.insert(k.to_owned(), v);
    }
    let args = Args(map);
    let out = match mode.as_str() {
        "drain" => drain(&args).await?,
        "e2e" => e2e(&args).await?,
        _ => bail!("{USAGE}"),
    };
    println!("{out}");
    Ok(())
}

fn admin_url() -> anyhow::Result<String> {
    std::env::var("DATABASE_URL").context("DATABASE_URL is not set")
}

/// `url` with its database path replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A fresh, migrated database; returns its URL and name.
async fn fresh_db(tag: &str) -> anyhow::Result<(String, String)> {
    let admin = admin_url()?;
    let name = format!("lentera_bench_{tag}_{}", std::process::id());
    let mut conn = PgConnection::connect(&admin).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    let url = with_database(&admin, &name);
    let pool = PgPool::connect(&url).await?;
    lentera_db::migrate(&pool).await?;
    pool.close().await;
    Ok((url, name))
}

async fn drop_db(name: &str) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(&admin_url()?).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// The rows of the benchmark: reading `i` is device `bench-{i % devices}`, one metric,
/// one second apart per device, in the current month so no retention applies.
fn row(i: u64, devices: u64, start: DateTime<Utc>) -> (String, DateTime<Utc>, f64) {
    let device = format!("bench-{}", i % devices);
    let ts = start + chrono::Duration::milliseconds((i / devices) as i64 * 1000);
    let value = 15.0 + (i % 200) as f64 / 10.0;
    (device, ts, value)
}

/// `rows` (device, ts, value; metric `temperature`) in `COPY … FROM STDIN (FORMAT
/// binary)` form — the format the historian's writes use — so the baseline differs from
/// the historian only in what the historian adds (MQTT, JSON, batching, the rollup),
/// not in how PostgreSQL parses the rows. Written here, not borrowed from
/// `lentera_db`, so the baseline does not depend on the code it is compared with.
fn copy_binary(rows: impl Iterator<Item = (String, DateTime<Utc>, f64)>) -> Vec<u8> {
    /// 2000-01-01T00:00:00Z, PostgreSQL's timestamp epoch, in unix microseconds.
    const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
    let mut out = Vec::new();
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes()); // flags
    out.extend_from_slice(&0i32.to_be_bytes()); // header extension length
    for (device, ts, value) in rows {
        out.extend_from_slice(&4i16.to_be_bytes());
        for text in [device.as_str(), "temperature"] {
            out.extend_from_slice(&(text.len() as i32).to_be_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&(ts.timestamp_micros() - PG_EPOCH_MICROS).to_be_bytes());
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&value.to_bits().to_be_bytes());
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

struct RunningHistorian {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    admin: std::net::SocketAddr,
}

fn start_historian(settings: &Settings) -> anyhow::Result<RunningHistorian> {
    let app = Application::build(settings.clone())?;
    let admin = app.admin_addr();
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    Ok(RunningHistorian { stop, task, admin })
}

impl RunningHistorian {
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }

    async fn stored(&self, http: &reqwest::Client) -> anyhow::Result<u64> {
        let text = http
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("lentera_historian_readings_stored_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64)
    }
}

async fn drain(args: &Args) -> anyhow::Result<serde_json::Value> {
    let port: u16 = args.need("mqtt-port")?.parse()?;
    let n: u64 = args.get("readings", 200_000)?;
    let devices: u64 = args.get("devices", 100)?;
    let batch_size: usize = args.get("batch-size", 0)?;
    let batch_interval_ms: u64 = args.get("batch-interval-ms", 0)?;
    let (username, password) = (args.opt("username"), args.opt("password"));
    if password.is_some() && username.is_none() {
        bail!("--password needs --username");
    }
    let start = Utc
        .timestamp_opt(Utc::now().timestamp() - (n / devices) as i64 - 60, 0)
        .unwrap();

    let (url, hist_db) = fresh_db("hist").await?;
    let mut settings = Settings::default();
    settings.mqtt.port = port;
    settings.mqtt.client_id = Some(format!("lentera-bench-historian-{}", std::process::id()));
    settings.mqtt.username = username.clone();
    settings.mqtt.password = password.clone();
    settings.database.url = url.clone();
    settings.historian.admin_addr = "127.0.0.1:0".into();
    if batch_size > 0 {
        settings.historian.batch_size = batch_size;
    }
    if batch_interval_ms > 0 {
        settings.historian.batch_interval_ms = batch_interval_ms;
    }
    let pool = PgPool::connect(&url).await?;
    let http = reqwest::Client::new();

    // 1. Subscribe once: the persistent session then queues everything published below.
    let historian = start_historian(&settings)?;
    let mqtt = MqttSettings {
        port,
        max_inflight: 1024,
        ack_timeout_ms: 60_000,
        username,
        password,
        ..MqttSettings::default()
    };
    let (publisher, _rx) = Client::start(
        &mqtt,
        &format!("lentera-bench-publisher-{}", std::process::id()),
        true,
        false,
        vec![],
        None,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = publisher
            .publish_acked("lentera/bench-probe/status", false, "online")
            .await;
        let seen: Option<String> =
            sqlx::query_scalar("SELECT id FROM devices WHERE id = 'bench-probe'")
                .fetch_optional(&pool)
                .await?;
        if seen.is_some() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the historian never stored the probe: is the broker on port {port}, and \
                 may --username subscribe to the historian's topics and publish lentera/+/status?"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    historian.stop().await?;

    // 2. Queue N readings at the broker (QoS 1, each acknowledged).
    let t = Instant::now();
    let mut i = 0;
    while i < n {
        let mut chunk = tokio::task::JoinSet::new();
        for k in i..(i + 1000).min(n) {
            let (device, ts, value) = row(k, devices, start);
            let payload = format!(
                r#"{{"temperature":{value},"ts":"{}"}}"#,
                lentera_protocol::reading::format_ts(ts)
            );
            let publisher = publisher.clone();
            chunk.spawn(async move {
                publisher
                    .publish_acked(format!("lentera/{device}/telemetry"), false, payload)
                    .await
            });
        }
        while let Some(r) = chunk.join_next().await {
            r?.context("publishing a reading")?;
        }
        i = (i + 1000).min(n);
    }
    let publish_secs = t.elapsed().as_secs_f64();
    publisher.disconnect().await;

    // 3. The historian drains its session queue into PostgreSQL.
    let t = Instant::now();
    let historian = start_historian(&settings)?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if historian.stored(&http).await.unwrap_or(0) >= n {
            break;
        }
        if Instant::now() > deadline {
            bail!("the historian stored fewer than {n} readings in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_secs = t.elapsed().as_secs_f64();
    historian.stop().await?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM readings")
        .fetch_one(&pool)
        .await?;
    if rows as u64 != n {
        bail!("{rows} rows in readings, expected {n}");
    }
    pool.close().await;
    drop_db(&hist_db).await?;

    // 4. The same rows by one raw COPY into an identical fresh database.
    let (url, copy_db) = fresh_db("copy").await?;
    let pool = PgPool::connect(&url).await?;
    let months: Vec<DateTime<Utc>> = vec![start, row(n - 1, devices, start).1];
    lentera_db::write::ensure_partitions(&pool, &months).await?;
    let data = copy_binary((0..n).map(|k| row(k, devices, start)));
    let mut conn = pool.acquire().await?;
    let t = Instant::now();
    let mut copy = conn
        .copy_in_raw("COPY readings (device, metric, ts, value) FROM STDIN (FORMAT binary)")
        .await?;
    for chunk in data.chunks(1 << 20) {
        copy.send(chunk).await?;
    }
    let copied = copy.finish().await?;
    let copy_secs = t.elapsed().as_secs_f64();
    drop(conn);
    pool.close().await;
    drop_db(&copy_db).await?;
    if copied != n {
        bail!("COPY wrote {copied} rows, expected {n}");
    }

    let historian_rate = n as f64 / drain_secs;
    let copy_rate = n as f64 / copy_secs;
    Ok(serde_json::json!({
        "mode": "drain",
        "readings": n,
        "devices": devices,
        "batch_size": settings.historian.batch_size,
        "batch_interval_ms": settings.historian.batch_interval_ms,
        "publish_secs": publish_secs,
        "publish_per_sec": n as f64 / publish_secs,
        "historian_secs": drain_secs,
        "historian_per_sec": historian_rate,
        "copy_format": "binary",
        "copy_secs": copy_secs,
        "copy_per_sec": copy_rate,
        "historian_vs_copy": historian_rate / copy_rate,
    }))
}

async fn e2e(args: &Args) -> anyhow::Result<serde_json::Value> {
    let ingest = args.need("ingest")?;
    let url = args.need("database-url")?;
    let rate: u64 = args.get("rate", 200)?;
    let secs: u64 = args.get("duration-secs", 20)?;
    let poll = Duration::from_millis(args.get("poll-ms", 2)?);
    let token = args.opt("token");
    let pool = PgPool::connect(&url).await?;
    let http = reqwest::Client::new();
    let total = rate * secs;
    // Distinct (device, ts) per request: ts counts milliseconds from a base in the past.
    let base_ms = Utc::now().timestamp_millis() - 10 * 60 * 1000;
    let tag = args
        .opt("device")
        .unwrap_or_else(|| format!("e2e{}", std::process::id()));
    let sent: std::sync::Arc<std::sync::Mutex<HashMap<i64, Instant>>> = Default::default();

    let poller = {
        let sent = sent.clone();
        let pool = pool.clone();
        let device = tag.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(total as usize);
            let mut seen = std::collections::HashSet::new();
            let give_up = Instant::now() + Duration::from_secs(secs + 30);
            while (seen.len() as u64) < total && Instant::now() < give_up {
                tokio::time::sleep(poll).await;
                let rows: Vec<DateTime<Utc>> = match sqlx::query_scalar(
                    "SELECT ts FROM readings WHERE device = $1 AND metric = 'lux' AND ts >= $2",
                )
                .bind(&device)
                .bind(Utc.timestamp_millis_opt(base_ms).unwrap())
                .fetch_all(&pool)
                .await
                {
                    Ok(r) => r,
                    Err(_) => continue,
                };
                let now = Instant::now();
                let sent = sent.lock().unwrap();
                for ts in rows {
                    let k = ts.timestamp_millis() - base_ms;
                    if seen.contains(&k) {
                        continue;
                    }
                    if let Some(t0) = sent.get(&k) {
                        seen.insert(k);
                        latencies.push(now.duration_since(*t0));
                    }
                }
            }
            latencies
        })
    };

    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let t = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    let mut failed = 0u64;
    for k in 0..total as i64 {
        tokio::time::sleep_until((t + interval * k as u32).into()).await;
        let body = format!(
            r#"{{"device":"{tag}","lux":{},"ts":{}}}"#,
            k % 1000,
            base_ms + k
        );
        sent.lock().unwrap().insert(k, Instant::now());
        let mut req = http
            .post(format!("{ingest}/api/v1/readings"))
            .header("content-type", "application/json");
        if let Some(token) = &token {
            req = req.bearer_auth(token);
        }
        let req = req.body(body).send();
        tasks.push(tokio::spawn(async move {
            req.await.map(|r| r.status().as_u16()).unwrap_or(0)
        }));
    }
    for task in tasks {
        if task.await.unwrap_or(0) != 202 {
            failed += 1;
        }
    }
    let mut latencies = poller.await?;
    latencies.sort();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    Ok(serde_json::json!({
        "mode": "e2e",
        "requests": total,
        "rate": rate,
        "not_202": failed,
        "committed": latencies.len(),
        "poll_ms": poll.as_millis() as u64,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": latencies.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0),
    }))
}
