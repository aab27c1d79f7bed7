//! Every accepted reading is stored exactly once, whatever fails.
//!
//! Each test streams a few hundred readings through the real binaries at a steady rate,
//! breaks one part of the path in the middle of the stream, mends it, and then compares
//! what ingest accepted (`202`) with what PostgreSQL holds: the same readings, each once
//! (see `lentera_tests::readings`).
//!
//! Most run on our broker, on Mosquitto and on rumqttd 0.20.0 (`…_on_mosquitto`,
//! `…_on_rumqttd`: one body taking a [`BrokerKind`]). The broker-restart tests run on
//! ours only: Mosquitto (run without `persistence true`) and rumqttd (it has no store at
//! all) forget on restart the readings they acknowledged to ingest but had not yet
//! delivered, and the historian's session with them, so "every 202 stored" cannot hold
//! there by design — not a defect of the services. See docs/scaling.md.

use std::time::Duration;

use lentera_tests::readings::{
    Attempt, Connections, Stream, assert_stored_exactly_once, wait_rows,
};
use lentera_tests::{BrokerKind, PrivatePostgres, Stack};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Longest wait for anything the tests wait on.
const WAIT: Duration = Duration::from_secs(20);

/// PostgreSQL stopped for more than 10 s mid-stream: ingest keeps accepting (it never
/// touches the database), the historian stays up, says not-ready, keeps its batch
/// unacknowledged, and stores everything once PostgreSQL is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_for_ten_seconds_mid_stream_loses_and_doubles_nothing() {
    postgres_down_for_ten_seconds(BrokerKind::Ours).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_for_ten_seconds_on_mosquitto_loses_and_doubles_nothing() {
    postgres_down_for_ten_seconds(BrokerKind::Mosquitto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_for_ten_seconds_on_rumqttd_loses_and_doubles_nothing() {
    postgres_down_for_ten_seconds(BrokerKind::Rumqttd).await;
}

async fn postgres_down_for_ten_seconds(kind: BrokerKind) {
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
    // 14 s of readings: ~2 s before the outage, 10.5 s during, the rest after.
    let stream = Stream::start(
        stack.board_url("pg-down").await.unwrap(),
        "pg-down",
        350,
        25.0,
        4,
    );
    wait_rows(&pool, "pg-down", 50, WAIT).await.unwrap();
    pool.close().await;

    pg.stop().unwrap();
    let down_at = Instant::now();
    let accepted_at_stop = stream.accepted();
    stack
        .historian()
        .wait_readyz("admin", 503, WAIT)
        .await
        .expect("the historian reports not-ready while PostgreSQL is down");
    // The outage lasts 10.5 s by the clock; meanwhile the historian must stay up.
    while down_at.elapsed() < Duration::from_millis(10_500) {
        assert!(
            stack.historians[0].is_running(),
            "the historian died while PostgreSQL was down:\n{}",
            stack.historian().log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        stack.historian().readyz("admin").await,
        Some(503),
        "still not ready after 10 s without PostgreSQL"
    );
    assert!(
        stream.accepted() >= accepted_at_stop + 200,
        "ingest kept accepting while PostgreSQL was down: {} then {}",
        accepted_at_stop,
        stream.accepted()
    );
    pg.start_again().unwrap();
    let up_at = Instant::now();

    stack
        .historian()
        .wait_readyz("admin", 200, WAIT)
        .await
        .expect("the historian is ready again once PostgreSQL is back");
    eprintln!(
        "historian ready {:?} after PostgreSQL came back",
        up_at.elapsed()
    );
    let report = stream.finish(WAIT).await.unwrap();
    eprintln!(
        "stream finished {:?} after PostgreSQL came back",
        up_at.elapsed()
    );
    report.assert_all_accepted();
    let pool = stack.db.connect().await.unwrap();
    assert_stored_exactly_once(&pool, &report, WAIT).await;
    assert!(
        stack.historians[0].is_running(),
        "the historian survived the outage"
    );
    stack.terminate_all().unwrap();
}

/// The historian SIGKILLed mid-stream, with a batch in hand that it had neither
/// committed nor acknowledged (half-second batches at 50 readings/s: ~25 of them), and
/// started again once 80 more readings were accepted: its persistent session makes the
/// broker keep and redeliver them, and the idempotent write stores each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn historian_killed_mid_stream_loses_and_doubles_nothing() {
    historian_killed_mid_stream(BrokerKind::Ours, "hist-kill").await;
}

/// The same on Mosquitto, which keeps an offline persistent session's messages too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn historian_killed_mid_stream_on_mosquitto_loses_and_doubles_nothing() {
    historian_killed_mid_stream(BrokerKind::Mosquitto, "hist-kill-mosq").await;
}

/// And on rumqttd, whose persistent sessions keep, in memory, the position of the
/// unacknowledged deliveries in its log and resend from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn historian_killed_mid_stream_on_rumqttd_loses_and_doubles_nothing() {
    historian_killed_mid_stream(BrokerKind::Rumqttd, "hist-kill-rumqttd").await;
}

