//! How the readings path scales with historians sharing one `$share/historian/…` group:
//! the figures of docs/scaling.md. `#[ignore]`d (it floods PostgreSQL with half a million
//! rows per historian count); run it on release binaries:
//!
//! ```text
//! cargo build --release -p lentera-broker -p lentera-historian -p lentera-ingest -p lentera-cli
//! DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/postgres \
//!   cargo test --release -p lentera-tests --test scale_out_bench -- --ignored --nocapture
//! ```
//!
//! For each count N (`LENTERA_SCALE_HISTORIANS`, default `1,2,3`) a fresh stack: our
//! broker, N historians in one shared group, each with its own persistent session, and a
//! fresh database on the `DATABASE_URL` server. The historians subscribe and are stopped
//! (SIGTERM: a clean disconnect, the sessions stay); `LENTERA_SCALE_READINGS` (default
//! 500,000) telemetry messages — 100 devices, one metric, each with its `ts` — are then
//! published at QoS 1, each acknowledged, and the broker splits them round-robin between
//! the N offline sessions of the group. The clock starts as the historians are started
//! again (one after the other; each start is ~0.1 s of the clock) and stops when
//! `count(*)` of `readings` reaches the total. That is the drain rate of a flood
//! already queued at the broker: the publisher does not compete for the CPU while the
//! historians write. The test fails if any reading is missing or stored twice, or a
//! historian took no part. It also prints the cores that the historians, PostgreSQL
//! (every `postgres` process), our broker and the whole machine used while draining,
//! read from `/proc`.

use std::time::{Duration, Instant};

use lentera_tests::{Stack, TestBroker};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Outgoing, QoS};

const STORED: &str = "lentera_historian_readings_stored_total";
const DEVICES: u64 = 100;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Publishes `n` readings at QoS 1 and returns once the broker acknowledged all of them.
async fn flood(port: u16, n: u64) -> f64 {
    let mut o = MqttOptions::new(
        format!("scale-flood-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    o.set_inflight(1000)
        .set_keep_alive(Duration::from_secs(30))
        .set_request_channel_capacity(2000);
    let (client, mut eventloop) = AsyncClient::new(o, 2000);
    let start = Instant::now();
    let base = chrono::Utc::now() - chrono::Duration::seconds((n / DEVICES) as i64 + 60);
    let publisher = tokio::spawn(async move {
        for i in 0..n {
            let ts = base + chrono::Duration::seconds((i / DEVICES) as i64);
            let payload = format!(
                r#"{{"temperature":{},"ts":"{}"}}"#,
                15.0 + (i % 200) as f64 / 10.0,
                lentera_protocol::reading::format_ts(ts)
            );
            client
                .publish(
                    format!("lentera/scale-{}/telemetry", i % DEVICES),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await
                .unwrap();
        }
        client
    });
    let mut acked = 0;
    while acked < n {
        match tokio::time::timeout(Duration::from_secs(30), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::PubAck(_)))) => acked += 1,
            Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => panic!("publisher disconnected"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("publisher's connection failed after {acked} PUBACKs: {e}"),
            Err(_) => panic!("no PUBACK for 30 s after {acked} of {n}"),
        }
    }
    let client = publisher.await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
    secs
}

/// CPU seconds (user + system) process `pid` has used, from `/proc/{pid}/stat`
/// (clock ticks of 1/100 s, the Linux default).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds used so far by every process named `postgres` (the server and its
/// backends, whoever they serve), by pid.
fn postgres_cpu() -> std::collections::HashMap<u32, f64> {
    let mut out = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == "postgres" {
            out.insert(pid, cpu_secs(pid));
        }
    }
    out
}

/// CPU seconds the `postgres` processes used between two [`postgres_cpu`] snapshots
/// (a backend that started in between counts from zero; one that exited is missed).
fn postgres_used(before: &std::collections::HashMap<u32, f64>) -> f64 {
    postgres_cpu()
        .iter()
        .map(|(pid, now)| now - before.get(pid).copied().unwrap_or(0.0))
        .sum()
}

/// (busy, total) clock ticks of the whole machine, from `/proc/stat`.
fn machine_ticks() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: f64 = cpu.iter().sum();
    // idle and iowait are the 4th and 5th.
    let idle = cpu.get(3).copied().unwrap_or(0.0) + cpu.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

/// One historian count's result.
struct Drain {
    rate: f64,
    per: Vec<f64>,
    /// Cores the historians used between them while draining.
    historian_cores: f64,
    /// Cores the PostgreSQL server's processes used.
    postgres_cores: f64,
    /// Cores our broker used.
    broker_cores: f64,
    /// Cores the whole machine (PostgreSQL, the broker, everyone else) was busy.
    machine_cores: f64,
}

