//! `connections` mode: open many idle MQTT connections, hold them, measure.
//!
//! Each connection is a raw TCP socket that sends a minimal MQTT 3.1.1 CONNECT, waits
//! for CONNACK and then only answers keep-alive, instead of a full rumqttc client: ten
//! thousand rumqttc event loops would cost the load generator far more memory and CPU
//! than the broker it is measuring. With `--pid`, the broker's resident memory is read
//! from `/proc/<pid>/status` before and after, giving memory per idle connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};

use crate::stats::{open_files_limit, rss_kib};

#[derive(Debug, Clone)]
pub struct ConnConfig {
    pub host: String,
    pub port: u16,
    pub connections: usize,
    /// Connection attempts in flight at once.
    pub concurrency: usize,
    /// How long to hold the connections once all are open.
    pub hold: Duration,
    pub keepalive_secs: u16,
    /// The broker's process id, to read its memory.
    pub pid: Option<u32>,
    /// Username and password for brokers that require them.
    pub credentials: Option<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct ConnReport {
    pub config: ConnConfig,
    pub connected: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    pub connect_secs: f64,
    /// Connections the broker closed while they were held.
    pub closed_while_held: u64,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
}

impl ConnReport {
    pub fn connect_rate(&self) -> f64 {
        self.connected as f64 / self.connect_secs.max(1e-9)
    }

    /// Broker memory growth per open connection, in KiB.
    pub fn kib_per_connection(&self) -> Option<f64> {
        let (b, a) = (self.rss_before_kib?, self.rss_after_kib?);
        (self.connected > 0).then(|| (a as f64 - b as f64) / self.connected as f64)
    }

    pub fn human(&self) -> String {
        let c = &self.config;
        let mut s = format!(
            "connections: {}:{} {} idle connections, held {:.0?}\n",
            c.host, c.port, c.connections, c.hold
        );
        s += &format!(
            "  connected  {:>10} in {:.2}s = {:.0} conn/s (failed {})\n",
            self.connected,
            self.connect_secs,
            self.connect_rate(),
            self.failed
        );
        if let Some(e) = &self.first_error {
            s += &format!("  first error: {e}\n");
        }
        s += &format!(
            "  dropped by broker while held: {}\n",
            self.closed_while_held
        );
        match (
            self.rss_before_kib,
            self.rss_after_kib,
            self.kib_per_connection(),
        ) {
            (Some(b), Some(a), Some(per)) => {
                s += &format!(
                    "  broker RSS {:.1} MiB -> {:.1} MiB = {:.2} KiB per connection",
                    b as f64 / 1024.0,
                    a as f64 / 1024.0,
                    per
                )
            }
            _ => s += "  broker RSS: not measured (pass --pid <broker pid>)",
        }
        s
    }

    pub fn json(&self) -> Value {
        let c = &self.config;
        json!({
            "mode": "connections", "host": c.host, "port": c.port,
            "requested": c.connections, "connected": self.connected, "failed": self.failed,
            "first_error": self.first_error, "connect_secs": self.connect_secs,
            "connect_per_sec": self.connect_rate(), "hold_secs": c.hold.as_secs_f64(),
            "closed_while_held": self.closed_while_held,
            "rss_before_kib": self.rss_before_kib, "rss_after_kib": self.rss_after_kib,
            "kib_per_connection": self.kib_per_connection(),
        })
    }
}

pub async fn run(cfg: ConnConfig) -> anyhow::Result<ConnReport> {
    if let Some(limit) = open_files_limit()
        && (cfg.connections as u64) + 64 > limit
    {
        bail!(
            "{} connections need more than the open-files limit of {limit}: \
                 run `ulimit -n 65536` first (and for the broker too)",
            cfg.connections
        );
    }
    let rss_before_kib = cfg
        .pid
        .map(rss_kib)
        .transpose()
        .context("reading --pid memory")?;
    let run_id = format!("{}-{}", std::process::id(), crate::payload::now_us());
    let permits = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let closed = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(cfg.connections);
    for i in 0..cfg.connections {
        let (permits, closed, stop) = (permits.clone(), closed.clone(), stop_rx.clone());
        let (host, port, ka) = (cfg.host.clone(), cfg.port, cfg.keepalive_secs);
        let credentials = cfg.credentials.clone();
        let id = format!("lg-{run_id}-c{i}");
        tasks.push(tokio::spawn(async move {
            let permit = permits.acquire_owned().await?;
            let packet = connect_packet(&id, ka, credentials.as_ref());
            let stream = connect(&host, port, &packet).await?;
            drop(permit);
            tokio::spawn(hold(stream, ka, closed, stop));
            anyhow::Ok(())
        }));
    }
    let (mut connected, mut failed, mut first_error) = (0, 0, None);
    for t in tasks {
        match t.await? {
            Ok(()) => connected += 1,
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let connect_secs = start.elapsed().as_secs_f64();
    tokio::time::sleep(cfg.hold).await;
    let rss_after_kib = cfg
        .pid
        .map(rss_kib)
        .transpose()
        .context("reading --pid memory")?;
    let _ = stop_tx.send(true);
    Ok(ConnReport {
        connected,
        failed,
        first_error,
        connect_secs,
        closed_while_held: closed.load(Ordering::Relaxed),
        rss_before_kib,
        rss_after_kib,
        config: cfg,
    })
}

/// MQTT 3.1.1 CONNECT with a clean session and, if given, username and password.
fn connect_packet(
    client_id: &str,
    keepalive: u16,
    credentials: Option<&(String, String)>,
) -> Vec<u8> {
    let flags = if credentials.is_some() { 0xC2 } else { 0x02 };
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags];
    body.extend_from_slice(&keepalive.to_be_bytes());
    let fields = std::iter::once(client_id).chain(
        credentials
            .into_iter()
            .flat_map(|(u, p)| [u.as_str(), p.as_str()]),
    );
    for field in fields {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        packet.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    packet
}

async fn connect(host: &str, port: u16, connect_packet: &[u8]) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect((host, port)).await?;
    s.write_all(connect_packet).await?;
    let mut connack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut connack))
        .await
        .context("no CONNACK in 30 s")??;
    if connack != [0x20, 2, 0, 0] && connack != [0x20, 2, 1, 0] {
        bail!("refused: CONNACK {connack:02x?}");
    }
    Ok(s)
}

/// Sends PINGREQ at half the keep-alive and notices when the broker closes the socket.
async fn hold(
    mut s: TcpStream,
    keepalive: u16,
    closed: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ping = tokio::time::interval(Duration::from_secs((keepalive / 2).max(1) as u64));
    ping.tick().await;
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = ping.tick() => {
                if s.write_all(&[0xC0, 0]).await.is_err() {
                    break;
                }
            }
            n = s.read(&mut buf) => if !matches!(n, Ok(n) if n > 0) { break },
        }
    }
    closed.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_packet_matches_the_mqtt_311_layout() {
        let p = connect_packet("t", 5, None);
        assert_eq!(
            p,
            [
                0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 5, 0, 1, b't'
            ]
        );
        // A client id long enough to need a two-byte remaining length.
        let p = connect_packet(&"x".repeat(200), 60, None);
        assert_eq!(&p[1..3], &[(212 % 128) as u8 | 0x80, 1]);
        assert_eq!(p.len(), 3 + 212);
        // Username and password flags, then both fields after the client id.
        let creds = ("u".to_owned(), "pw".to_owned());
        let p = connect_packet("t", 5, Some(&creds));
        assert_eq!(p[9], 0xC2);
        assert_eq!(&p[15..], &[0, 1, b'u', 0, 2, b'p', b'w']);
    }
}
