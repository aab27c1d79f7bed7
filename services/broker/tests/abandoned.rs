//! Issue 13's abandoned-subscribers case: 200 `clean_session=0` subscribers to
//! `lentera/#` vanish, then 5,000 readings arrive. The broker's queued bytes, its store
//! and its memory stay within their bounds, the overflow is counted (not silent), and a
//! fresh publisher still gets fast PUBACKs. Its own binary: it measures the process.

mod common;

use std::time::{Duration, Instant};

use common::{Broker, Client, reading};

/// Resident set size of this process (the broker runs in it), in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

const PER_SESSION: usize = 32 * 1024;
const TOTAL: usize = 8 * 1024 * 1024;
const COMPACT: u64 = 2 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_persistent_subscribers_stay_within_their_bounds() {
    let dir = std::env::temp_dir().join(format!("lentera-abandoned-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut s = Broker::settings_with_store(&dir);
    s.broker.ws_addr = Some(String::new());
    s.broker.session_queue_bytes = PER_SESSION;
    s.broker.queued_bytes_total = TOTAL;
    s.broker.store_compact_bytes = COMPACT;
    let b = Broker::start_with(s).await;

    for i in 0..200 {
        let mut o = Client::v3_options(&b, &format!("abandoned-{i}"));
        o.set_clean_session(false);
        let mut c = Client::connect_v3(o).await;
        c.subscribe("lentera/#", 1).await;
        c.kill();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss();

    // 5,000 readings, QoS 1, pipelined (rumqttc keeps up to 100 in flight).
    let mut o = Client::v3_options(&b, "gh-1");
    o.set_inflight(100);
    let mut publisher = Client::connect_v3(o).await;
    let started = Instant::now();
    for seq in 0..5_000u64 {
        publisher
            .publish("lentera/gh-1/telemetry", &reading(seq), 1, false)
            .await;
    }
    for _ in 0..5_000 {
        publisher.expect_puback().await;
    }
    let flood = started.elapsed();

    let m = b.metrics().await;
    let queued = metric(&m, "lentera_broker_queued_bytes");
    let refused = metric(
        &m,
        r#"lentera_broker_messages_dropped_total{reason="queue_bytes"}"#,
    );
    let store = dir_bytes(&dir);
    let grown = rss().saturating_sub(rss_before);
    eprintln!(
        "5,000 readings in {flood:?}; queued {queued} B, refused {refused} (per session), \
         store {store} B, RSS +{grown} B"
    );
    assert!(queued <= TOTAL as u64, "queued {queued} > {TOTAL}");
    assert!(
        queued <= 200 * PER_SESSION as u64,
        "each session within its own bound"
    );
    assert!(
        refused > 0,
        "the per-session bound was reached, and counted"
    );
    // The store holds at most the live state plus what piled up since the last
    // compaction (and a snapshot being written).
    assert!(
        store <= TOTAL as u64 + 2 * COMPACT + (1 << 20),
        "store {store} B"
    );
    assert!(grown < 96 << 20, "RSS grew by {grown} B");

    // A fresh publisher: acknowledged fast, one at a time.
    let mut fresh = Client::v3(&b, "gh-2").await;
    let mut lat = Vec::new();
    for seq in 0..50 {
        let t = Instant::now();
        fresh
            .publish("lentera/gh-2/telemetry", &reading(seq), 1, false)
            .await;
        fresh.expect_puback().await;
        lat.push(t.elapsed());
    }
    lat.sort();
    eprintln!(
        "fresh publisher PUBACK p50 {:?}, max {:?}",
        lat[25], lat[49]
    );
    assert!(lat[25] < Duration::from_millis(50), "p50 {:?}", lat[25]);
    assert!(lat[49] < Duration::from_millis(500), "max {:?}", lat[49]);
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