async fn historian_killed_mid_stream(kind: BrokerKind, device: &str) {
    let Some(builder) = Stack::on(kind) else {
        return;
    };
    let mut stack = builder
        .env("historian", "LENTERA_HISTORIAN__BATCH_INTERVAL_MS", "500")
        .readings_only()
        .start()
        .await
        .expect("stack starts");
    let pool = stack.db.connect().await.unwrap();
    let stream = Stream::start(stack.board_url(device).await.unwrap(), device, 300, 50.0, 4);
    wait_rows(&pool, device, 80, WAIT).await.unwrap();
    // A batch has just been committed; a quarter second later the next one holds ~12
    // readings, received and neither committed nor acknowledged.
    let n = stream.accepted();
    stream.wait_accepted(n + 12, WAIT).await.unwrap();

    stack.historian_mut().kill().unwrap();
    // Readings accepted while no historian is connected must wait in the broker.
    let n = stream.accepted();
    stream.wait_accepted(n + 80, WAIT).await.unwrap();
    stack.historian_mut().restart().unwrap();
    stack.historian().wait_ready("admin").await.unwrap();

    let report = stream.finish(WAIT).await.unwrap();
    report.assert_all_accepted();
    assert!(
        report.refused_statuses().is_empty() && report.no_answers() == 0,
        "ingest refused nothing while only the historian was down: {:?}",
        report
            .log
            .attempts
            .iter()
            .find(|a| !matches!(a.3, Attempt::Accepted))
    );
    assert_stored_exactly_once(&pool, &report, WAIT).await;
    stack.terminate_all().unwrap();
}

/// Our broker SIGKILLed mid-stream and started again on the same port with the same
/// store: meanwhile ingest answers 503 + Retry-After (never 202), the sender retries as
/// a board would, and every reading that got a 202 — before or after — is stored once.
/// (Ours only: a broker without a store — Mosquitto as run here, rumqttd — loses what it
/// had acknowledged and not yet delivered, and the historian's session.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_and_restarted_mid_stream_loses_and_doubles_nothing() {
    broker_restarted_mid_stream(BrokerKind::Ours, "broker-kill", false).await;
}

/// The same on rumqttd: not guaranteed, so not run by default (`--ignored` runs it). It
/// keeps sessions and queues in memory only, so a crash loses whatever it had
/// acknowledged to ingest (a `202`) and not yet delivered, and the historian's session;
/// after the restart a reading acknowledged before the historian has subscribed again
/// goes nowhere. Here the historian is caught up at the kill (20 ms batches) and
/// resubscribes within milliseconds, so the window is small: it passed 6 runs of 6 on a
/// 2-core VM (2026-12-04). The deterministic case is
/// `broker_killed_holding_readings_on_rumqttd_loses_them`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "not guaranteed on rumqttd 0.20.0 (no store): passes only when no reading is in the broker's hands at the kill"]
async fn broker_killed_and_restarted_mid_stream_on_rumqttd_loses_readings() {
    broker_restarted_mid_stream(BrokerKind::Rumqttd, "broker-kill-rq", false).await;
}

/// The same with a graceful stop: SIGTERM, the broker drains and exits 0, then starts
/// again from its store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_terminated_and_restarted_mid_stream_loses_and_doubles_nothing() {
    broker_restarted_mid_stream(BrokerKind::Ours, "broker-term", true).await;
}

