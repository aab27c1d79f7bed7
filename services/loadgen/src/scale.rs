//! `scale` mode: how a broker behaves with many devices connected (issue 14).
//!
//! One run against one broker with `--idle N` idle sessions, each looking like a board:
//! its own client id, an exact and a wildcard QoS 1 subscription under
//! `lentera/<id>/…`, and nothing else. With the idle sessions in place it measures,
//! one phase after the other:
//!
//! 1. **connect**: how fast the N sessions were established (CONNECT → CONNACK →
//!    SUBSCRIBE → SUBACK), and with `--pid` the broker's `VmRSS` before and after,
//!    i.e. memory per session;
//! 2. **throughput**: one publisher, one subscriber, QoS 0, as fast as the broker takes
//!    it; only what arrives is counted;
//! 3. **fan-out**: one publisher to a topic with `--fanout` (1,000) subscribers,
//!    deliveries per second;
//! 4. **latency**: one publisher → one subscriber at a fixed offered rate (`--rate`,
//!    10,000 msg/s), each message stamped with the time it was *due*, so a broker that
//!    falls behind is charged for the backlog;
//! 5. **storm**: a steady 1→1 stream (`--storm-rate`) runs while every live idle
//!    session is closed at once (the processes holding them are killed); the time
//!    until the broker's connection count is back to its baseline (`--metrics-url`
//!    for Lentera's `/metrics`, `--sys-topic` for Mosquitto's `$SYS`), and the longest
//!    gap in the steady stream meanwhile.
//!
//! The idle sessions are raw sockets with hand-written CONNECT and SUBSCRIBE packets,
//! held by child processes (`scale-idle`, this same binary) of at most
//! `--per-process` sessions each: a child's exit closes all its sockets at once, and
//! each process stays under the open-files limit. They bind to source addresses
//! 127.0.0.2, 127.0.0.3, … (`--source-ips`) so the ephemeral ports of one address do
//! not run out. Beyond `--live-max` live sessions (a file descriptor each, in the
//! broker too), the remaining `N - live-max` are *persistent* sessions: connected with
//! clean_session=0, subscribed, disconnected; the broker keeps them and their
//! subscriptions, and routes past them like past a connected one.
//!
//! Every step has a timeout: a broker that stops answering is reported as stalled in
//! that phase, and the run goes on with the next one.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::payload;
use crate::stats::{Percentiles, open_files_limit, rss_kib};

/// CONNACK, SUBACK and the TCP connect itself must each come within this.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Latency samples kept per run.
const MAX_SAMPLES: usize = 5_000_000;
/// Messages a publisher may be ahead of its first subscriber (1→1 and the paced
/// streams; half a second at 10,000 msg/s), and publishes ahead in the fan-out (each
/// 1,000 deliveries).
const WINDOW: u64 = 5_000;
const FANOUT_WINDOW: u64 = 200;
/// How old a `$SYS` count may be and still hold: `sys_interval` (1 s) and a margin.
const SYS_STALE_US: u64 = 1_600_000;
/// Keep-alive of the measuring clients: longer than any phase, so they need no pings.
const MEASURE_KEEPALIVE: u16 = 300;
/// Send buffer of the measuring publishers: small, so that what a slow broker has not
/// read yet when a phase ends (and then still reads) stays small.
const PUBLISH_SNDBUF: u32 = 64 * 1024;

#[derive(Debug, Clone)]
pub struct ScaleConfig {
    pub host: String,
    pub port: u16,
    /// Idle sessions in total.
    pub idle: usize,
    /// Live (connected) idle sessions at most; the rest are persistent and offline.
    pub live_max: usize,
    /// Live idle sessions per `scale-idle` process.
    pub per_process: usize,
    /// Session set-ups in flight at once, over all processes. The default, 64, stays
    /// below Mosquitto's listen backlog (100): beyond it SYNs are dropped and retried a
    /// second later, and the connect rate measures TCP's retransmission timer.
    pub concurrency: usize,
    /// Source addresses 127.0.0.2 … for the idle sessions (0: let the kernel choose).
    pub source_ips: u32,
    pub keepalive_secs: u16,
    /// The idle sessions' subscriptions: a board's, or wildcard-first ones.
    pub filters: Filters,
    /// Length of the throughput, fan-out and latency phases.
    pub duration: Duration,
    pub fanout: usize,
    /// Offered rate of the latency phase, msg/s.
    pub rate: f64,
    /// Rate of the steady stream during the disconnect storm, msg/s: low (100), so it
    /// stays within what a struggling broker routes and a gap is the storm's doing.
    pub storm_rate: f64,
    /// How long to wait for the connection count to come back after the storm.
    pub storm_timeout: Duration,
    pub size: usize,
    /// The broker's process id, to read its memory.
    pub pid: Option<u32>,
    /// Lentera: the admin `/metrics` URL and the connections gauge in it.
    pub metrics_url: Option<String>,
    pub gauge: String,
    /// Mosquitto: the `$SYS` topic carrying the number of connected clients.
    pub sys_topic: Option<String>,
    /// A name for the broker in the report.
    pub label: String,
}

impl ScaleConfig {
    pub fn new(host: &str, port: u16) -> Self {
        ScaleConfig {
            host: host.to_owned(),
            port,
            idle: 1000,
            live_max: 15_000,
            per_process: 8_000,
            concurrency: 64,
            source_ips: 50,
            keepalive_secs: 60,
            filters: Filters::Board,
            duration: Duration::from_secs(5),
            fanout: 1000,
            rate: 10_000.0,
            storm_rate: 100.0,
            storm_timeout: Duration::from_secs(30),
            size: 64,
            pid: None,
            metrics_url: None,
            gauge: "lentera_broker_connections".to_owned(),
            sys_topic: None,
            label: "broker".to_owned(),
        }
    }

    fn live(&self) -> usize {
        self.idle.min(self.live_max)
    }
}

/// Where the idle sessions connect to, and from which source addresses.
#[derive(Debug, Clone, Copy)]
struct Target {
    addr: SocketAddr,
    source_ips: u32,
}

