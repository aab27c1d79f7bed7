//! The historian while PostgreSQL is down or slow, through the real binaries: it never
//! acknowledges what it has not committed, stays up, says not-ready, retries, and in the
//! end every accepted reading is stored exactly once (see `lentera_tests::readings`).
//!
//! Each runs on our broker, on Mosquitto and on rumqttd 0.20.0: what it checks is the
//! historian's, and the broker's part (keep an unacknowledged delivery, redeliver it to
//! the persistent session) is plain MQTT 3.1.1.

use std::time::Duration;

use lentera_tests::readings::{Stream, assert_stored_exactly_once, wait_rows};
use lentera_tests::{BrokerKind, PrivatePostgres, Stack};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(20);
const ACKED: &str = "lentera_historian_deliveries_acked_total";

/// PostgreSQL stopped mid-stream: the historian keeps receiving but acknowledges
/// nothing (its counter of acknowledgements stands still while readings keep arriving),
/// and the broker agrees: the historian is then SIGKILLed while PostgreSQL is still down,
/// so whatever it held survives only if it was never acknowledged — and after PostgreSQL
/// and the historian are back, every accepted reading is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_down_the_historian_acknowledges_nothing() {
    postgres_down_nothing_acknowledged(BrokerKind::Ours).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_down_the_historian_acknowledges_nothing_on_mosquitto() {
    postgres_down_nothing_acknowledged(BrokerKind::Mosquitto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_down_the_historian_acknowledges_nothing_on_rumqttd() {
    postgres_down_nothing_acknowledged(BrokerKind::Rumqttd).await;
}

async fn postgres_down_nothing_acknowledged(kind: BrokerKind) {
    let Some(builder) = Stack::on(kind) else {
        return;
    };
    let Some(mut pg) = PrivatePostgres::start().expect("private PostgreSQL starts") else {
        return;
    };
    let mut stack = builder
        .postgres(pg.url())
        .readings_only()
        .start()
        .await
        .expect("stack starts");
    let pool = stack.db.connect().await.unwrap();
    let stream = Stream::start(
        stack.board_url("pg-noack").await.unwrap(),
        "pg-noack",
        400,
        50.0,
        4,
    );
    wait_rows(&pool, "pg-noack", 50, WAIT).await.unwrap();
    pool.close().await;

    pg.stop().unwrap();
    stack
        .historian()
        .wait_readyz("admin", 503, WAIT)
        .await
        .expect("the historian reports not-ready while PostgreSQL is down");
    let acked_before = stack.historian().metric("admin", ACKED).await.unwrap();
    let n = stream.accepted();
    stream.wait_accepted(n + 100, WAIT).await.unwrap();
    let acked_after = stack.historian().metric("admin", ACKED).await.unwrap();
    let pending = stack
        .historian()
        .metric("admin", "lentera_historian_pending_deliveries")
        .await
        .unwrap();
    eprintln!(
        "while PostgreSQL was down: {} more readings accepted, acknowledgements {acked_before} -> {acked_after}, {pending} deliveries in the open batch",
        stream.accepted() - n
    );
    assert_eq!(
        acked_before, acked_after,
        "the historian acknowledged deliveries while PostgreSQL was down"
    );
    assert!(
        stack.historians[0].is_running(),
        "the historian stays up without PostgreSQL:\n{}",
        stack.historian().log_text()
    );

    // What it holds is unacknowledged at the broker: kill it, and the broker must
    // redeliver all of it (plus what arrives meanwhile) to the next historian.
    stack.historian_mut().kill().unwrap();
    let n = stream.accepted();
    stream.wait_accepted(n + 20, WAIT).await.unwrap();
    pg.start_again().unwrap();
    stack.historian_mut().restart().unwrap();
    stack.historian().wait_ready("admin").await.unwrap();

    let report = stream.finish(WAIT).await.unwrap();
    report.assert_all_accepted();
    let pool = stack.db.connect().await.unwrap();
    assert_stored_exactly_once(&pool, &report, WAIT).await;
    stack.terminate_all().unwrap();
}

/// PostgreSQL slow: another session holds `LOCK TABLE readings IN ACCESS EXCLUSIVE
/// MODE` for 5 s mid-stream, so every batch write waits. With
/// `historian.write_timeout_ms` = 1 s each attempt is cancelled by PostgreSQL and rolled
/// back; the historian stays up, reports not-ready, keeps retrying, acknowledges
/// nothing meanwhile, and once the lock is released stores every reading exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_slow_behind_a_lock_for_five_seconds_loses_and_doubles_nothing() {
    postgres_slow_behind_a_lock(BrokerKind::Ours).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_slow_behind_a_lock_on_mosquitto_loses_and_doubles_nothing() {
    postgres_slow_behind_a_lock(BrokerKind::Mosquitto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_slow_behind_a_lock_on_rumqttd_loses_and_doubles_nothing() {
    postgres_slow_behind_a_lock(BrokerKind::Rumqttd).await;
}

async fn postgres_slow_behind_a_lock(kind: BrokerKind) {
    let Some(builder) = Stack::on(kind) else {
        return;
    };
    let mut stack = builder
        .env("historian", "LENTERA_HISTORIAN__WRITE_TIMEOUT_MS", "1000")
        .readings_only()
        .start()
        .await
        .expect("stack starts");
    let pool = stack.db.connect().await.unwrap();
    let stream = Stream::start(
        stack.board_url("pg-slow").await.unwrap(),
        "pg-slow",
        450,
        50.0,
        4,
    );
    wait_rows(&pool, "pg-slow", 50, WAIT).await.unwrap();

    let mut locker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let locked_at = Instant::now();
    let historian = stack.historian();
    let errors_before = historian
        .metric("admin", "lentera_historian_batch_errors_total")
        .await
        .unwrap();
    historian
        .wait_readyz("admin", 503, WAIT)
        .await
        .expect("the historian reports not-ready while its writes time out");
    let acked_locked = historian.metric("admin", ACKED).await.unwrap();
    while locked_at.elapsed() < Duration::from_secs(5) {
        assert!(
            stack.historians[0].is_running(),
            "the historian died behind the lock:\n{}",
            stack.historian().log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let historian = stack.historian();
    let errors = historian
        .metric("admin", "lentera_historian_batch_errors_total")
        .await
        .unwrap();
    assert!(
        errors >= errors_before + 2.0,
        "the historian kept retrying behind the lock: batch errors {errors_before} -> {errors}"
    );
    assert_eq!(
        historian.metric("admin", ACKED).await.unwrap(),
        acked_locked,
        "nothing acknowledged while no write could commit"
    );
    assert_eq!(historian.readyz("admin").await, Some(503));
    locker.rollback().await.unwrap();
    let released_at = Instant::now();

    historian
        .wait_readyz("admin", 200, WAIT)
        .await
        .expect("ready again once the lock is gone");
    eprintln!(
        "ready {:?} after the lock was released; {errors} batch errors in all",
        released_at.elapsed()
    );
    let report = stream.finish(WAIT).await.unwrap();
    report.assert_all_accepted();
    assert_stored_exactly_once(&pool, &report, WAIT).await;
    stack.terminate_all().unwrap();
}