async fn broker_restarted_mid_stream(kind: BrokerKind, device: &str, graceful: bool) {
    let Some(builder) = Stack::on(kind) else {
        return;
    };
    let mut stack = builder.readings_only().start().await.expect("stack starts");
    let pool = stack.db.connect().await.unwrap();
    let stream = Stream::start(stack.board_url(device).await.unwrap(), device, 300, 50.0, 4);
    wait_rows(&pool, device, 80, WAIT).await.unwrap();

    if graceful {
        let status = tokio::task::block_in_place(|| stack.broker.terminate()).unwrap();
        assert!(
            stack.broker.stopped_cleanly(status),
            "the broker exits 0 on SIGTERM: {status}\n{}",
            stack.broker.log_text()
        );
    } else {
        stack.broker.kill();
    }
    // Down until ingest has refused a few readings, so the 503 path is exercised.
    let deadline = Instant::now() + WAIT;
    while stream.refusals().len() < 4 {
        assert!(Instant::now() < deadline, "ingest never refused a reading");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::task::block_in_place(|| stack.broker.start_again());

    let report = stream.finish(WAIT).await.unwrap();
    report.assert_all_accepted();
    let refused = report.refused_statuses();
    assert!(!refused.is_empty());
    for (status, retry_after) in &refused {
        assert_eq!(*status, 503, "while the broker is down ingest answers 503");
        assert!(
            retry_after.is_some(),
            "a 503 carries Retry-After: {refused:?}"
        );
    }
    assert_eq!(
        report.no_answers(),
        0,
        "ingest itself stayed up: {:?}",
        report
            .log
            .attempts
            .iter()
            .find(|a| matches!(a.3, Attempt::NoAnswer { .. }))
    );
    assert_stored_exactly_once(&pool, &report, WAIT).await;
    stack.terminate_all().unwrap();
}

/// Our broker SIGKILLed while it holds readings it has acknowledged to ingest but not yet
/// delivered: the historian is down (killed) at that moment, so they can only be in the
/// broker's store for the historian's persistent session. After the broker and then the
/// historian come back, every accepted reading is stored once. (A broker that keeps them
/// in memory only — Mosquitto without `persistence true`, rumqttd 0.20, which has no
/// store — fails this test by design, so it runs on ours only.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_holding_readings_for_an_absent_historian_keeps_them() {
    broker_killed_holding_readings(BrokerKind::Ours).await;
}

/// What rumqttd 0.20.0 does in the same case: it fails (`--ignored` runs it), losing
/// every reading it held for the absent historian — at least the 60 the test waits for
/// (60 and 61 of 300 in two runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fails on rumqttd 0.20.0 by design: no store, the held readings die with the broker"]
async fn broker_killed_holding_readings_on_rumqttd_loses_them() {
    broker_killed_holding_readings(BrokerKind::Rumqttd).await;
}

async fn broker_killed_holding_readings(kind: BrokerKind) {
    let Some(builder) = Stack::on(kind) else {
        return;
    };
    let mut stack = builder.readings_only().start().await.expect("stack starts");
    let pool = stack.db.connect().await.unwrap();
    let stream = Stream::start(
        stack.board_url("broker-held").await.unwrap(),
        "broker-held",
        300,
        50.0,
        4,
    );
    wait_rows(&pool, "broker-held", 50, WAIT).await.unwrap();

    stack.historian_mut().kill().unwrap();
    let n = stream.accepted();
    stream.wait_accepted(n + 60, WAIT).await.unwrap();
    // At least 60 readings are now the broker's alone.
    stack.broker.kill();
    tokio::task::block_in_place(|| stack.broker.start_again());
    stack.historian_mut().restart().unwrap();
    stack.historian().wait_ready("admin").await.unwrap();

    let report = stream.finish(WAIT).await.unwrap();
    report.assert_all_accepted();
    assert_stored_exactly_once(&pool, &report, WAIT).await;
    stack.terminate_all().unwrap();
}