impl Target {
    async fn resolve(host: &str, port: u16, source_ips: u32) -> anyhow::Result<Target> {
        let addr = tokio::net::lookup_host((host, port))
            .await?
            .next()
            .with_context(|| format!("{host}:{port} does not resolve"))?;
        Ok(Target { addr, source_ips })
    }

    /// Source address of idle session `i`: 127.0.0.2 + i mod `source_ips`, when the
    /// broker is on an IPv4 loopback address (all of 127/8 is local).
    fn source(&self, i: usize) -> Option<SocketAddr> {
        let loopback = matches!(self.addr.ip(), IpAddr::V4(ip) if ip.is_loopback());
        (loopback && self.source_ips > 0).then(|| {
            let n = 2 + (i as u32 % self.source_ips);
            SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x7f00_0000 + n)), 0)
        })
    }
}

// ---------------------------------------------------------------------------------
// MQTT 3.1.1 on raw sockets: just the packets this mode needs.

fn put_len(p: &mut Vec<u8>, mut len: usize) {
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        p.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
}

fn put_str(p: &mut Vec<u8>, s: &str) {
    p.extend_from_slice(&(s.len() as u16).to_be_bytes());
    p.extend_from_slice(s.as_bytes());
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(body.len() + 5);
    p.push(first);
    put_len(&mut p, body.len());
    p.extend_from_slice(body);
    p
}

fn connect_packet(client_id: &str, keepalive: u16, clean: bool) -> Vec<u8> {
    let mut body = vec![
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        4,
        if clean { 0x02 } else { 0 },
    ];
    body.extend_from_slice(&keepalive.to_be_bytes());
    put_str(&mut body, client_id);
    packet(0x10, &body)
}

fn subscribe_packet(packet_id: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    for (filter, qos) in filters {
        put_str(&mut body, filter);
        body.push(*qos);
    }
    packet(0x82, &body)
}

fn put_publish_qos0(p: &mut Vec<u8>, topic: &str, payload_len: usize) {
    p.push(0x30);
    put_len(p, 2 + topic.len() + payload_len);
    put_str(p, topic);
}

const DISCONNECT: [u8; 2] = [0xE0, 0];
const PINGREQ: [u8; 2] = [0xC0, 0];

/// One complete packet at the start of `buf`: (first byte, body start, body end).
fn parse(buf: &[u8]) -> std::io::Result<Option<(u8, usize, usize)>> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            let start = 2 + i;
            return Ok((buf.len() >= start + len).then_some((first, start, start + len)));
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "remaining length longer than 4 bytes",
    ))
}

/// A PUBLISH body: (QoS 1/2 packet id, payload).
fn publish_parts(first: u8, body: &[u8]) -> Option<(Option<u16>, &[u8])> {
    let topic_len = u16::from_be_bytes(body.get(0..2)?.try_into().ok()?) as usize;
    let mut at = 2 + topic_len;
    let packet_id = if (first >> 1) & 3 > 0 {
        let id = u16::from_be_bytes(body.get(at..at + 2)?.try_into().ok()?);
        at += 2;
        Some(id)
    } else {
        None
    };
    Some((packet_id, body.get(at..)?))
}

/// Reads whole packets from a socket through one growable buffer.
struct PacketReader<R> {
    r: R,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
}

impl<R: AsyncRead + Unpin> PacketReader<R> {
    fn new(r: R, capacity: usize) -> Self {
        PacketReader {
            r,
            buf: vec![0; capacity],
            pos: 0,
            len: 0,
        }
    }

    /// The next packet, `None` at end of stream. Cancel-safe: state only changes after
    /// a read completed.
    async fn next(&mut self) -> std::io::Result<Option<(u8, &[u8])>> {
        loop {
            if let Some((first, start, end)) = parse(&self.buf[self.pos..self.len])? {
                let (s, e) = (self.pos + start, self.pos + end);
                self.pos += end;
                return Ok(Some((first, &self.buf[s..e])));
            }
            if self.pos > 0 {
                self.buf.copy_within(self.pos..self.len, 0);
                self.len -= self.pos;
                self.pos = 0;
            }
            if self.len == self.buf.len() {
                if self.buf.len() >= 1 << 24 {
                    return Err(std::io::Error::other("packet larger than 16 MiB"));
                }
                self.buf.resize(self.buf.len() * 2, 0);
            }
            let n = self.r.read(&mut self.buf[self.len..]).await?;
            if n == 0 {
                return Ok(None);
            }
            self.len += n;
        }
    }
}

struct Session {
    rd: PacketReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
}

struct Open<'a> {
    target: Target,
    source: Option<SocketAddr>,
    sndbuf: Option<u32>,
    client_id: &'a str,
    keepalive: u16,
    clean: bool,
    filters: &'a [(&'a str, u8)],
    read_buffer: usize,
}

impl Open<'_> {
    /// TCP connect, CONNECT → CONNACK, SUBSCRIBE → SUBACK, each within [`IO_TIMEOUT`].
    async fn run(&self) -> anyhow::Result<Session> {
        let addr = self.target.addr;
        let sock = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(src) = self.source {
            sock.bind(src).with_context(|| format!("binding {src}"))?;
        }
        if let Some(size) = self.sndbuf {
            sock.set_send_buffer_size(size)?;
        }
        let stream: TcpStream = timeout(IO_TIMEOUT, sock.connect(addr))
            .await
            .map_err(|_| anyhow!("TCP connect timed out"))??;
        stream.set_nodelay(true)?;
        let (r, mut wr) = stream.into_split();
        let mut rd = PacketReader::new(r, self.read_buffer);
        let connect = connect_packet(self.client_id, self.keepalive, self.clean);
        let handshake = async {
            wr.write_all(&connect).await?;
            match rd.next().await? {
                Some((0x20, [_, 0])) => {}
                Some((first, body)) => bail!("refused: CONNACK {first:02x} {body:02x?}"),
                None => bail!("closed before CONNACK"),
            }
            if self.filters.is_empty() {
                return anyhow::Ok(());
            }
            wr.write_all(&subscribe_packet(1, self.filters)).await?;
            loop {
                match rd.next().await? {
                    Some((0x90, body)) => {
                        if body.len() < 2 + self.filters.len()
                            || body[2..].iter().any(|&c| c >= 0x80)
                        {
                            bail!("subscription refused: SUBACK {body:02x?}");
                        }
                        break;
                    }
                    Some(_) => {}
                    None => bail!("closed before SUBACK"),
                }
            }
            anyhow::Ok(())
        };
        timeout(IO_TIMEOUT, handshake)
            .await
            .map_err(|_| anyhow!("no CONNACK/SUBACK within {IO_TIMEOUT:?}"))??;
        Ok(Session { rd, wr })
    }
}

