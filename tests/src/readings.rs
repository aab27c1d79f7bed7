//! Counting readings in and out: a paced stream of readings sent to ingest the way a board
//! sends them, and what PostgreSQL holds afterwards.
//!
//! Every reading carries its sequence number as the metric `seq`, so a stored row names
//! the reading it came from. A board with a clock also puts it in its timestamp (`ts` =
//! stream start + `seq` ms), so no two readings share the `(device, metric, ts)` key that
//! makes redelivery idempotent; a board without one ([`Ts::Receiver`]) sends no `ts` and
//! the platform's first hop must give each reading a receive time of its own — two
//! readings stamped alike would hide a loss behind a "duplicate", a redelivery stamped
//! anew would show as a second row of the same `seq`.
//!
//! The sender behaves like a well-written board: a `503`/`429` is retried after its
//! `Retry-After`, a failed connection after 100 ms, until the reading gets its `202`.
//! Only `202`s count as sent.
//!
//! [`Stream::start_tcp`] is the same over ingest's raw TCP line protocol: one board, one
//! connection, `HELLO <device>` and then one line at a time (alternately `seq=N ts=T` and
//! `{"seq":N,"ts":T}`), each waiting for its reply. Only `OK`s count as sent. A retryable
//! `ERR` (`broker_unavailable`, `overloaded`) is retried on the same connection after
//! 200 ms; a line without an answer (connection refused, closed or silent) is re-sent on a
//! new connection after 100 ms; any other `ERR` gives the reading up.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long one reading is retried before the sender gives up on it (a test failure).
const GIVE_UP: Duration = Duration::from_secs(25);

/// How long a TCP board waits for a reply line before it counts the line unanswered
/// (ingest answers within its 5 s MQTT acknowledgement timeout).
const REPLY_TIMEOUT: Duration = Duration::from_secs(8);

/// The `ERR` codes a board retries: the reading was fine, ingest could not pass it on.
pub const RETRYABLE_ERR: [&str; 2] = ["broker_unavailable", "overloaded"];

/// One answer (or the lack of one) to one attempt at sending a reading.
#[derive(Debug, Clone)]
pub enum Attempt {
    /// `202` (HTTP) or `OK` (TCP): ingest says the broker has it.
    Accepted,
    /// TCP: an `ERR …` reply line (the whole line).
    Erred { reply: String },
    /// Any other status, with its `Retry-After` header if it had one.
    Refused {
        status: u16,
        retry_after: Option<String>,
    },
    /// No answer: the connection could not be made, or broke before the response.
    NoAnswer { connect: bool, error: String },
}

/// What happened to every attempt, in the order they completed.
#[derive(Debug, Default)]
pub struct Log {
    /// `(seq, when the attempt started, when it ended, outcome)`.
    pub attempts: Vec<(u64, Instant, Instant, Attempt)>,
}

/// A stream of `count` readings for `device`, `rate` per second, sent to `url`
/// (`…/api/v1/readings`) by `workers` concurrent senders.
pub struct Stream {
    pub device: String,
    pub count: u64,
    pub(crate) accepted: Arc<AtomicUsize>,
    /// TCP: 1 while the board's current line has been sent and awaits its reply.
    pub(crate) waiting: Arc<AtomicUsize>,
    pub(crate) log: Arc<Mutex<Log>>,
    pub(crate) url: Arc<Mutex<String>>,
    pub(crate) tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The stream's result once every sender has finished.
#[derive(Debug)]
pub struct Report {
    pub device: String,
    pub count: u64,
    /// Sequence numbers that got a `202`.
    pub accepted: BTreeSet<u64>,
    pub log: Log,
}

/// Who gives a reading its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ts {
    /// The board sends `ts`.
    Board,
    /// The board sends none: the first hop stamps its receive time.
    Receiver,
}

/// How the HTTP senders use connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connections {
    /// Keep-alive: each sender reuses its connection, as an HTTP library does by default.
    KeepAlive,
    /// A new connection for every attempt, as the seed's `client.py` (`requests.post`
    /// without a session) and most boards do; so an attempt can tell "refused" (nothing
    /// listens) from "answered".
    PerRequest,
}

impl Stream {
    pub fn start(url: String, device: &str, count: u64, rate: f64, workers: usize) -> Stream {
        Self::start_with(url, device, count, rate, workers, Connections::KeepAlive)
    }

