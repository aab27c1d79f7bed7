//! The TCP line protocol's promise under faults: an `OK` line means the reading will be in
//! PostgreSQL, even if the broker, the historian or ingest itself restarts meanwhile.
//!
//! Each test runs a few boards ([`Stream::start_tcp`]): each says `HELLO <device>`, sends
//! one reading line at a time and waits for its reply, re-sends a line that got
//! `ERR broker_unavailable` / `ERR overloaded` or no answer at all (reconnecting when the
//! connection dropped), and gives a reading up on any other `ERR`. One part of the path is
//! broken and mended mid-stream; at the end PostgreSQL must hold exactly the readings that
//! got `OK`, each once (see `lentera_tests::readings`).

use std::collections::BTreeSet;
use std::time::Duration;

use lentera_tests::Stack;
use lentera_tests::readings::{
    Attempt, Report, Stream, assert_stored_exactly_once, is_retryable, stored, wait_rows,
};
use tokio::time::Instant;

/// Longest wait for anything the tests wait on.
const WAIT: Duration = Duration::from_secs(20);
/// Boards per test, each its own device and connection.
const BOARDS: usize = 3;
/// Readings per board and their pace: 5 s of readings.
const COUNT: u64 = 200;
const RATE: f64 = 40.0;

/// `BOARDS` boards named `{prefix}-0`, … streaming to the stack's ingest over TCP.
fn boards(stack: &Stack, prefix: &str) -> Vec<Stream> {
    let addr = stack.ingest.addr("tcp").expect("ingest's TCP address");
    (0..BOARDS)
        .map(|i| Stream::start_tcp(addr.to_string(), &format!("{prefix}-{i}"), COUNT, RATE))
        .collect()
}

fn accepted(boards: &[Stream]) -> usize {
    boards.iter().map(Stream::accepted).sum()
}