// ---------------------------------------------------------------------------------
// Idle sessions.

/// Client id of idle session `i`, also its device id in its topics.
/// What each idle session subscribes to (QoS 1 both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filters {
    /// As a board: its own exact topic and a wildcard below its own level
    /// (`lentera/<id>/config`, `lentera/<id>/cmd/#`): the exact-topic-heavy case.
    Board,
    /// Wildcards first (`+/<id>/cmd/#`, `lentera/+/<id>`): every publish has to look
    /// under a `+` level holding every session, the wildcard-heavy case.
    Wildcard,
}

impl std::str::FromStr for Filters {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "board" => Ok(Filters::Board),
            "wildcard" => Ok(Filters::Wildcard),
            _ => Err(format!("--filters: board or wildcard, not {s}")),
        }
    }
}

impl Filters {
    fn name(self) -> &'static str {
        match self {
            Filters::Board => "board",
            Filters::Wildcard => "wildcard",
        }
    }

    fn of(self, id: &str) -> [String; 2] {
        match self {
            Filters::Board => [
                format!("lentera/{id}/config"),
                format!("lentera/{id}/cmd/#"),
            ],
            Filters::Wildcard => [format!("+/{id}/cmd/#"), format!("lentera/+/{id}")],
        }
    }
}

/// How each idle session looks: its keep-alive (seconds) and subscriptions.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub keepalive: u16,
    pub filters: Filters,
}

fn idle_id(run: &str, i: usize) -> String {
    format!("sc{run}-{i}")
}

#[derive(Debug, Default, Clone)]
struct Established {
    ok: u64,
    failed: u64,
    first_error: Option<String>,
    secs: f64,
}

impl Established {
    fn json(&self) -> Value {
        json!({"ok": self.ok, "failed": self.failed, "first_error": self.first_error,
               "secs": self.secs, "per_sec": self.ok as f64 / self.secs.max(1e-9)})
    }

    fn from_json(v: &Value) -> Established {
        Established {
            ok: v["ok"].as_u64().unwrap_or(0),
            failed: v["failed"].as_u64().unwrap_or(0),
            first_error: v["first_error"].as_str().map(str::to_owned),
            secs: v["secs"].as_f64().unwrap_or(0.0),
        }
    }
}

/// Sets up idle sessions `range`: live ones are then held (PINGREQ at half the
/// keep-alive, answering PUBACK to anything at QoS 1) until the process ends; persistent
/// ones (`live == false`) connect with clean_session=0, subscribe and disconnect.
async fn establish(
    target: Target,
    run: &str,
    range: Range<usize>,
    concurrency: usize,
    shape: Shape,
    live: bool,
    closed: Arc<AtomicU64>,
) -> Established {
    let Shape { keepalive, filters } = shape;
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(range.len());
    for i in range {
        let permits = permits.clone();
        let closed = closed.clone();
        let id = idle_id(run, i);
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let [a, b] = filters.of(&id);
            let filters = [(a.as_str(), 1), (b.as_str(), 1)];
            let open = Open {
                target,
                source: target.source(i),
                sndbuf: None,
                client_id: &id,
                keepalive,
                clean: live,
                filters: &filters,
                read_buffer: 256,
            };
            let mut s = open.run().await.with_context(|| format!("session {id}"))?;
            if live {
                tokio::spawn(hold(s, keepalive, closed));
            } else {
                // DISCONNECT, then let the broker close first, so the TIME_WAIT is on
                // its side and this address's ports are free again at once.
                s.wr.write_all(&DISCONNECT).await?;
                let _ = timeout(Duration::from_secs(2), async {
                    while let Ok(Some(_)) = s.rd.next().await {}
                })
                .await;
            }
            anyhow::Ok(())
        }));
    }
    let mut r = Established::default();
    for t in tasks {
        match t.await {
            Ok(Ok(())) => r.ok += 1,
            Ok(Err(e)) => {
                r.failed += 1;
                r.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            Err(e) => {
                r.failed += 1;
                r.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    r.secs = start.elapsed().as_secs_f64();
    r
}

async fn hold(mut s: Session, keepalive: u16, closed: Arc<AtomicU64>) {
    let mut ping = tokio::time::interval(Duration::from_secs((keepalive / 2).max(1) as u64));
    ping.tick().await;
    loop {
        tokio::select! {
            _ = ping.tick(), if keepalive > 0 => {
                if s.wr.write_all(&PINGREQ).await.is_err() {
                    break;
                }
            }
            p = s.rd.next() => match p {
                Ok(Some((first, body))) => {
                    let puback = (first & 0xF0 == 0x30)
                        .then(|| publish_parts(first, body))
                        .flatten()
                        .and_then(|(id, _)| id)
                        .filter(|_| (first >> 1) & 3 == 1);
                    if let Some(id) = puback {
                        let [hi, lo] = id.to_be_bytes();
                        if s.wr.write_all(&[0x40, 2, hi, lo]).await.is_err() {
                            break;
                        }
                    }
                }
                _ => break,
            },
        }
    }
    closed.fetch_add(1, Ordering::Relaxed);
}

/// The `scale-idle` child: sets up its share of live idle sessions, prints one JSON
/// line, then holds them until its stdin closes (the parent ended) or it is killed.
pub async fn idle_child(
    host: &str,
    port: u16,
    run: &str,
    range: Range<usize>,
    source_ips: u32,
    concurrency: usize,
    shape: Shape,
) -> anyhow::Result<String> {
    if let Some(limit) = open_files_limit()
        && range.len() as u64 + 64 > limit
    {
        bail!(
            "{} sessions need more than the open-files limit of {limit}",
            range.len()
        );
    }
    let target = Target::resolve(host, port, source_ips).await?;
    let closed = Arc::new(AtomicU64::new(0));
    let r = establish(target, run, range, concurrency, shape, true, closed).await;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", r.json())?;
        out.flush()?;
    }
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
    })
    .await?;
    Ok(String::new())
}

