//! The history performance claim, as a runnable benchmark (ignored by default):
//! "a year of one-minute readings for one device and metric (525,600 rows) bucketed by
//! hour or day answers in under 100 ms".
//!
//! ```text
//! cargo test --release -p lentera-web --test bench_history -- --ignored --nocapture
//! ```
//!
//! (`--release` for the recorded figure; without it the same test runs on the `dev`
//! profile, where serialising the JSON dominates.)
//!
//! It creates a fresh database, COPYs 525,600 rows into the monthly partitions, builds
//! the hourly rollup with `lentera_rebuild_rollup` (COPY bypasses the historian, which
//! maintains it on the live path), then times the hourly and daily bucketed queries
//! through the real REST API (HTTP + JSON included), prints the timings and the
//! `EXPLAIN (ANALYZE, BUFFERS)` plans, and fails if a median is 100 ms or more.
//! Results are recorded in docs/storage.md.

mod support;

use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, TimeZone, Utc};
use lentera_db::history::{Agg, Query};
use sqlx::postgres::PgPoolCopyExt;
use support::TestApp;

const ROWS: i64 = 525_600;
const RUNS: usize = 15;

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 11, 22, 0, 0, 0).unwrap()
}

async fn load(app: &TestApp) {
    let t = Instant::now();
    sqlx::query("INSERT INTO devices (id, first_seen, last_seen) VALUES ('bench-1', $1, $2)")
        .bind(start())
        .bind(start() + Duration::minutes(ROWS - 1))
        .execute(&app.pool)
        .await
        .unwrap();
    let months: Vec<DateTime<Utc>> = (0..=13).map(|m| start() + Duration::days(31 * m)).collect();
    lentera_db::write::ensure_partitions(&app.pool, &months)
        .await
        .unwrap();
    let mut copy = app
        .pool
        .copy_in_raw("COPY readings (device, metric, ts, value) FROM STDIN")
        .await
        .unwrap();
    let mut buf = String::with_capacity(8 << 20);
    for i in 0..ROWS {
        let ts = start() + Duration::minutes(i);
        // A daily sine plus a slow drift: plausible greenhouse temperatures.
        let v = 24.0
            + 6.0 * ((i % 1440) as f64 / 1440.0 * std::f64::consts::TAU).sin()
            + (i as f64 / ROWS as f64);
        buf.push_str(&format!(
            "bench-1\ttemperature\t{}\t{v:.3}\n",
            ts.to_rfc3339()
        ));
        if buf.len() > (4 << 20) {
            copy.send(std::mem::take(&mut buf).into_bytes())
                .await
                .unwrap();
        }
    }
    copy.send(buf.into_bytes()).await.unwrap();
    let copied = copy.finish().await.unwrap();
    assert_eq!(copied, ROWS as u64);
    let copy_time = t.elapsed();
    let t = Instant::now();
    let hours: i64 = sqlx::query_scalar("SELECT lentera_rebuild_rollup($1, $2)")
        .bind(start())
        .bind(start() + Duration::days(366))
        .fetch_one(&app.pool)
        .await
        .unwrap();
    sqlx::query("ANALYZE readings")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("ANALYZE readings_hourly")
        .execute(&app.pool)
        .await
        .unwrap();
    println!(
        "loaded {copied} rows by COPY in {copy_time:.2?}; rollup {hours} hours + ANALYZE in {:.2?}",
        t.elapsed()
    );
}

/// Median, min and max of `RUNS` requests (after one warm-up), and the point count.
async fn time(app: &TestApp, bucket: &str) -> (StdDuration, StdDuration, StdDuration, usize) {
    let to = start() + Duration::days(365);
    let url = format!(
        "/api/v1/devices/bench-1/readings?metric=temperature&bucket={bucket}&agg=avg&from={}&to={}&limit=10000",
        start().timestamp_millis(),
        to.timestamp_millis()
    );
    let (status, body) = app.get_json(&url).await;
    assert_eq!(status, 200, "{body}");
    let points = body["points"].as_array().unwrap().len();
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t = Instant::now();
        let r = app.get(&url).await;
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await.unwrap();
        times.push(t.elapsed());
    }
    times.sort();
    (times[RUNS / 2], times[0], times[RUNS - 1], points)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: loads 525,600 rows; run with --ignored --nocapture"]
async fn a_year_of_minutes_bucketed_by_hour_or_day_answers_under_100ms() {
    let app = TestApp::spawn().await;
    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    println!(
        "machine: {} cores, {cpu}; {version}; profile: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if cfg!(debug_assertions) {
            "dev"
        } else {
            "release"
        }
    );
    load(&app).await;
    let mut medians = Vec::new();
    for bucket in ["1h", "1d", "30m"] {
        let (median, min, max, points) = time(&app, bucket).await;
        let path = if bucket == "30m" {
            "raw rows"
        } else {
            "rollup"
        };
        println!(
            "bucket={bucket:>3} ({path:>8}): {points:>5} points, median {median:.2?} (min {min:.2?}, max {max:.2?}) over {RUNS} HTTP requests"
        );
        if bucket != "30m" {
            medians.push((bucket, median));
        }
    }
    for (bucket_secs, name) in [(3600, "1h"), (86_400, "1d")] {
        let q = Query {
            device: "bench-1".into(),
            metric: Some("temperature".into()),
            from: start(),
            to: start() + Duration::days(365),
            bucket_secs: Some(bucket_secs),
            agg: Agg::Avg,
            limit: 10_000,
            descending: false,
            cursor: None,
        };
        let plan = lentera_db::history::explain(&app.pool, &q).await.unwrap();
        println!("\nEXPLAIN (ANALYZE, BUFFERS), bucket={name}:\n{plan}");
    }
    for (bucket, median) in medians {
        assert!(
            median < StdDuration::from_millis(100),
            "bucket={bucket} took {median:?}"
        );
    }
    app.stop().await;
}