/// Ingest SIGTERMed while requests are in flight: it finishes them (a request whose body
/// is still arriving when the signal comes gets its 202, and is stored); once its
/// listener is closed every new request fails to connect — no 202 for anything that
/// started after that — and once ingest is back on the same port the senders' retries
/// get everything in, each reading once. The senders open a connection per request, as
/// boards and the seed's `client.py` do, so "new" means a new connection. (Any 202 at
/// all is checked by the exactly-once count at the end.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_terminated_with_requests_in_flight_loses_no_accepted_reading() {
    ingest_terminated_with_requests_in_flight(BrokerKind::Ours).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_terminated_with_requests_in_flight_on_mosquitto_loses_no_accepted_reading() {
    ingest_terminated_with_requests_in_flight(BrokerKind::Mosquitto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_terminated_with_requests_in_flight_on_rumqttd_loses_no_accepted_reading() {
    ingest_terminated_with_requests_in_flight(BrokerKind::Rumqttd).await;
}

async fn ingest_terminated_with_requests_in_flight(kind: BrokerKind) {
    let Some(builder) = Stack::on(kind) else {
        return;
    };
    let mut stack = builder.readings_only().start().await.expect("stack starts");
    let pool = stack.db.connect().await.unwrap();
    let http_addr = stack.ingest.addr("http").unwrap();
    let stream = Stream::start_with(
        stack.board_url("ingest-term").await.unwrap(),
        "ingest-term",
        300,
        50.0,
        8,
        Connections::PerRequest,
    );
    wait_rows(&pool, "ingest-term", 80, WAIT).await.unwrap();

    // A request certainly in flight: headers and half the body sent, the rest withheld
    // until ingest has begun shutting down.
    let body = format!(
        r#"{{"device":"ingest-term-slow","seq":0,"ts":{}}}"#,
        chrono::Utc::now().timestamp_millis()
    );
    let (head, tail) = body.split_at(body.len() / 2);
    let token = stack
        .provision("ingest-term-slow", "greenhouse")
        .await
        .unwrap();
    let mut slow = tokio::net::TcpStream::connect(http_addr).await.unwrap();
    slow.write_all(
        format!(
            "POST /api/v1/readings HTTP/1.1\r\nHost: {http_addr}\r\nContent-Type: application/json\r\n\
             Authorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{head}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // Ingest's worker must have the request before the signal, or it would be refused
    // as new: the head is read once the server has it, which the readings flowing
    // through the same server right after show.
    let n = stream.accepted();
    stream.wait_accepted(n + 5, WAIT).await.unwrap();

    stack.ingest.signal_term().unwrap();
    let term_at = Instant::now();
    // Shutdown has begun when the listener refuses new connections.
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(http_addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "ingest still accepts connections after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let closed_at = Instant::now();
    slow.write_all(tail.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(WAIT, slow.read_to_string(&mut answer))
        .await
        .expect("the in-flight request is answered")
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 202"),
        "a request in flight at SIGTERM is finished, not dropped:\n{answer}"
    );
    let status = stack.ingest.wait_exit(WAIT).await.unwrap();
    assert!(
        status.success(),
        "ingest exits 0 after draining: {status}\n{}",
        stack.ingest.log_text()
    );
    let exited_at = Instant::now();
    wait_rows(&pool, "ingest-term-slow", 1, WAIT)
        .await
        .expect("the reading accepted during shutdown is stored");

    // Back on the same port; the senders' retries find it.
    stack.restart_ingest().unwrap();
    stack.ingest.wait_ready("http").await.unwrap();
    let report = stream.finish(WAIT).await.unwrap();
    report.assert_all_accepted();
    // From the closed listener until ingest exited, every new attempt was refused at
    // connect: no 202 (nor any other answer) for a request that started after shutdown
    // had closed the door. Attempts in flight at the signal may end either way.
    let mut refused_new = 0;
    let mut in_flight_accepted = 0;
    for (seq, started, ended, attempt) in &report.log.attempts {
        if *started >= closed_at && *ended < exited_at {
            assert!(
                matches!(attempt, Attempt::NoAnswer { connect: true, .. }),
                "reading {seq}, sent after ingest closed its listener, got {attempt:?}"
            );
            refused_new += 1;
        }
        if *started < term_at && *ended > term_at && matches!(attempt, Attempt::Accepted) {
            in_flight_accepted += 1;
        }
    }
    eprintln!(
        "during shutdown: {refused_new} new attempts refused at connect; {in_flight_accepted} \
         in flight at SIGTERM got their 202"
    );
    assert!(
        refused_new > 0,
        "some attempts started after the listener closed and before ingest exited"
    );
    assert!(
        report.no_answers() > 0,
        "some requests met the stopped ingest"
    );
    assert_stored_exactly_once(&pool, &report, WAIT).await;
    stack.terminate_all().unwrap();
}