/// The `scale-idle` children; killed (SIGKILL) on drop if still running.
struct Children(Vec<Child>);

impl Children {
    /// Kills every child at once: the kernel closes all their sockets.
    fn kill_all(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
        self.0.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Starts the children holding the live sessions and waits for their reports.
async fn spawn_idle(
    cfg: &ScaleConfig,
    run: &str,
    live: usize,
) -> anyhow::Result<(Children, Established)> {
    let exe = std::env::current_exe().context("finding this binary")?;
    let mut children = Children(Vec::new());
    let start = Instant::now();
    let per = cfg.per_process.max(1);
    // `--concurrency` is in total, shared out over the processes.
    let concurrency = (cfg.concurrency / live.div_ceil(per)).max(1);
    let mut readers = Vec::new();
    for first in (0..live).step_by(per) {
        let count = per.min(live - first);
        let mut child = Command::new(&exe)
            .arg("scale-idle")
            .args(["--host", &cfg.host, "--port", &cfg.port.to_string()])
            .args(["--run", run, "--first", &first.to_string()])
            .args(["--count", &count.to_string()])
            .args(["--source-ips", &cfg.source_ips.to_string()])
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--keepalive", &cfg.keepalive_secs.to_string()])
            .args(["--filters", cfg.filters.name()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting scale-idle")?;
        let stdout = child.stdout.take().context("child stdout")?;
        children.0.push(child);
        readers.push((
            count,
            tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                BufReader::new(stdout).read_line(&mut line).map(|_| line)
            }),
        ));
    }
    // Every session has IO_TIMEOUT for each step; beyond this the broker is stuck.
    let deadline = Instant::now() + Duration::from_secs(60) + Duration::from_millis(live as u64);
    let mut total = Established::default();
    for (count, reader) in readers {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match timeout(left, reader).await {
            Ok(Ok(Ok(line))) if !line.trim().is_empty() => line,
            other => {
                total.failed += count as u64;
                let why = match other {
                    Err(_) => "stalled: a scale-idle process did not finish connecting".into(),
                    _ => "a scale-idle process ended without a report".to_owned(),
                };
                total.first_error.get_or_insert(why);
                continue;
            }
        };
        let r = Established::from_json(&serde_json::from_str(line.trim())?);
        total.ok += r.ok;
        total.failed += r.failed;
        if total.first_error.is_none() {
            total.first_error = r.first_error;
        }
    }
    total.secs = start.elapsed().as_secs_f64();
    Ok((children, total))
}

// ---------------------------------------------------------------------------------
// The broker's connection count.

enum Gauge {
    None,
    Metrics {
        client: reqwest::Client,
        url: String,
        name: String,
    },
    Sys {
        value: Arc<AtomicI64>,
        updated_us: Arc<AtomicU64>,
        task: JoinHandle<()>,
    },
}

impl Gauge {
    async fn new(cfg: &ScaleConfig, target: Target, run: &str) -> anyhow::Result<Gauge> {
        if let Some(url) = &cfg.metrics_url {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()?;
            return Ok(Gauge::Metrics {
                client,
                url: url.clone(),
                name: cfg.gauge.clone(),
            });
        }
        let Some(topic) = &cfg.sys_topic else {
            return Ok(Gauge::None);
        };
        let id = format!("lg-{run}-sys");
        let filters = [(topic.as_str(), 0)];
        let Session { mut rd, wr } = Open {
            target,
            source: None,
            sndbuf: None,
            client_id: &id,
            keepalive: MEASURE_KEEPALIVE,
            clean: true,
            filters: &filters,
            read_buffer: 4096,
        }
        .run()
        .await
        .context("subscribing to the $SYS connection count")?;
        let value = Arc::new(AtomicI64::new(-1));
        let updated_us = Arc::new(AtomicU64::new(0));
        let (v, u) = (value.clone(), updated_us.clone());
        let task = tokio::spawn(async move {
            // Dropping the write half would shut the connection down.
            let _wr = wr;
            while let Ok(Some((first, body))) = rd.next().await {
                if first & 0xF0 != 0x30 {
                    continue;
                }
                let n = publish_parts(first, body)
                    .and_then(|(_, p)| std::str::from_utf8(p).ok()?.trim().parse().ok());
                if let Some(n) = n {
                    v.store(n, Ordering::Relaxed);
                    u.store(payload::now_us(), Ordering::Relaxed);
                }
            }
        });
        // Mosquitto publishes the count once per `sys_interval`, only when it changed;
        // the value retained at subscription time predates this connection. Give it
        // time (`sys_interval` is 1 s in scale.sh) to count this one.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        Ok(Gauge::Sys {
            value,
            updated_us,
            task,
        })
    }

    fn available(&self) -> bool {
        !matches!(self, Gauge::None)
    }

    /// The connection count as of after `since_us` (`$SYS` is published once per
    /// `sys_interval`; an older value does not count).
    async fn read(&self, since_us: u64) -> Option<i64> {
        match self {
            Gauge::None => None,
            Gauge::Metrics { client, url, name } => {
                let text = client.get(url).send().await.ok()?.text().await.ok()?;
                text.lines().find_map(|l| {
                    let mut parts = l.split_whitespace();
                    (parts.next()? == name)
                        .then(|| parts.next()?.parse::<f64>().ok())
                        .flatten()
                        .map(|v| v as i64)
                })
            }
            Gauge::Sys {
                value, updated_us, ..
            } => {
                // Published only when it changed: an older value still holds once an
                // interval has passed without a new one.
                let v = value.load(Ordering::Relaxed);
                let fresh = updated_us.load(Ordering::Relaxed) > since_us
                    || payload::now_us().saturating_sub(since_us) > SYS_STALE_US;
                (v >= 0 && fresh).then_some(v)
            }
        }
    }