/// Waits until the boards together have had `n` more `OK`s than now.
async fn wait_more_accepted(boards: &[Stream], n: usize) {
    let target = accepted(boards) + n;
    let deadline = Instant::now() + WAIT;
    while accepted(boards) < target {
        assert!(
            Instant::now() < deadline,
            "the boards got only {} of {target} OKs within {WAIT:?}",
            accepted(boards)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every board has had at least one attempt for which `met` holds (an
/// `ERR`, a refused connection, …): every board has met the fault.
async fn wait_every_board_met(boards: &[Stream], met: impl Fn(&Attempt) -> bool) {
    let deadline = Instant::now() + WAIT;
    let counts = || -> Vec<usize> {
        boards
            .iter()
            .map(|b| b.refusals().iter().filter(|(_, a)| met(a)).count())
            .collect()
    };
    while counts().contains(&0) {
        assert!(
            Instant::now() < deadline,
            "not every board met the fault within {WAIT:?}: {:?}",
            counts()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn finish(boards: Vec<Stream>) -> Vec<Report> {
    let mut reports = Vec::new();
    for b in boards {
        let report = b.finish(WAIT).await.expect("the board finishes");
        report.assert_all_accepted();
        reports.push(report);
    }
    reports
}

/// The first attempt of any board for which `bad` holds, for a failure message.
fn first_where(reports: &[Report], bad: impl Fn(&Attempt) -> bool) -> Option<(String, Attempt)> {
    reports.iter().find_map(|r| {
        r.log
            .attempts
            .iter()
            .find(|a| bad(&a.3))
            .map(|a| (r.device.clone(), a.3.clone()))
    })
}

/// Our broker SIGKILLed mid-stream and started again on the same port with its store:
/// meanwhile ingest keeps the boards' connections and answers their lines
/// `ERR broker_unavailable …` (never `OK`), the boards re-send, and every line that got
/// `OK` — before, during or after — is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_mid_tcp_stream_every_ok_is_stored_once() {
    let mut stack = Stack::builder()
        .readings_only()
        .start()
        .await
        .expect("stack starts");
    let pool = stack.db.connect().await.unwrap();
    let boards = boards(&stack, "tcp-broker-kill");
    wait_rows(&pool, "tcp-broker-kill-0", 40, WAIT)
        .await
        .unwrap();

    stack.broker.kill();
    wait_every_board_met(&boards, |a| matches!(a, Attempt::Erred { .. })).await;
    tokio::task::block_in_place(|| stack.broker.start_again());

    let reports = finish(boards).await;
    let errs: Vec<String> = reports.iter().flat_map(Report::err_replies).collect();
    assert!(!errs.is_empty(), "the boards met the stopped broker");
    for reply in &errs {
        assert!(
            reply.starts_with("ERR broker_unavailable "),
            "while the broker is down ingest answers ERR broker_unavailable: {reply:?}"
        );
    }
    let first = first_where(&reports, |a| matches!(a, Attempt::NoAnswer { .. }));
    assert!(
        first.is_none(),
        "ingest kept every board's connection and answered every line: {first:?}"
    );
    for report in &reports {
        assert_stored_exactly_once(&pool, report, WAIT).await;
    }
    stack.terminate_all().unwrap();
}

/// The historian SIGKILLed mid-stream with a half-second batch in hand, neither committed
/// nor acknowledged, and started again once 60 more lines got `OK`: the boards never
/// notice (every line gets `OK` first time), and the broker's copy of the historian's
/// persistent session gets every reading stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn historian_killed_mid_tcp_stream_every_ok_is_stored_once() {
    let mut stack = Stack::builder()
        .env("historian", "LENTERA_HISTORIAN__BATCH_INTERVAL_MS", "500")
        .readings_only()
        .start()
        .await
        .expect("stack starts");
    let pool = stack.db.connect().await.unwrap();
    let boards = boards(&stack, "tcp-hist-kill");
    wait_rows(&pool, "tcp-hist-kill-0", 40, WAIT).await.unwrap();
    // A batch was just committed; a quarter second later the next one is in hand.
    wait_more_accepted(&boards, 25).await;

    stack.historian_mut().kill().unwrap();
    wait_more_accepted(&boards, 60).await;
    stack.historian_mut().restart().unwrap();
    stack.historian().wait_ready("admin").await.unwrap();

    let reports = finish(boards).await;
    let first = first_where(&reports, |a| !matches!(a, Attempt::Accepted));
    assert!(
        first.is_none(),
        "ingest answered every line OK while only the historian was down: {first:?}"
    );
    for report in &reports {
        assert_stored_exactly_once(&pool, report, WAIT).await;
    }
    stack.terminate_all().unwrap();
}

/// Ingest SIGTERMed mid-stream, with every board's line in flight (waiting for the
/// PUBACK of a briefly frozen broker): it stops listening, answers each of those lines
/// `OK` once the broker acknowledges, closes the connections and exits 0; every `OK` it gave is stored before it is
/// started again. Back on the same port, the boards reconnect, re-send the lines that got
/// no answer, and in the end every `OK` is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_terminated_mid_tcp_stream_every_ok_it_gave_is_stored_once() {
    let mut stack = Stack::builder()
        .readings_only()
        .start()
        .await
        .expect("stack starts");
    let pool = stack.db.connect().await.unwrap();
    let boards = boards(&stack, "tcp-ingest-term");
    wait_rows(&pool, "tcp-ingest-term-0", 40, WAIT)
        .await
        .unwrap();

    // Lines in flight at the signal: the broker frozen, so each board's next line waits
    // in ingest for its PUBACK.
    let broker = stack.broker.service().expect("our broker runs");
    broker.signal("STOP").unwrap();
    let deadline = Instant::now() + WAIT;
    while !boards.iter().all(Stream::waiting) {
        assert!(Instant::now() < deadline, "the boards' lines were answered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stack.ingest.signal_term().unwrap();
    let term_at = Instant::now();
    // Shutdown has begun when the listener refuses new connections; the lines in flight
    // keep ingest running until the thawed broker acknowledges them.
    let tcp_addr = stack.ingest.addr("tcp").unwrap();
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(tcp_addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "ingest still accepts connections after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        stack.ingest.is_running(),
        "ingest waits for the lines in flight:\n{}",
        stack.ingest.log_text()
    );
    stack.broker.service().unwrap().signal("CONT").unwrap();
    let status = stack.ingest.wait_exit(WAIT).await.unwrap();
    assert!(
        status.success(),
        "ingest exits 0 after draining: {status}\n{}",
        stack.ingest.log_text()
    );
    // Everything ingest said OK to is now the broker's and the historian's job.
    let oks: Vec<BTreeSet<u64>> = boards.iter().map(Stream::accepted_seqs).collect();
    // Every board finds its connection closed and new ones refused.
    wait_every_board_met(&boards, |a| {
        matches!(a, Attempt::NoAnswer { connect: true, .. })
    })
    .await;
    let deadline = Instant::now() + WAIT;
    for (board, oks) in boards.iter().zip(&oks) {
        loop {
            let s = stored(&pool, &board.device).await.unwrap();
            let lost: Vec<&u64> = oks.difference(&s.seqs).collect();
            if lost.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {} readings that the stopped ingest said OK to are not stored: {lost:?}",
                board.device,
                lost.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let restarted_at = Instant::now();
    stack.restart_ingest().unwrap();
    stack.ingest.wait_ready("http").await.unwrap();
    let reports = finish(boards).await;
    // Until the new ingest's MQTT client is connected it answers `ERR broker_unavailable`
    // (a board retries that); the stopping one never refuses a line, it closes.
    let first = first_where(
        &reports,
        |a| matches!(a, Attempt::Erred { reply } if !is_retryable(reply)),
    );
    assert!(first.is_none(), "only retryable ERRs: {first:?}");
    for report in &reports {
        let refused = report.log.attempts.iter().find(|(_, started, _, a)| {
            *started < restarted_at && matches!(a, Attempt::Erred { .. })
        });
        assert!(
            refused.is_none(),
            "a stopping ingest closes connections instead of refusing lines: {refused:?}"
        );
    }
    for report in &reports {
        assert!(
            report.log.attempts.iter().any(|(_, started, ended, a)| {
                *started < term_at && *ended > term_at && matches!(a, Attempt::Accepted)
            }),
            "{}'s line in flight at SIGTERM was answered OK, not dropped",
            report.device
        );
        assert_stored_exactly_once(&pool, report, WAIT).await;
    }
    stack.terminate_all().unwrap();
}
