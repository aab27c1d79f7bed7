//! The broker's network layer: a few worker threads, each an `epoll` loop (mio) over
//! its share of the connections, speaking MQTT through ntex-mqtt's codecs.
//!
//! Why not ntex-mqtt's own server: its per-connection dispatcher (service pipeline,
//! timers, an `Io` with posted read buffers) costs ~10–15 KiB per idle connection, where
//! Mosquitto needs under 1 KiB and a village's boards mostly sit idle
//! (`docs/benchmarks.md`). Here an idle connection is a socket, a slab entry and its
//! session state: reads go through one scratch buffer per worker, and a connection
//! owns bytes only while a packet is half-read or the socket has not taken its output.
//! The packets themselves are still ntex-mqtt's (`v3::codec`, `v5::codec`): their
//! parsing and encoding, with every MQTT 5 property, are not ours to maintain.
//!
//! - [`worker`]: the event loop — accept, read, dispatch, flush, timers, commands.
//! - [`conn`]: one connection's framing and output buffer.
//! - [`transport`]: plain TCP or TLS (rustls driven by hand).
//! - [`tls`]: the MQTT-over-TLS listener and its certificate.
//! - [`ws`]: MQTT over WebSocket (`/mqtt`), a tokio bridge to the TCP listener.
//! - [`mailbox`]: how other threads (the router, the store's writer, the authenticator)
//!   reach a worker.
//!
//! What a packet *means* is in `v3.rs`, `v5.rs` and `session/`.

pub mod conn;
pub mod mailbox;
pub mod tls;
pub mod transport;
pub mod worker;
pub mod ws;

use std::net::TcpListener;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::session::Shared;
use mailbox::{Cmd, ConnKey, Mailbox};

/// What a protocol handler may touch besides its own connection: the broker-wide
/// state, the worker's clock and bookkeeping, and the connection's own name.
pub struct Cx<'a> {
    pub shared: &'a Shared,
    /// Read once per loop iteration: handlers need seconds, not nanoseconds.
    pub now: Instant,
    pub key: ConnKey,
    pub mailbox: &'a Arc<Mailbox>,
    pub lists: &'a mut Lists,
}

/// Connections a worker must come back to, by slab index (entries may be stale: each
/// is checked again when its turn comes).
#[derive(Default)]
pub struct Lists {
    /// Holding acknowledgements until the store has their records on disk.
    pub durable: Vec<usize>,
    /// Holding a QoS ≥ 1 PUBLISH back while the broker is overloaded (`outbox.rs`).
    pub held: Vec<usize>,
    /// Could not send what their outbox holds (window full, socket not draining):
    /// checked for stalling (`session/delivery.rs`).
    pub blocked: Vec<usize>,
}

impl Cx<'_> {
    /// Everything up to `lsn` is on disk (0: nothing was written).
    pub fn durable(&self, lsn: u64) -> bool {
        lsn == 0 || lsn <= self.shared.router.store().durable_seq()
    }

    /// This connection holds a reply until `lsn` is durable.
    pub fn wait_durable(&mut self, lsn: u64) {
        self.lists.durable.push(self.key.index as usize);
        self.mailbox.want_durable(lsn);
        // A commit that landed after the caller found `lsn` not durable and before
        // `want_durable` posted nothing (nobody wanted it yet): post it ourselves, or the
        // reply would wait for the next commit, which may never come.
        let durable = self.shared.router.store().durable_seq();
        self.mailbox.durable(durable);
    }

    /// Tells this connection's worker, from any thread, that its outbox has messages.
    pub fn ready_notifier(&self) -> impl Fn() + Send + Sync + 'static {
        let (mailbox, key) = (self.mailbox.clone(), self.key);
        move || mailbox.post(Cmd::Ready(key))
    }

    /// Closes this connection, from any thread (a takeover, a revoked device).
    pub fn kicker(&self) -> crate::router::Kick {
        let (mailbox, key) = (self.mailbox.clone(), self.key);
        Box::new(move |why| mailbox.post(Cmd::Kick(key, why)))
    }
}

/// A plain or TLS listener for the workers.
pub struct Listener {
    pub listener: TcpListener,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// The running workers.
pub struct Network {
    mailboxes: Vec<Arc<Mailbox>>,
    threads: Vec<JoinHandle<()>>,
}

impl Network {
    /// Starts `workers` threads serving `listeners` (the first worker accepts and deals
    /// connections out in turn).
    pub fn start(
        listeners: Vec<Listener>,
        shared: Arc<Shared>,
        workers: usize,
    ) -> std::io::Result<Self> {
        let built = (0..workers.max(1))
            .map(|_| worker::Worker::new(shared.clone()))
            .collect::<std::io::Result<Vec<_>>>()?;
        let mailboxes: Vec<_> = built.iter().map(|w| w.mailbox().clone()).collect();
        // The store's writer and the overload gauge reach every worker.
        for m in &mailboxes {
            let m = m.clone();
            shared.router.store().on_commit(move |lsn| m.durable(lsn));
        }
        let all = mailboxes.clone();
        shared.router.pressure().on_drained(move || {
            for m in &all {
                m.post(Cmd::Drained);
            }
        });
        let mut listeners = Some(listeners);
        let mut threads = Vec::new();
        for (i, mut w) in built.into_iter().enumerate() {
            if i == 0 {
                w.listen(listeners.take().unwrap_or_default(), mailboxes.clone())?;
            }
            threads.push(
                std::thread::Builder::new()
                    .name(format!("mqtt-worker-{i}"))
                    .spawn(move || w.run())?,
            );
        }
        Ok(Self { mailboxes, threads })
    }

    /// Closes every connection (MQTT 5 clients hear DISCONNECT 0x8B first) and waits
    /// for the workers to end.
    pub fn stop(self) {
        for m in &self.mailboxes {
            m.post(Cmd::Shutdown);
        }
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!("a network worker panicked");
            }
        }
    }
}