    /// Waits up to `wait` for a value newer than `since_us`.
    async fn read_within(&self, since_us: u64, wait: Duration) -> Option<i64> {
        let until = Instant::now() + wait;
        loop {
            if let Some(v) = self.read(since_us).await {
                return Some(v);
            }
            if Instant::now() >= until || !self.available() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        if let Gauge::Sys { task, .. } = self {
            task.abort();
        }
    }
}

// ---------------------------------------------------------------------------------
// Measured streams: one publisher, M subscribers on one topic, QoS 0.

#[derive(Default)]
struct SubOut {
    received: u64,
    latencies: Vec<u64>,
    arrivals: Vec<u64>,
    error: Option<String>,
}

/// What the subscribers report as they go.
#[derive(Clone, Default)]
struct Counters {
    /// Deliveries to all subscribers.
    progress: Arc<AtomicU64>,
    /// Time of the latest delivery.
    last_us: Arc<AtomicU64>,
    /// 1 + the highest sequence number the first subscriber received.
    seen: Arc<AtomicU64>,
}

struct Stream {
    subscribers: usize,
    start_us: u64,
    counters: Counters,
    stop_pub: watch::Sender<bool>,
    stop_subs: watch::Sender<bool>,
    publisher: JoinHandle<(u64, Option<String>)>,
    subs: Vec<JoinHandle<SubOut>>,
}

#[derive(Default)]
struct StreamOut {
    sent: u64,
    received: u64,
    publish_secs: f64,
    delivery_secs: f64,
    latency: Percentiles,
    arrivals: Vec<u64>,
    error: Option<String>,
}

impl StreamOut {
    fn per_sec(&self) -> f64 {
        self.received as f64 / self.publish_secs.max(self.delivery_secs).max(1e-9)
    }
}

struct StreamSpec<'a> {
    name: &'a str,
    subscribers: usize,
    rate: Option<f64>,
    /// Messages the publisher may be ahead of the first subscriber: a broker that is
    /// slower than the publisher then holds at most this many of them, not a socket
    /// buffer's worth that it goes on routing for minutes after the phase ended.
    window: u64,
    latency: bool,
    arrivals: bool,
}

async fn start_stream(
    target: Target,
    run: &str,
    size: usize,
    spec: StreamSpec<'_>,
) -> anyhow::Result<Stream> {
    let topic = format!("lentera-bench/{run}/{}", spec.name);
    let counters = Counters::default();
    let (stop_subs, stop_rx) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(64));
    let mut opening = Vec::new();
    for j in 0..spec.subscribers {
        let (topic, permits) = (topic.clone(), permits.clone());
        let id = format!("lg-{run}-{}-s{j}", spec.name);
        opening.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let filters = [(topic.as_str(), 0)];
            Open {
                target,
                source: None,
                sndbuf: None,
                client_id: &id,
                keepalive: MEASURE_KEEPALIVE,
                clean: true,
                filters: &filters,
                read_buffer: 64 * 1024,
            }
            .run()
            .await
        }));
    }
    let mut subs = Vec::new();
    for (j, t) in opening.into_iter().enumerate() {
        let s = t
            .await?
            .with_context(|| format!("{} subscriber {j}", spec.name))?;
        // Latency and arrival times from the first subscriber only.
        let (latency, arrivals) = (spec.latency && j == 0, spec.arrivals && j == 0);
        subs.push(tokio::spawn(subscribe_loop(
            s,
            stop_rx.clone(),
            counters.clone(),
            j == 0,
            latency,
            arrivals,
        )));
    }
    let id = format!("lg-{run}-{}-p", spec.name);
    let publisher = Open {
        target,
        source: None,
        sndbuf: Some(PUBLISH_SNDBUF),
        client_id: &id,
        keepalive: MEASURE_KEEPALIVE,
        clean: true,
        filters: &[],
        read_buffer: 4096,
    }
    .run()
    .await
    .with_context(|| format!("{} publisher", spec.name))?;
    let (stop_pub, stop) = watch::channel(false);
    let start_us = payload::now_us();
    let publisher = tokio::spawn(publish_loop(
        publisher,
        topic,
        size,
        spec.rate,
        spec.window,
        counters.seen.clone(),
        stop,
    ));
    Ok(Stream {
        subscribers: spec.subscribers,
        start_us,
        counters,
        stop_pub,
        stop_subs,
        publisher,
        subs,
    })
}

async fn subscribe_loop(
    mut s: Session,
    mut stop: watch::Receiver<bool>,
    counters: Counters,
    leader: bool,
    latency: bool,
    arrivals: bool,
) -> SubOut {
    let mut out = SubOut::default();
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            p = s.rd.next() => match p {
                Ok(Some((first, body))) if first & 0xF0 == 0x30 => {
                    let Some(stamp) = publish_parts(first, body).and_then(|(_, p)| payload::decode(p))
                    else {
                        continue;
                    };
                    let now = payload::now_us();
                    out.received += 1;
                    counters.progress.fetch_add(1, Ordering::Relaxed);
                    counters.last_us.fetch_max(now, Ordering::Relaxed);
                    if leader {
                        counters.seen.fetch_max(stamp.seq + 1, Ordering::Relaxed);
                    }
                    if latency && out.latencies.len() < MAX_SAMPLES {
                        out.latencies.push(now.saturating_sub(stamp.sent_us));
                    }
                    if arrivals {
                        out.arrivals.push(now);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    out.error = Some("the broker closed a subscriber's connection".into());
                    break;
                }
                Err(e) => {
                    out.error = Some(format!("subscriber: {e}"));
                    break;
                }
            },
        }
    }
    let _ = timeout(Duration::from_secs(1), s.wr.write_all(&DISCONNECT)).await;
    out
}

