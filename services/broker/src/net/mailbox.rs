//! How other threads reach a network worker: a [`Mailbox`] of commands plus a
//! `mio::Waker`, and [`ConnKey`], the stable name of one connection on one worker.
//!
//! Posting is a mutex push; the eventfd behind the waker is written only when the worker
//! is parked in `epoll_wait` (or about to be), so a worker that is busy anyway is never
//! woken by a system call — under load most posts cost a lock and nothing else.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::auth::{Authorizer, Refusal};
use crate::net::transport::Transport;

/// One connection on one worker: its slab index and the generation of that slot, so a
/// command meant for a closed connection never reaches the one that reused its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnKey {
    pub index: u32,
    pub generation: u32,
}

/// What another thread asks a worker to do.
pub enum Cmd {
    /// Serve this newly accepted connection (from this address, counted against
    /// `max_connections_per_ip`).
    Accept(Transport, Option<std::net::IpAddr>),
    /// The connection's outbox has messages (`outbox.rs`).
    Ready(ConnKey),
    /// Close this connection, for this reason (another connection took over the
    /// client id; the device was revoked).
    Kick(ConnKey, crate::error::Close),
    /// The authenticator answered a CONNECT that could not be decided at once.
    AuthDone(ConnKey, Result<Arc<dyn Authorizer>, Refusal>),
    /// The store made records durable that some connection's acknowledgement awaits.
    Durable,
    /// The delivery backlog drained: resume publishers held back for overload.
    Drained,
    /// The broker is stopping: close every connection and end the thread.
    Shutdown,
}

pub struct Mailbox {
    state: Mutex<State>,
    waker: mio::Waker,
    /// The lowest store sequence number a connection of this worker waits for
    /// (`u64::MAX`: none): the store's writer posts [`Cmd::Durable`] only past it.
    durable_wanted: AtomicU64,
}

#[derive(Default)]
struct State {
    cmds: Vec<Cmd>,
    /// The worker is in (or entering) `epoll_wait` and needs the waker.
    parked: bool,
}

impl Mailbox {
    pub fn new(waker: mio::Waker) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            waker,
            durable_wanted: AtomicU64::new(u64::MAX),
        })
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    pub fn post(&self, cmd: Cmd) {
        let mut st = self.lock();
        st.cmds.push(cmd);
        if std::mem::take(&mut st.parked) {
            drop(st);
            if let Err(e) = self.waker.wake() {
                tracing::error!(error = %e, "cannot wake a network worker");
            }
        }
    }

    /// The worker is about to wait: returns false (and does not park) when commands are
    /// already waiting.
    pub fn park(&self) -> bool {
        let mut st = self.lock();
        st.parked = st.cmds.is_empty();
        st.parked
    }

    /// Takes the waiting commands into `into` (which the worker reuses) and unparks.
    pub fn take(&self, into: &mut Vec<Cmd>) {
        let mut st = self.lock();
        st.parked = false;
        std::mem::swap(&mut st.cmds, into);
    }

    /// A connection of this worker waits for store sequence number `lsn`.
    pub fn want_durable(&self, lsn: u64) {
        self.durable_wanted.fetch_min(lsn, Ordering::AcqRel);
    }

    /// The worker recomputed what it waits for (`u64::MAX`: nothing).
    pub fn set_durable_wanted(&self, lsn: u64) {
        self.durable_wanted.store(lsn, Ordering::Release);
    }

    /// Called by the store's writer after each commit up to `lsn`.
    pub fn durable(&self, lsn: u64) {
        let wanted = self.durable_wanted.load(Ordering::Acquire);
        if wanted <= lsn
            && self
                .durable_wanted
                .compare_exchange(wanted, u64::MAX, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.post(Cmd::Durable);
        }
    }
}