async fn drain_with(historians: usize, n: u64) -> Drain {
    let window = 20_000u64;
    let queue = n + 100_000;
    let broker_env: Vec<(String, String)> = [
        ("LENTERA_BROKER__MAX_INFLIGHT", window),
        ("LENTERA_BROKER__SESSION_QUEUE_CAPACITY", queue),
        ("LENTERA_BROKER__SESSION_QUEUE_BYTES", queue * 256),
        (
            "LENTERA_BROKER__QUEUED_BYTES_TOTAL",
            (2 * queue * 256).max(256 << 20),
        ),
        ("LENTERA_QUOTA__DEVICE_RATE_PER_SEC", 1_000_000),
        ("LENTERA_QUOTA__DEVICE_BURST", 1_000_000),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_string()))
    .collect();
    let broker = tokio::task::spawn_blocking(move || TestBroker::start_with(&broker_env))
        .await
        .unwrap();
    let port = broker.port();
    let mut stack = Stack::builder()
        .broker(broker)
        .historians(historians, "historian")
        .env("historian", "LENTERA_HISTORIAN__BATCH_INTERVAL_MS", "100")
        .env("historian", "LENTERA_TELEMETRY__LOG", "warn")
        .readings_only()
        .start()
        .await
        .expect("stack starts");
    for h in &mut stack.historians {
        h.wait_ready("admin").await.unwrap();
        let status = h.terminate().unwrap();
        assert!(status.success(), "{}", h.log_text());
    }
    let publish_secs = flood(port, n).await;
    eprintln!(
        "  {historians} historian(s): {n} readings queued at the broker in {publish_secs:.1} s ({:.0}/s)",
        n as f64 / publish_secs
    );

    let pool = stack.db.connect().await.unwrap();
    let start = Instant::now();
    let (busy0, total0) = machine_ticks();
    let pg0 = postgres_cpu();
    let broker_pid = stack.broker.service().expect("our broker").pid();
    let broker0 = cpu_secs(broker_pid);
    for h in &mut stack.historians {
        h.restart().unwrap();
    }
    let cpu0: Vec<f64> = stack.historians.iter().map(|h| cpu_secs(h.pid())).collect();
    let deadline = start + Duration::from_secs(600);
    loop {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM readings")
            .fetch_one(&pool)
            .await
            .unwrap();
        if rows as u64 >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{rows} of {n} stored in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let (busy1, total1) = machine_ticks();
    let postgres_cores = postgres_used(&pg0) / secs;
    let broker_cores = (cpu_secs(broker_pid) - broker0) / secs;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let machine_cores = (busy1 - busy0) / (total1 - total0).max(1.0) * cores;
    let historian_cpu: f64 = stack
        .historians
        .iter()
        .zip(&cpu0)
        .map(|(h, c0)| cpu_secs(h.pid()) - c0)
        .sum();
    let mut per = Vec::new();
    for h in &stack.historians {
        per.push(h.metric("admin", STORED).await.unwrap());
    }
    let (rows, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT (device, ts)) FROM readings WHERE device LIKE 'scale-%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((rows as u64, distinct as u64), (n, n), "each reading once");
    assert!(
        per.iter().all(|p| *p > 0.0),
        "every historian took part: {per:?}"
    );
    pool.close().await;
    stack.terminate_all().unwrap();
    let Stack { db, .. } = stack;
    db.drop_db().await.unwrap();
    Drain {
        rate: n as f64 / secs,
        per,
        historian_cores: historian_cpu / secs,
        postgres_cores,
        broker_cores,
        machine_cores,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: floods PostgreSQL; run with --release --ignored --nocapture"]
async fn shared_historians_drain_rate() {
    let n: u64 = env_or("LENTERA_SCALE_READINGS", 500_000);
    let counts: Vec<usize> = std::env::var("LENTERA_SCALE_HISTORIANS")
        .unwrap_or_else(|_| "1,2,3".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    eprintln!(
        "shared-subscription drain: {n} readings, historians {counts:?}, {} cores, {profile} build",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut rows = Vec::new();
    for &h in &counts {
        let d = drain_with(h, n).await;
        eprintln!(
            "  {h} historian(s): {:.0} readings/s stored; per historian {:?}; historians used \
             {:.2} cores, PostgreSQL {:.2}, the broker {:.2}, the machine {:.2}",
            d.rate, d.per, d.historian_cores, d.postgres_cores, d.broker_cores, d.machine_cores
        );
        rows.push((h, d));
    }
    println!(
        "| historians | readings/s stored | vs 1 | split between historians | cores: historians | PostgreSQL | broker | whole machine |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let one = rows.first().map_or(1.0, |r| r.1.rate);
    for (h, d) in &rows {
        let split: Vec<String> = d.per.iter().map(|p| format!("{p:.0}")).collect();
        println!(
            "| {h} | {:.0} | {:.2}× | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            d.rate,
            d.rate / one,
            split.join(" / "),
            d.historian_cores,
            d.postgres_cores,
            d.broker_cores,
            d.machine_cores
        );
    }
}