/// Publishes QoS 0 until stopped: as fast as the broker delivers (at most `window`
/// messages ahead of the first subscriber), or at `rate` with each message stamped with
/// the time it was due (so a message held back by the window is charged for the wait).
/// Returns the messages fully written.
async fn publish_loop(
    mut s: Session,
    topic: String,
    size: usize,
    rate: Option<f64>,
    window: u64,
    seen: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> (u64, Option<String>) {
    let start = Instant::now();
    let start_us = payload::now_us();
    let (mut sent, mut seq) = (0u64, 0u64);
    let mut buf = Vec::with_capacity(64 * 1024);
    let size = size.max(payload::HEADER);
    let mut error = None;
    // Drain whatever the broker sends (PINGRESP at most) so it never blocks on us.
    let reader = tokio::spawn(async move { while let Ok(Some(_)) = s.rd.next().await {} });
    while !*stop.borrow() {
        buf.clear();
        let room = (seen.load(Ordering::Relaxed) + window).saturating_sub(seq);
        if room == 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(1)) => continue,
                _ = stop.changed() => break,
            }
        }
        match rate {
            None => {
                for _ in 0..room.min(64) {
                    put_publish_qos0(&mut buf, &topic, size);
                    payload::encode_into(&mut buf, size, 0, seq, payload::now_us());
                    seq += 1;
                }
            }
            Some(r) => {
                let due = start + Duration::from_secs_f64(seq as f64 / r);
                if due > Instant::now() {
                    tokio::select! {
                        _ = tokio::time::sleep_until(due.into()) => {}
                        _ = stop.changed() => break,
                    }
                }
                let due_now = (start.elapsed().as_secs_f64() * r) as u64 + 1;
                let due_now = due_now.min(seq + room);
                while seq < due_now && buf.len() < 60 * 1024 {
                    put_publish_qos0(&mut buf, &topic, size);
                    let due_us = start_us + (seq as f64 * 1e6 / r) as u64;
                    payload::encode_into(&mut buf, size, 0, seq, due_us);
                    seq += 1;
                }
            }
        }
        let batch = seq - sent;
        // Whole batches only: a PUBLISH cut in half would leave the broker waiting for
        // the rest of it. A broker that takes nothing for 10 s has stalled.
        match timeout(Duration::from_secs(10), s.wr.write_all(&buf)).await {
            Ok(Ok(())) => sent += batch,
            Ok(Err(e)) => {
                error = Some(format!("publisher: {e}"));
                break;
            }
            Err(_) => {
                error = Some("stalled: the broker read nothing from the publisher for 10 s".into());
                break;
            }
        }
    }
    let _ = timeout(Duration::from_secs(1), s.wr.write_all(&DISCONNECT)).await;
    reader.abort();
    (sent, error)
}

impl Stream {
    /// Stops publishing, waits until everything sent arrived, nothing arrived for a
    /// second, or `drain` passed, and collects the subscribers' counts.
    async fn finish(self, drain: Duration) -> StreamOut {
        let _ = self.stop_pub.send(true);
        let publish_end_us = payload::now_us();
        let (sent, pub_error) = self.publisher.await.unwrap_or((0, None));
        let expected = sent * self.subscribers as u64;
        let until = Instant::now() + drain;
        let mut seen = self.counters.progress.load(Ordering::Relaxed);
        let mut since = Instant::now();
        while seen < expected && Instant::now() < until && since.elapsed() < Duration::from_secs(1)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = self.counters.progress.load(Ordering::Relaxed);
            if now != seen {
                (seen, since) = (now, Instant::now());
            }
        }
        let _ = self.stop_subs.send(true);
        let mut out = StreamOut {
            sent,
            error: pub_error,
            ..StreamOut::default()
        };
        let mut samples = Vec::new();
        for t in self.subs {
            let Ok(r) = t.await else { continue };
            out.received += r.received;
            samples.extend(r.latencies);
            if out.arrivals.is_empty() {
                out.arrivals = r.arrivals;
            }
            if out.error.is_none() {
                out.error = r.error;
            }
        }
        out.latency = Percentiles::from_samples(samples);
        out.publish_secs = publish_end_us.saturating_sub(self.start_us) as f64 / 1e6;
        let last = self.counters.last_us.load(Ordering::Relaxed);
        out.delivery_secs = last.saturating_sub(self.start_us) as f64 / 1e6;
        out
    }
}

/// Runs a stream for `duration` and reports it, or why it could not run.
async fn phase(cfg: &ScaleConfig, target: Target, run: &str, spec: StreamSpec<'_>) -> Value {
    let (name, subscribers, rate) = (spec.name.to_owned(), spec.subscribers, spec.rate);
    let stream = match timeout(
        Duration::from_secs(60),
        start_stream(target, run, cfg.size, spec),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return json!({"phase": name, "stalled": true, "error": format!("{e:#}")}),
        Err(_) => return json!({"phase": name, "stalled": true, "error": "set-up took over 60 s"}),
    };
    tokio::time::sleep(cfg.duration).await;
    let out = stream.finish(Duration::from_secs(5)).await;
    let expected = out.sent * subscribers as u64;
    json!({
        "phase": name, "subscribers": subscribers, "rate": rate,
        "stalled": out.received == 0,
        "sent": out.sent, "expected": expected, "received": out.received,
        "missing": expected.saturating_sub(out.received),
        "publish_secs": out.publish_secs, "delivery_secs": out.delivery_secs,
        "per_sec": out.per_sec(), "latency": out.latency.json(), "error": out.error,
    })
}