    /// [`Stream::start`] with a choice of connection handling.
    pub fn start_with(
        url: String,
        device: &str,
        count: u64,
        rate: f64,
        workers: usize,
        connections: Connections,
    ) -> Stream {
        Self::start_http(url, device, count, rate, workers, connections, Ts::Board)
    }

    /// [`Stream::start`] by a board without a clock: no `ts` in any reading.
    pub fn start_without_ts(
        url: String,
        device: &str,
        count: u64,
        rate: f64,
        workers: usize,
    ) -> Stream {
        Self::start_http(
            url,
            device,
            count,
            rate,
            workers,
            Connections::KeepAlive,
            Ts::Receiver,
        )
    }

    fn start_http(
        url: String,
        device: &str,
        count: u64,
        rate: f64,
        workers: usize,
        connections: Connections,
        stamp: Ts,
    ) -> Stream {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
        if connections == Connections::PerRequest {
            builder = builder.pool_max_idle_per_host(0);
        }
        let http = builder.build().expect("reqwest client");
        let accepted = Arc::new(AtomicUsize::new(0));
        let log = Arc::new(Mutex::new(Log::default()));
        let url = Arc::new(Mutex::new(url));
        let next = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let base_ms = chrono::Utc::now().timestamp_millis();
        let tasks = (0..workers.max(1))
            .map(|_| {
                let (http, accepted, log, url, next) = (
                    http.clone(),
                    accepted.clone(),
                    log.clone(),
                    url.clone(),
                    next.clone(),
                );
                let device = device.to_owned();
                tokio::spawn(async move {
                    loop {
                        let seq = next.fetch_add(1, Ordering::Relaxed) as u64;
                        if seq >= count {
                            return;
                        }
                        // A steady pace: reading `seq` is due `seq / rate` after the start.
                        tokio::time::sleep_until(t0 + Duration::from_secs_f64(seq as f64 / rate))
                            .await;
                        let body = match stamp {
                            Ts::Board => {
                                json!({"device": device, "seq": seq, "ts": base_ms + seq as i64})
                            }
                            Ts::Receiver => json!({"device": device, "seq": seq}),
                        };
                        let give_up = Instant::now() + GIVE_UP;
                        while Instant::now() < give_up {
                            let target = url.lock().unwrap().clone();
                            let started = Instant::now();
                            let attempt = send(&http, &target, &body).await;
                            let retry_in = match &attempt {
                                Attempt::Accepted => None,
                                Attempt::Refused { retry_after, .. } => Some(
                                    retry_after
                                        .as_deref()
                                        .and_then(|s| s.parse::<u64>().ok())
                                        .map_or(Duration::from_millis(200), Duration::from_secs),
                                ),
                                Attempt::NoAnswer { .. } => Some(Duration::from_millis(100)),
                                // Only TCP answers `ERR`.
                                Attempt::Erred { .. } => Some(Duration::from_millis(200)),
                            };
                            log.lock().unwrap().attempts.push((
                                seq,
                                started,
                                Instant::now(),
                                attempt,
                            ));
                            match retry_in {
                                None => {
                                    accepted.fetch_add(1, Ordering::Relaxed);
                                    break;
                                }
                                Some(d) => tokio::time::sleep(d).await,
                            }
                        }
                    }
                })
            })
            .collect();
        Stream {
            device: device.to_owned(),
            count,
            accepted,
            waiting: Arc::default(),
            log,
            url,
            tasks,
        }
    }

    /// One TCP board: `count` readings for `device`, `rate` per second, over one
    /// connection at a time to `addr` (`host:port` of ingest's TCP listener; see the
    /// module docs for the board's rules). Each connection starts with
    /// `HELLO <device> <token>`.
    pub fn start_tcp(addr: String, device: &str, token: &str, count: u64, rate: f64) -> Stream {
        Self::start_tcp_with(addr, device, token, count, rate, Ts::Board)
    }

