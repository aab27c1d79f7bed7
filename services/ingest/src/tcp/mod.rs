//! The raw-TCP entry (default port 2004): newline-delimited text, one reply per line.
//!
//! - [`line`]: the grammar, pure and unit-tested.
//! - [`conn`]: one connection — framing, replies, HELLO binding, relay writes.
//! - [`relay`]: the device → connection registry fed by MQTT `lamp/set`.
//!
//! This file is the accept loop: it caps concurrent connections per source address
//! (`quota.max_connections_per_ip`, so one client cannot take every slot) and in all
//! with a semaphore (the connection over either cap gets `ERR too_many_connections` and
//! is closed), and on
//! shutdown stops accepting, then waits until every connection has finished its current
//! line and closed — observed as every semaphore permit being back.

pub mod conn;
pub mod line;
pub mod relay;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::identity::Identity;
use crate::peers::PeerLimit;
use crate::publish::Publisher;
use crate::stats::Stats;
use relay::Registry;

/// Limits of the line protocol, from `[ingest]`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_line_bytes: usize,
    pub idle_timeout: Duration,
    /// The pause after which a partial line counts as complete, on connections that
    /// have never sent a newline; `None` disables it.
    pub partial_line: Option<Duration>,
    pub max_connections: usize,
}

/// What every connection task shares.
#[derive(Clone)]
pub struct Shared {
    pub publisher: Publisher,
    pub registry: Registry,
    pub stats: Stats,
    pub limits: Arc<Limits>,
    /// `[limits]`: the same plausibility rules as HTTP (`ERR out_of_range …`).
    pub reading_limits: Arc<lentera_protocol::Limits>,
    /// The process's one stamper, shared with the HTTP entry.
    pub stamps: crate::stamps::Stamps,
    /// Device identity and quota, shared with the HTTP entry.
    pub identity: Identity,
    /// Open connections per source address.
    pub per_ip: PeerLimit,
}

/// Accepts until `shutdown` turns true, then waits up to `drain` for open connections.
pub async fn serve(
    listener: TcpListener,
    shared: Shared,
    shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let max = shared.limits.max_connections.max(1);
    let permits = Arc::new(Semaphore::new(max));
    let mut next_id: relay::ConnId = 0;
    // A second receiver to wait on, so the first can be cloned for connections meanwhile.
    let mut stopping = shutdown.clone();
    loop {
        tokio::select! {
            () = conn::stopped(&mut stopping) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(slot) = shared.per_ip.try_acquire(peer.ip()) else {
                        shared.stats.reject("too_many_connections_per_ip");
                        tokio::spawn(refuse(stream, PER_IP));
                        continue;
                    };
                    match permits.clone().try_acquire_owned() {
                        Ok(permit) => {
                            next_id += 1;
                            let conn = conn::Connection::new(stream, peer, next_id, shared.clone());
                            let stop = shutdown.clone();
                            tokio::spawn(async move {
                                conn.run(stop).await;
                                drop(permit);
                                drop(slot);
                            });
                        }
                        Err(_) => {
                            shared.stats.reject("too_many_connections");
                            tokio::spawn(refuse(stream, ALL));
                        }
                    }
                }
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(drain, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("TCP connections still open after the shutdown timeout");
    }
}

const ALL: &[u8] = b"ERR too_many_connections the server is at its connection limit\n";
const PER_IP: &[u8] = b"ERR too_many_connections too many open connections from this address\n";

/// Tells a connection over a cap why it is being closed.
async fn refuse(mut stream: TcpStream, line: &[u8]) {
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(line)).await;
    conn::linger_close(stream).await;
}