/// Waits until the broker's connection count is down to `expected` again (the last
/// phase's clients gone, and with them whatever the broker still had to do for
/// them), at most `limit`; the seconds it took, `None` if it did not.
async fn settle(gauge: &Gauge, expected: Option<i64>, limit: Duration) -> Value {
    let Some(expected) = expected.filter(|_| gauge.available()) else {
        tokio::time::sleep(Duration::from_secs(1)).await;
        return Value::Null;
    };
    let (since, start) = (payload::now_us(), Instant::now());
    let mut last = None;
    while start.elapsed() < limit {
        if let Some(c) = gauge.read(since).await {
            last = Some(c);
            if c <= expected {
                return json!({"secs": start.elapsed().as_secs_f64(), "count": c});
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    json!({"secs": null, "count": last, "expected": expected})
}

/// The disconnect storm: kill every idle process while a steady stream runs.
async fn storm(
    cfg: &ScaleConfig,
    target: Target,
    run: &str,
    gauge: &Gauge,
    baseline: Option<i64>,
    children: &mut Children,
) -> Value {
    let spec = StreamSpec {
        name: "storm",
        subscribers: 1,
        rate: Some(cfg.storm_rate),
        window: WINDOW,
        latency: true,
        arrivals: true,
    };
    let stream = match timeout(
        Duration::from_secs(60),
        start_stream(target, run, cfg.size, spec),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return json!({"stalled": true, "error": format!("{e:#}")}),
        Err(_) => return json!({"stalled": true, "error": "set-up took over 60 s"}),
    };
    // The steady pair is connected from here on: the count to come back to.
    let target_count = baseline.map(|b| b + 2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = gauge
        .read_within(payload::now_us(), Duration::from_secs(2))
        .await;
    let kill_us = payload::now_us();
    let kill_at = Instant::now();
    children.kill_all();
    let killed_secs = kill_at.elapsed().as_secs_f64();
    let (mut recovered, mut last) = (None, None);
    // (seconds after the kill, count) whenever the count changed.
    let mut trace: Vec<(f64, i64)> = Vec::new();
    if let Some(target_count) = target_count {
        while kill_at.elapsed() < cfg.storm_timeout {
            if let Some(c) = gauge.read(kill_us).await {
                if last != Some(c) {
                    trace.push((kill_at.elapsed().as_secs_f64(), c));
                }
                last = Some(c);
                if c <= target_count {
                    recovered = Some(kill_at.elapsed().as_secs_f64());
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    } else {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let end_us = payload::now_us();
    let out = stream.finish(Duration::from_secs(5)).await;
    // The longest stretch without a delivery between the kill and the end of the window.
    let (mut prev, mut gap, mut in_window) = (kill_us, 0u64, 0u64);
    for &a in out.arrivals.iter().filter(|&&a| a > kill_us && a <= end_us) {
        gap = gap.max(a - prev);
        prev = a;
        in_window += 1;
    }
    gap = gap.max(end_us - prev);
    let window_secs = (end_us - kill_us) as f64 / 1e6;
    json!({
        "count_before": before, "baseline": target_count, "count_last": last,
        "recovered_secs": recovered, "kill_secs": killed_secs, "trace": trace,
        "timeout_secs": cfg.storm_timeout.as_secs_f64(),
        "max_gap_ms": gap as f64 / 1e3, "window_secs": window_secs,
        "received_in_window": in_window,
        "expected_in_window": (window_secs * cfg.storm_rate) as u64,
        "stalled": in_window == 0,
        "stream": {"sent": out.sent, "received": out.received, "latency": out.latency.json()},
        "error": out.error,
    })
}

// ---------------------------------------------------------------------------------

pub async fn run(cfg: ScaleConfig) -> anyhow::Result<Value> {
    let target = Target::resolve(&cfg.host, cfg.port, cfg.source_ips).await?;
    if let Some(limit) = open_files_limit()
        && (cfg.fanout as u64) + 64 > limit
    {
        bail!(
            "--fanout {} needs more than the open-files limit of {limit}",
            cfg.fanout
        );
    }
    if cfg.source_ips > 0 && target.source(0).is_none() {
        eprintln!("scale: the broker is not on 127.x: idle sessions not bound to 127.0.0.x");
    }
    let run = format!(
        "{:x}{:x}",
        std::process::id(),
        payload::now_us() % 0xFFFF_FFFF
    );
    let rss = |pid: Option<u32>| pid.and_then(|p| rss_kib(p).ok());
    let rss_before = rss(cfg.pid);
    let gauge = Gauge::new(&cfg, target, &run).await?;
    let baseline = gauge
        .read_within(0, Duration::from_secs(3))
        .await
        .filter(|_| gauge.available());
    let live = cfg.live();
    let persistent = cfg.idle - live;
    let closed = Arc::new(AtomicU64::new(0));
    eprintln!(
        "scale {}: {} idle sessions ({} persistent offline, {} live)",
        cfg.label, cfg.idle, persistent, live
    );
    let persist = establish(
        target,
        &run,
        live..cfg.idle,
        cfg.concurrency,
        Shape {
            keepalive: cfg.keepalive_secs,
            filters: cfg.filters,
        },
        false,
        closed,
    )
    .await;
    let (mut children, lives) = if live > 0 {
        spawn_idle(&cfg, &run, live).await?
    } else {
        (Children(Vec::new()), Established::default())
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss(cfg.pid);
    let count_idle = gauge.read_within(0, Duration::from_secs(2)).await;
    let total_ok = persist.ok + lives.ok;
    let connect_secs = persist.secs + lives.secs;
    eprintln!(
        "scale {}: {} sessions up in {:.1}s ({} failed{}); throughput…",
        cfg.label,
        total_ok,
        connect_secs,
        persist.failed + lives.failed,
        lives
            .first_error
            .as_ref()
            .or(persist.first_error.as_ref())
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );

    let throughput = phase(
        &cfg,
        target,
        &run,
        StreamSpec {
            name: "throughput",
            subscribers: 1,
            rate: None,
            window: WINDOW,
            latency: false,
            arrivals: false,
        },
    )
    .await;
    let idle_count = baseline.map(|b| b + lives.ok as i64);
    let settle_limit = Duration::from_secs(30);
    let settled_throughput = settle(&gauge, idle_count, settle_limit).await;
    eprintln!("scale {}: fan-out…", cfg.label);
    let fanout = phase(
        &cfg,
        target,
        &run,
        StreamSpec {
            name: "fanout",
            subscribers: cfg.fanout,
            rate: None,
            window: FANOUT_WINDOW,
            latency: false,
            arrivals: false,
        },
    )
    .await;
    let settled_fanout = settle(&gauge, idle_count, settle_limit).await;
    eprintln!("scale {}: latency…", cfg.label);
    let latency = phase(
        &cfg,
        target,
        &run,
        StreamSpec {
            name: "latency",
            subscribers: 1,
            rate: Some(cfg.rate),
            window: WINDOW,
            latency: true,
            arrivals: false,
        },
    )
    .await;
    let settled_latency = settle(&gauge, idle_count, settle_limit).await;
    let storm = if live > 0 {
        eprintln!("scale {}: disconnect storm…", cfg.label);
        storm(&cfg, target, &run, &gauge, baseline, &mut children).await
    } else {
        Value::Null
    };
    drop(children);

    let per_session_kib = match (rss_before, rss_after) {
        (Some(b), Some(a)) if total_ok > 0 => Some((a as f64 - b as f64) / total_ok as f64),
        _ => None,
    };
    Ok(json!({
        "mode": "scale", "broker": cfg.label, "host": cfg.host, "port": cfg.port,
        "idle": cfg.idle, "live": live, "persistent": persistent,
        "connect": {
            "ok": total_ok, "failed": persist.failed + lives.failed, "secs": connect_secs,
            "per_sec": total_ok as f64 / connect_secs.max(1e-9),
            "persistent": persist.json(), "live": lives.json(),
        },
        "baseline_connections": baseline, "connections_with_idle": count_idle,
        "rss_before_kib": rss_before, "rss_after_kib": rss_after,
        "kib_per_session": per_session_kib,
        "throughput": throughput, "fanout": fanout, "latency": latency, "storm": storm,
        // How long after each phase the broker took to close its clients.
        "settled": {"throughput": settled_throughput, "fanout": settled_fanout,
                    "latency": settled_latency},
        "duration_secs": cfg.duration.as_secs_f64(), "rate": cfg.rate,
        "storm_rate": cfg.storm_rate, "fanout_subscribers": cfg.fanout,
    }))
}

/// A few lines for a person; `--json` gives everything.
pub fn human(r: &Value) -> String {
    let phase = |p: &Value, unit: &str| {
        if p["stalled"].as_bool().unwrap_or(true) {
            format!(
                "stalled ({})",
                p["error"].as_str().unwrap_or("nothing arrived")
            )
        } else {
            format!(
                "{:.0} {unit} ({} of {} arrived)",
                p["per_sec"].as_f64().unwrap_or(0.0),
                p["received"],
                p["expected"]
            )
        }
    };
    let mut s = format!(
        "scale: {} with {} idle sessions ({} live, {} persistent offline)\n",
        r["broker"].as_str().unwrap_or("?"),
        r["idle"],
        r["live"],
        r["persistent"]
    );
    s += &format!(
        "  connect     {} ok, {} failed in {:.2}s = {:.0} sessions/s\n",
        r["connect"]["ok"],
        r["connect"]["failed"],
        r["connect"]["secs"].as_f64().unwrap_or(0.0),
        r["connect"]["per_sec"].as_f64().unwrap_or(0.0)
    );
    s += &format!(
        "  memory      {} KiB per session\n",
        r["kib_per_session"]
            .as_f64()
            .map_or("n/a".into(), |k| format!("{k:.2}"))
    );
    s += &format!("  1->1        {}\n", phase(&r["throughput"], "msg/s"));
    s += &format!("  fan-out     {}\n", phase(&r["fanout"], "deliveries/s"));
    let l = &r["latency"];
    s += &format!(
        "  latency     p99 {:.2} ms at {} msg/s offered ({} of {} arrived)\n",
        l["latency"]["p99_us"].as_f64().unwrap_or(f64::NAN) / 1e3,
        r["rate"],
        l["received"],
        l["expected"]
    );
    let st = &r["storm"];
    if !st.is_null() {
        s += &format!(
            "  storm       back to baseline in {} s (last count {}), max gap {:.1} ms",
            st["recovered_secs"]
                .as_f64()
                .map_or("never".into(), |v| format!("{v:.2}")),
            st["count_last"],
            st["max_gap_ms"].as_f64().unwrap_or(f64::NAN)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_match_the_mqtt_311_layout() {
        assert_eq!(
            connect_packet("t", 5, false),
            [
                0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0, 0, 5, 0, 1, b't'
            ]
        );
        assert_eq!(connect_packet("t", 5, true)[9], 0x02);
        assert_eq!(
            subscribe_packet(1, &[("a/b", 1), ("c/#", 0)]),
            [
                0x82, 14, 0, 1, 0, 3, b'a', b'/', b'b', 1, 0, 3, b'c', b'/', b'#', 0
            ]
        );
        let mut p = Vec::new();
        put_publish_qos0(&mut p, "t", 3);
        p.extend_from_slice(b"abc");
        assert_eq!(p, [0x30, 6, 0, 1, b't', b'a', b'b', b'c']);
        assert_eq!(publish_parts(p[0], &p[2..]), Some((None, &b"abc"[..])));
        let q1 = [0, 1, b't', 0, 7, b'x'];
        assert_eq!(publish_parts(0x32, &q1), Some((Some(7), &b"x"[..])));
    }

    #[test]
    fn parses_whole_packets_only() {
        assert_eq!(parse(&[]).unwrap(), None);
        assert_eq!(parse(&[0x20]).unwrap(), None);
        assert_eq!(parse(&[0x20, 2, 0]).unwrap(), None);
        assert_eq!(parse(&[0x20, 2, 0, 0, 0x30]).unwrap(), Some((0x20, 2, 4)));
        let mut long = vec![0x30, 0x80 | 44, 1];
        long.resize(3 + 172, 0);
        assert_eq!(parse(&long).unwrap(), Some((0x30, 3, 175)));
        assert!(parse(&[0x30, 0xff, 0xff, 0xff, 0xff, 1]).is_err());
    }

    #[tokio::test]
    async fn reader_splits_a_stream_into_packets() {
        let bytes: &[u8] = &[0x20, 2, 0, 0, 0x90, 3, 0, 1, 1, 0xD0, 0];
        let mut r = PacketReader::new(bytes, 2);
        assert_eq!(r.next().await.unwrap(), Some((0x20, &[0u8, 0][..])));
        assert_eq!(r.next().await.unwrap(), Some((0x90, &[0u8, 1, 1][..])));
        assert_eq!(r.next().await.unwrap(), Some((0xD0, &[][..])));
        assert_eq!(r.next().await.unwrap(), None);
    }

    #[test]
    fn idle_sessions_spread_over_source_addresses() {
        let t = Target {
            addr: "127.0.0.1:1883".parse().unwrap(),
            source_ips: 3,
        };
        let ips: Vec<_> = (0..4)
            .map(|i| t.source(i).unwrap().ip().to_string())
            .collect();
        assert_eq!(ips, ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.2"]);
        let remote = Target {
            addr: "10.0.0.1:1883".parse().unwrap(),
            ..t
        };
        assert_eq!(remote.source(0), None);
    }
}