    /// [`Stream::start_tcp`] with a choice of who stamps the readings.
    pub fn start_tcp_with(
        addr: String,
        device: &str,
        token: &str,
        count: u64,
        rate: f64,
        stamp: Ts,
    ) -> Stream {
        let accepted = Arc::new(AtomicUsize::new(0));
        let waiting = Arc::new(AtomicUsize::new(0));
        let log = Arc::new(Mutex::new(Log::default()));
        let addr = Arc::new(Mutex::new(addr));
        let t0 = Instant::now();
        let base_ms = chrono::Utc::now().timestamp_millis();
        let task = {
            let (accepted, waiting, log, addr) =
                (accepted.clone(), waiting.clone(), log.clone(), addr.clone());
            let hello = format!("HELLO {device} {token}");
            tokio::spawn(async move {
                let mut conn: Option<BufReader<TcpStream>> = None;
                for seq in 0..count {
                    tokio::time::sleep_until(t0 + Duration::from_secs_f64(seq as f64 / rate)).await;
                    let ts = base_ms + seq as i64;
                    // Both line forms a board may use, each bound to the HELLO device.
                    let line = match (seq % 2 == 0, stamp) {
                        (true, Ts::Board) => format!("seq={seq} ts={ts}"),
                        (false, Ts::Board) => json!({"seq": seq, "ts": ts}).to_string(),
                        (true, Ts::Receiver) => format!("seq={seq}"),
                        (false, Ts::Receiver) => json!({"seq": seq}).to_string(),
                    };
                    let give_up = Instant::now() + GIVE_UP;
                    while Instant::now() < give_up {
                        let target = addr.lock().unwrap().clone();
                        let started = Instant::now();
                        let attempt = send_line(&mut conn, &target, &hello, &line, &waiting).await;
                        let retry_in = match &attempt {
                            Attempt::Accepted => None,
                            Attempt::Erred { reply } if is_retryable(reply) => {
                                Some(Duration::from_millis(200))
                            }
                            Attempt::NoAnswer { .. } => Some(Duration::from_millis(100)),
                            // A refusal of the reading itself: retrying cannot help.
                            _ => Some(Duration::ZERO),
                        };
                        log.lock()
                            .unwrap()
                            .attempts
                            .push((seq, started, Instant::now(), attempt));
                        match retry_in {
                            None => {
                                accepted.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Some(Duration::ZERO) => break,
                            Some(d) => tokio::time::sleep(d).await,
                        }
                    }
                }
            })
        };
        Stream {
            device: device.to_owned(),
            count,
            accepted,
            waiting,
            log,
            url: addr,
            tasks: vec![task],
        }
    }

    /// TCP: true while the board's current reading line has been sent and has no reply
    /// yet (e.g. ingest waits for the broker's PUBACK).
    pub fn waiting(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }

    /// The sequence numbers accepted so far.
    pub fn accepted_seqs(&self) -> BTreeSet<u64> {
        self.log
            .lock()
            .unwrap()
            .attempts
            .iter()
            .filter(|(_, _, _, a)| matches!(a, Attempt::Accepted))
            .map(|(s, _, _, _)| *s)
            .collect()
    }

    /// Readings that have had their `202` so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` readings have had their `202`.
    pub async fn wait_accepted(&self, n: usize, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while self.accepted() < n {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {n} readings accepted within {limit:?}",
                    self.accepted()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Points later attempts at another ingest (a URL, or `host:port` for TCP).
    pub fn set_url(&self, url: String) {
        *self.url.lock().unwrap() = url;
    }

    /// Every attempt so far whose answer was not a `202`.
    pub fn refusals(&self) -> Vec<(u64, Attempt)> {
        self.log
            .lock()
            .unwrap()
            .attempts
            .iter()
            .filter(|(_, _, _, a)| !matches!(a, Attempt::Accepted))
            .map(|(s, _, _, a)| (*s, a.clone()))
            .collect()
    }

    /// Waits for every sender to finish (each reading accepted or given up on).
    pub async fn finish(self, limit: Duration) -> anyhow::Result<Report> {
        let all = futures_util::future::join_all(self.tasks);
        let results = tokio::time::timeout(limit, all)
            .await
            .with_context(|| format!("the stream did not finish within {limit:?}"))?;
        for r in results {
            r.context("a sender panicked")?;
        }
        let log = std::mem::take(&mut *self.log.lock().unwrap());
        let accepted = log
            .attempts
            .iter()
            .filter(|(_, _, _, a)| matches!(a, Attempt::Accepted))
            .map(|(s, _, _, _)| *s)
            .collect();
        Ok(Report {
            device: self.device,
            count: self.count,
            accepted,
            log,
        })
    }
}

impl Report {
    /// Fails unless every reading of the stream got its `202`.
    pub fn assert_all_accepted(&self) {
        let missing: Vec<u64> = (0..self.count)
            .filter(|s| !self.accepted.contains(s))
            .collect();
        assert!(
            missing.is_empty(),
            "{} of {} readings never got a 202/OK (sender gave up after {GIVE_UP:?} or on a \
             final refusal): {}; the first one's last attempt: {:?}",
            missing.len(),
            self.count,
            summarize(&missing),
            missing.first().and_then(|m| self
                .log
                .attempts
                .iter()
                .rev()
                .find(|(s, _, _, _)| s == m))
        );
    }

    /// How many attempts ended with each non-202 kind: (refused by status, no answer).
    pub fn refused_statuses(&self) -> Vec<(u16, Option<String>)> {
        self.log
            .attempts
            .iter()
            .filter_map(|(_, _, _, a)| match a {
                Attempt::Refused {
                    status,
                    retry_after,
                } => Some((*status, retry_after.clone())),
                _ => None,
            })
            .collect()
    }

    /// Every TCP `ERR …` reply line, in order.
    pub fn err_replies(&self) -> Vec<String> {
        self.log
            .attempts
            .iter()
            .filter_map(|(_, _, _, a)| match a {
                Attempt::Erred { reply } => Some(reply.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn no_answers(&self) -> usize {
        self.log
            .attempts
            .iter()
            .filter(|(_, _, _, a)| matches!(a, Attempt::NoAnswer { .. }))
            .count()
    }
}

async fn send(http: &reqwest::Client, url: &str, body: &serde_json::Value) -> Attempt {
    match http.post(url).json(body).send().await {
        Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED => {
            // Read the body, so the connection goes back to the pool in a clean state.
            let _ = r.bytes().await;
            Attempt::Accepted
        }
        Ok(r) => {
            let status = r.status().as_u16();
            let retry_after = r
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let _ = r.bytes().await;
            Attempt::Refused {
                status,
                retry_after,
            }
        }
        Err(e) => Attempt::NoAnswer {
            connect: e.is_connect(),
            error: format!("{e:#}"),
        },
    }
}

/// True for `ERR <code> …` with a code in [`RETRYABLE_ERR`].
pub fn is_retryable(reply: &str) -> bool {
    reply
        .strip_prefix("ERR ")
        .and_then(|rest| rest.split_whitespace().next())
        .is_some_and(|code| RETRYABLE_ERR.contains(&code))
}

/// One attempt at one line: connects and says `hello` first if `conn` is `None`; leaves
/// `conn` `None` whenever the connection can no longer be trusted to answer in order.
async fn send_line(
    conn: &mut Option<BufReader<TcpStream>>,
    addr: &str,
    hello: &str,
    line: &str,
    waiting: &AtomicUsize,
) -> Attempt {
    if conn.is_none() {
        let stream =
            match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    return Attempt::NoAnswer {
                        connect: true,
                        error: e.to_string(),
                    };
                }
                Err(_) => {
                    return Attempt::NoAnswer {
                        connect: true,
                        error: "connect timed out".into(),
                    };
                }
            };
        let mut c = BufReader::new(stream);
        match request(&mut c, hello).await {
            Ok(reply) if reply == "OK" => *conn = Some(c),
            Ok(reply) => {
                return Attempt::Erred {
                    reply: format!("{reply} (to HELLO)"),
                };
            }
            Err(error) => {
                return Attempt::NoAnswer {
                    connect: true,
                    error: format!("HELLO: {error}"),
                };
            }
        }
    }
    let c = conn.as_mut().expect("connected above");
    waiting.store(1, Ordering::Relaxed);
    let reply = request(c, line).await;
    waiting.store(0, Ordering::Relaxed);
    match reply {
        Ok(reply) if reply == "OK" => Attempt::Accepted,
        Ok(reply) => {
            if !is_retryable(&reply) {
                *conn = None;
            }
            Attempt::Erred { reply }
        }
        Err(error) => {
            *conn = None;
            Attempt::NoAnswer {
                connect: false,
                error,
            }
        }
    }
}

/// Writes one line and reads its one reply line (without the newline).
async fn request(conn: &mut BufReader<TcpStream>, line: &str) -> Result<String, String> {
    conn.get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut reply = String::new();
    match tokio::time::timeout(REPLY_TIMEOUT, conn.read_line(&mut reply)).await {
        Err(_) => Err(format!("no reply within {REPLY_TIMEOUT:?}")),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Ok(Ok(0)) => Err("closed without a reply".into()),
        Ok(Ok(_)) if !reply.ends_with('\n') => Err(format!("closed mid-reply: {reply:?}")),
        Ok(Ok(_)) => Ok(reply.trim_end().to_owned()),
    }
}

/// What PostgreSQL holds for one stream's device.
#[derive(Debug, PartialEq, Eq)]
pub struct Stored {
    /// Raw rows of the metric `seq`.
    pub rows: i64,
    /// Their distinct sequence numbers.
    pub seqs: BTreeSet<u64>,
    /// The hourly rollup's count for the metric: it must equal `rows`, or a redelivery
    /// was counted twice there.
    pub rollup_count: i64,
}

pub async fn stored(pool: &PgPool, device: &str) -> anyhow::Result<Stored> {
    let values: Vec<f64> =
        sqlx::query_scalar("SELECT value FROM readings WHERE device = $1 AND metric = 'seq'")
            .bind(device)
            .fetch_all(pool)
            .await?;
    let rollup_count: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(count), 0)::bigint FROM readings_hourly
         WHERE device = $1 AND metric = 'seq'",
    )
    .bind(device)
    .fetch_one(pool)
    .await?;
    Ok(Stored {
        rows: values.len() as i64,
        seqs: values.iter().map(|v| *v as u64).collect(),
        rollup_count,
    })
}

/// Waits until at least `n` rows of `device`'s stream are stored.
pub async fn wait_rows(
    pool: &PgPool,
    device: &str,
    n: usize,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let rows: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM readings WHERE device = $1 AND metric = 'seq'",
        )
        .bind(device)
        .fetch_one(pool)
        .await?;
        if rows as usize >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {rows} of {n} readings of {device} stored within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The heart of every fault test: waits (up to `limit`) until PostgreSQL holds as many
/// readings as were accepted, then checks they are exactly the accepted ones — none
/// lost, none stored twice (raw rows and rollup), none stored that was never accepted.
pub async fn assert_stored_exactly_once(pool: &PgPool, report: &Report, limit: Duration) -> Stored {
    let n = report.accepted.len();
    let waited = wait_rows(pool, &report.device, n, limit).await;
    let s = stored(pool, &report.device).await.expect("query readings");
    let lost: Vec<u64> = report.accepted.difference(&s.seqs).copied().collect();
    let unasked: Vec<u64> = s.seqs.difference(&report.accepted).copied().collect();
    assert!(
        lost.is_empty(),
        "{} of {n} accepted readings were never stored ({}): {}",
        lost.len(),
        waited.err().map(|e| e.to_string()).unwrap_or_default(),
        summarize(&lost)
    );
    assert!(
        unasked.is_empty(),
        "stored readings that never got a 202/OK: {}",
        summarize(&unasked)
    );
    assert_eq!(
        s.rows as usize, n,
        "raw rows {} != accepted readings {n}",
        s.rows
    );
    assert_eq!(
        s.rollup_count, s.rows,
        "the hourly rollup counts {} readings but {} are stored: some were counted twice",
        s.rollup_count, s.rows
    );
    s
}

/// `0-9, 15, 40-41` for a sorted list of sequence numbers.
fn summarize(seqs: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < seqs.len() {
        let mut j = i;
        while j + 1 < seqs.len() && seqs[j + 1] == seqs[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            seqs[i].to_string()
        } else {
            format!("{}-{}", seqs[i], seqs[j])
        });
        i = j + 1;
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn summarize_collapses_runs() {
        assert_eq!(super::summarize(&[0, 1, 2, 5, 7, 8]), "0-2, 5, 7-8");
        assert_eq!(super::summarize(&[]), "");
    }

    #[test]
    fn only_pass_on_failures_are_retryable() {
        assert!(super::is_retryable(
            "ERR broker_unavailable not connected to the MQTT broker"
        ));
        assert!(super::is_retryable("ERR overloaded too many"));
        assert!(!super::is_retryable("ERR out_of_range seq"));
        assert!(!super::is_retryable("OK"));
    }
}
