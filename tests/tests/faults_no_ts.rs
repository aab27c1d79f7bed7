//! The fault tests again, with boards that send no `ts`, through every door.
//!
//! A board without a clock leaves the reading's time to the platform: ingest stamps
//! HTTP and TCP readings, our broker stamps what boards publish to MQTT, each with a
//! microsecond unique per device, written into the message before it is acknowledged.
//! So a redelivery after a crash carries the time it was first given and is stored once,
//! and readings close together never collide. Each test streams readings, SIGKILLs the
//! historian or the broker mid-stream, brings it back, and requires PostgreSQL to hold
//! exactly the readings that were acknowledged (`202`, `OK`, PUBACK), each once, with
//! a distinct receive time each.
//!
//! The HTTP and TCP doors with the historian killed also run on Mosquitto and rumqttd
//! 0.20.0 (ingest stamps those readings; the broker only has to keep the historian's
//! session). Ours only: the MQTT door without `ts` (the stamp is our broker's — another
//! broker forwards the payload as the board sent it, so a redelivery could not be told
//! from a new reading), and the broker-killed faults (Mosquitto as run here and rumqttd
//! keep no store: what they acknowledged and had not delivered is gone with them).

use std::time::Duration;

use lentera_tests::readings::{Stream, Ts, assert_stored_exactly_once, wait_rows};
use lentera_tests::{BrokerKind, Stack};
use sqlx::PgPool;

const WAIT: Duration = Duration::from_secs(30);
const COUNT: u64 = 300;
const RATE: f64 = 50.0;

#[derive(Debug, Clone, Copy)]
enum Door {
    Http,
    Tcp,
    Mqtt,
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    HistorianKilled,
    BrokerKilled,
}

async fn run(door: Door, fault: Fault) {
    run_on(BrokerKind::Ours, door, fault).await;
}

async fn run_on(kind: BrokerKind, door: Door, fault: Fault) {
    let device = format!("nots-{door:?}-{fault:?}").to_lowercase();
    let Some(builder) = Stack::on(kind) else {
        return;
    };
    let mut stack = builder
        .env("historian", "LENTERA_HISTORIAN__BATCH_INTERVAL_MS", "300")
        .readings_only()
        .start()
        .await
        .expect("stack starts");
    let pool = stack.db.connect().await.unwrap();
    // The schema is the historian's to migrate: count rows only once it is ready.
    stack
        .historian()
        .wait_readyz("admin", 200, WAIT)
        .await
        .unwrap();
    let token = stack.provision(&device, "greenhouse").await.unwrap();
    let stream = match door {
        Door::Http => {
            let url = stack.board_url(&device).await.unwrap();
            Stream::start_without_ts(url, &device, COUNT, RATE, 4)
        }
        Door::Tcp => {
            let addr = stack.ingest.addr("tcp").unwrap().to_string();
            Stream::start_tcp_with(addr, &device, &token, COUNT, RATE, Ts::Receiver)
        }
        Door::Mqtt => {
            let addr = stack.mqtt_addr().to_string();
            Stream::start_mqtt(addr, &device, &token, COUNT, RATE)
        }
    };
    wait_rows(&pool, &device, 60, WAIT).await.unwrap();
    let n = stream.accepted();
    stream.wait_accepted(n + 10, WAIT).await.unwrap();
    match fault {
        Fault::HistorianKilled => {
            stack.historian_mut().kill().unwrap();
            let n = stream.accepted();
            stream.wait_accepted(n + 60, WAIT).await.unwrap();
            stack.historian_mut().restart().unwrap();
            stack.historian().wait_ready("admin").await.unwrap();
        }
        Fault::BrokerKilled => {
            stack.broker.kill();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            tokio::task::block_in_place(|| stack.broker.start_again());
        }
    }
    let report = stream.finish(Duration::from_secs(120)).await.unwrap();
    report.assert_all_accepted();
    assert_stored_exactly_once(&pool, &report, WAIT).await;
    assert_distinct_times(&pool, &device).await;
    stack.terminate_all().unwrap();
}

/// Every stored reading of `device` has a time of its own.
async fn assert_distinct_times(pool: &PgPool, device: &str) {
    let (rows, times): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT ts) FROM readings WHERE device = $1 AND metric = 'seq'",
    )
    .bind(device)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(rows, times, "{device}: readings sharing a receive time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_without_ts_historian_killed_loses_and_doubles_nothing() {
    run(Door::Http, Fault::HistorianKilled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_without_ts_broker_killed_loses_and_doubles_nothing() {
    run(Door::Http, Fault::BrokerKilled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_without_ts_historian_killed_on_mosquitto_loses_and_doubles_nothing() {
    run_on(BrokerKind::Mosquitto, Door::Http, Fault::HistorianKilled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_without_ts_historian_killed_on_rumqttd_loses_and_doubles_nothing() {
    run_on(BrokerKind::Rumqttd, Door::Http, Fault::HistorianKilled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_without_ts_historian_killed_loses_and_doubles_nothing() {
    run(Door::Tcp, Fault::HistorianKilled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_without_ts_historian_killed_on_mosquitto_loses_and_doubles_nothing() {
    run_on(BrokerKind::Mosquitto, Door::Tcp, Fault::HistorianKilled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_without_ts_historian_killed_on_rumqttd_loses_and_doubles_nothing() {
    run_on(BrokerKind::Rumqttd, Door::Tcp, Fault::HistorianKilled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_without_ts_broker_killed_loses_and_doubles_nothing() {
    run(Door::Tcp, Fault::BrokerKilled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_without_ts_historian_killed_loses_and_doubles_nothing() {
    run(Door::Mqtt, Fault::HistorianKilled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_without_ts_broker_killed_loses_and_doubles_nothing() {
    run(Door::Mqtt, Fault::BrokerKilled).await;
}
