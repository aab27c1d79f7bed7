//! One network worker: an edge-triggered `epoll` loop (mio) over a slab of connections.
//!
//! Each turn of the loop: wait for readiness or a command; read what became readable
//! (a bounded amount per connection, so one flooding publisher cannot starve the
//! others) and hand each complete packet to its protocol handler; carry out commands
//! from other threads (new connections, outbox ready, takeover, durable, drained,
//! shutdown); run the timers that are due; then write every connection that has output,
//! once — so a burst of messages for one subscriber leaves in one system call.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use ntex_bytes::{Buf, BytesMut};
use slab::Slab;

use crate::error::Close;
use crate::net::conn::{Conn, FrameError, Phase, clock_secs, frame_len};
use crate::net::mailbox::{Cmd, ConnKey, Mailbox};
use crate::net::transport::Transport;
use crate::net::{Cx, Listener, Lists};
use crate::session::{self, Flow, Shared};

const WAKER: Token = Token(usize::MAX);
/// Listener tokens count down from here; connection tokens are slab indexes.
const LISTENERS: usize = usize::MAX - 16;
/// Shared by every connection of the worker; one read never takes more.
const SCRATCH: usize = 64 * 1024;
/// Reads per connection per turn before the others get theirs.
const READ_BUDGET: usize = 4;
/// How often held publishers and blocked subscribers are looked at.
const TICK: Duration = Duration::from_millis(100);
/// How often deadlines (CONNECT timeout, keep-alive) are checked: MQTT counts
/// keep-alive in seconds.
const SWEEP: Duration = Duration::from_secs(1);
/// A connection closing with a last packet to flush gets this long.
const LINGER: Duration = Duration::from_secs(2);

pub struct Worker {
    poll: Poll,
    events: Events,
    /// Tokens and readiness copied out of `events`, so handlers may borrow the worker:
    /// readable, writable, the peer closed (or failed).
    ready: Vec<(Token, bool, bool, bool)>,
    mailbox: Arc<Mailbox>,
    cmds: Vec<Cmd>,
    shared: Arc<Shared>,
    conns: Slab<Conn>,
    next_gen: u32,
    lists: Lists,
    scratch: Box<[u8]>,
    /// Connections with output to write at the end of this turn.
    dirty: Vec<usize>,
    /// Those of them with messages for subscribers, written first: a publisher's
    /// PUBACK can wait the few microseconds a write to a subscriber takes, the message
    /// is what someone is waiting for (on loopback a write runs the receiver's TCP
    /// stack, so the order shows in latency).
    dirty_first: Vec<usize>,
    /// Connections whose read budget ran out: read again next turn.
    unread: Vec<usize>,
    /// Accepting (first worker only): listeners, and every worker to deal connections to.
    listeners: Vec<(mio::net::TcpListener, Option<Arc<rustls::ServerConfig>>)>,
    peers: Vec<Arc<Mailbox>>,
    turn: usize,
    /// Accepting stopped (out of file descriptors) until then.
    accept_paused: Option<Instant>,
    now: Instant,
    next_tick: Instant,
    next_sweep: Instant,
    /// Shutting down: no more accepting; ends once every connection is gone.
    stopping: Option<Instant>,
}

impl Worker {
    pub fn new(shared: Arc<Shared>) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKER)?;
        let now = Instant::now();
        Ok(Self {
            poll,
            events: Events::with_capacity(1024),
            ready: Vec::new(),
            mailbox: Mailbox::new(waker),
            cmds: Vec::new(),
            shared,
            conns: Slab::new(),
            next_gen: 0,
            lists: Lists::default(),
            scratch: vec![0; SCRATCH].into_boxed_slice(),
            dirty: Vec::new(),
            dirty_first: Vec::new(),
            unread: Vec::new(),
            listeners: Vec::new(),
            peers: Vec::new(),
            turn: 0,
            accept_paused: None,
            now,
            next_tick: now + TICK,
            next_sweep: now + SWEEP,
            stopping: None,
        })
    }

    pub fn mailbox(&self) -> &Arc<Mailbox> {
        &self.mailbox
    }

    /// Makes this worker the acceptor for `listeners`, dealing connections to `peers`.
    pub fn listen(&mut self, listeners: Vec<Listener>, peers: Vec<Arc<Mailbox>>) -> io::Result<()> {
        for (i, l) in listeners.into_iter().enumerate() {
            l.listener.set_nonblocking(true)?;
            let mut listener = mio::net::TcpListener::from_std(l.listener);
            self.poll.registry().register(
                &mut listener,
                Token(LISTENERS - i),
                Interest::READABLE,
            )?;
            self.listeners.push((listener, l.tls));
        }
        self.peers = peers;
        Ok(())
    }

    pub fn run(mut self) {
        loop {
            let timeout = self.timeout();
            let timeout = match timeout {
                Some(t) if t.is_zero() => Some(t),
                t if self.mailbox.park() => t,
                _ => Some(Duration::ZERO),
            };
            if let Err(e) = self.poll.poll(&mut self.events, timeout)
                && e.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!(error = %e, "network worker cannot poll; stopping it");
                return;
            }
            self.now = Instant::now();
            self.ready.clear();
            self.ready.extend(self.events.iter().map(|e| {
                let closed = e.is_read_closed() || e.is_error();
                (
                    e.token(),
                    e.is_readable() || closed,
                    e.is_writable(),
                    closed,
                )
            }));
            self.commands();
            for i in 0..self.ready.len() {
                let (token, readable, writable, closed) = self.ready[i];
                match token {
                    WAKER => {}
                    Token(t) if t > LISTENERS - 16 && t <= LISTENERS => self.accept(LISTENERS - t),
                    Token(idx) => {
                        if writable {
                            self.on_writable(idx);
                        }
                        if closed && let Some(c) = self.conns.get_mut(idx) {
                            c.peer_closed = true;
                        }
                        if readable {
                            self.read(idx);
                            self.deliver_now();
                        }
                    }
                }
            }
            for idx in std::mem::take(&mut self.unread) {
                self.read(idx);
                self.deliver_now();
            }
            if self.now >= self.next_tick {
                self.next_tick = self.now + TICK;
                self.tick();
            }
            if self.now >= self.next_sweep {
                self.next_sweep = self.now + SWEEP;
                self.sweep();
            }
            self.commands();
            self.flush_dirty();
            if let Some(deadline) = self.stopping
                && (self.conns.is_empty() || self.now >= deadline)
            {
                return;
            }
        }
    }

    /// Carries out what other threads (and this one) posted.
    fn commands(&mut self) {
        let mut cmds = std::mem::take(&mut self.cmds);
        // A few rounds: handling a command may post more (a will routed to a
        // subscriber here), bounded so a busy mailbox cannot starve the sockets.
        for _ in 0..4 {
            self.mailbox.take(&mut cmds);
            if cmds.is_empty() {
                break;
            }
            for cmd in cmds.drain(..) {
                self.command(cmd);
            }
        }
        self.cmds = cmds;
    }

    /// After one connection's input: what it routed to subscribers of this worker, and
    /// its acknowledgements, are written now rather than after every other connection's
    /// input of this turn (a read holds hundreds of packets under load, so this still
    /// writes in batches; at modest rates it saves the latency of the others' reads).
    fn deliver_now(&mut self) {
        self.commands();
        self.flush_dirty();
    }

    /// How long the next wait may be.
    fn timeout(&self) -> Option<Duration> {
        if !self.unread.is_empty() || !self.dirty.is_empty() {
            return Some(Duration::ZERO);
        }
        let mut until = self.next_sweep;
        if !self.lists.held.is_empty() || !self.lists.blocked.is_empty() || self.stopping.is_some()
        {
            until = until.min(self.next_tick);
        }
        if let Some(t) = self.accept_paused {
            until = until.min(t);
        }
        Some(until.saturating_duration_since(Instant::now()))
    }

    fn cx(&mut self, idx: usize) -> Option<(&mut Conn, Cx<'_>)> {
        let conn = self.conns.get_mut(idx)?;
        let key = ConnKey {
            index: idx as u32,
            generation: conn.generation,
        };
        let cx = Cx {
            shared: &self.shared,
            now: self.now,
            key,
            mailbox: &self.mailbox,
            lists: &mut self.lists,
        };
        Some((conn, cx))
    }

    fn mark_dirty(&mut self, idx: usize) {
        if let Some(c) = self.conns.get_mut(idx)
            && !c.dirty
        {
            c.dirty = true;
            self.dirty.push(idx);
        }
    }

    // ---- accepting ----

    fn accept(&mut self, i: usize) {
        if self.stopping.is_some() || self.accept_paused.is_some_and(|t| self.now < t) {
            return;
        }
        self.accept_paused = None;
        loop {
            let Some((listener, tls)) = self.listeners.get(i) else {
                return;
            };
            match listener.accept() {
                Ok((sock, peer)) => {
                    // Per source address, counted from accept: a socket that never
                    // sends CONNECT holds a file descriptor too. Over the cap it is
                    // closed at once — cheaper than reading a CONNECT to refuse it.
                    let ip = match self.shared.per_ip.admit(peer) {
                        Some(ip) => ip,
                        None => {
                            tracing::debug!(%peer, "connection limit per address reached");
                            drop(sock);
                            continue;
                        }
                    };
                    // Replies and deliveries are written once per turn already: Nagle
                    // would only add latency.
                    let _ = sock.set_nodelay(true);
                    let transport = match tls {
                        Some(cfg) => match Transport::tls(sock, cfg) {
                            Ok(t) => t,
                            Err(e) => {
                                tracing::warn!(%peer, error = %e, "TLS session not created");
                                if let Some(ip) = ip {
                                    self.shared.per_ip.release(ip);
                                }
                                continue;
                            }
                        },
                        None => Transport::Tcp(sock),
                    };
                    let to = self.turn % self.peers.len().max(1);
                    self.turn = self.turn.wrapping_add(1);
                    if to == 0 || self.peers.len() <= 1 {
                        self.add(transport, ip);
                    } else {
                        self.peers[to].post(Cmd::Accept(transport, ip));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of file descriptors, most likely: stop for a moment rather than
                    // spin; the pending connections wait in the backlog.
                    tracing::warn!(error = %e, "accept failed; pausing accepts for 100 ms");
                    self.accept_paused = Some(self.now + TICK);
                    self.listeners_retry();
                    return;
                }
            }
        }
    }

    /// Edge-triggered listeners do not report again what is already waiting: after a
    /// pause, the next turn accepts without an event.
    fn listeners_retry(&mut self) {
        // `tick` calls `accept` for every listener once the pause is over.
    }

    fn add(&mut self, mut io: Transport, ip: Option<std::net::IpAddr>) {
        let entry = self.conns.vacant_entry();
        let idx = entry.key();
        if let Err(e) = self.poll.registry().register(
            io.socket(),
            Token(idx),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!(error = %e, "cannot register a connection");
            if let Some(ip) = ip {
                self.shared.per_ip.release(ip);
            }
            return;
        }
        self.next_gen = self.next_gen.wrapping_add(1);
        let deadline = self.now + self.shared.connect_timeout;
        entry.insert(Conn::new(io, self.next_gen, deadline, ip));
    }

    // ---- reading ----

    fn read(&mut self, idx: usize) {
        if self.conns.get(idx).is_some_and(|c| c.draining) {
            return self.discard_input(idx);
        }
        for _ in 0..READ_BUDGET {
            let Some(conn) = self.conns.get_mut(idx) else {
                return;
            };
            if paused(conn) {
                conn.more_to_read = true;
                return;
            }
            match conn.io.read(&mut self.scratch) {
                Ok(0) => return self.close(idx, Close::Gone),
                Ok(n) => {
                    // A short read from a TCP socket emptied it: readiness is
                    // edge-triggered, so new data brings a new event, and the read
                    // that would only say "would block" is saved (one system call per
                    // packet burst, which is most of the latency at modest rates).
                    // Not once the peer's FIN was reported: the end-of-file waits
                    // behind the data and nothing new will arrive to announce it (a
                    // flooding client that dies would stay "connected" until its
                    // keep-alive ran out).
                    let drained = n < self.scratch.len() && conn.io.is_plain() && !conn.peer_closed;
                    if let Err(why) = self.feed(idx, n) {
                        return self.close(idx, why);
                    }
                    if drained {
                        if let Some(conn) = self.conns.get_mut(idx) {
                            conn.more_to_read = false;
                        }
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.more_to_read = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(error = %e, "connection read failed");
                    return self.close(idx, Close::Gone);
                }
            }
        }
        if let Some(conn) = self.conns.get_mut(idx) {
            conn.more_to_read = true;
            self.unread.push(idx);
        }
    }

    /// Handles the `n` bytes just read into the scratch buffer.
    fn feed(&mut self, idx: usize, n: usize) -> Result<(), Close> {
        let max = self.shared.max_packet_bytes;
        let Worker {
            conns,
            scratch,
            shared,
            mailbox,
            lists,
            now,
            ..
        } = self;
        let Some(conn) = conns.get_mut(idx) else {
            return Ok(());
        };
        let mut cx = Cx {
            shared,
            now: *now,
            key: ConnKey {
                index: idx as u32,
                generation: conn.generation,
            },
            mailbox,
            lists,
        };
        let data = &scratch[..n];
        let result = if let Some(p) = &mut conn.partial {
            p.extend_from_slice(data);
            process_partial(conn, &mut cx, max)
        } else {
            let mut at = 0;
            let mut result = Ok(());
            while at < data.len() {
                match frame_len(&data[at..], max) {
                    Ok(Some(len)) => {
                        // Each packet gets its own allocation: a payload kept for long
                        // (retained, owed to an offline session) pins only itself.
                        let frame = BytesMut::copy_from_slice(&data[at..at + len]);
                        match session::frame(conn, frame, &mut cx) {
                            Ok(Flow::Continue) => at += len,
                            Ok(Flow::Pause) => break,
                            Err(why) => return Err(why),
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        result = Err(frame_error(conn, e));
                        break;
                    }
                }
            }
            if at < data.len() && result.is_ok() {
                conn.partial = Some(BytesMut::copy_from_slice(&data[at..]));
                conn.partial_since = clock_secs(*now);
            }
            result
        };
        if !conn.out.is_empty() && !conn.dirty {
            conn.dirty = true;
            self.dirty.push(idx);
        }
        result
    }

    /// Goes on with input that waited (a held publish, an authentication, replies).
    fn resume(&mut self, idx: usize) {
        let max = self.shared.max_packet_bytes;
        let result = {
            let Some((conn, mut cx)) = self.cx(idx) else {
                return;
            };
            if paused(conn) {
                return;
            }
            process_partial(conn, &mut cx, max)
        };
        if let Err(why) = result {
            return self.close(idx, why);
        }
        self.mark_dirty(idx);
        if let Some(conn) = self.conns.get(idx)
            && !paused(conn)
            && conn.more_to_read
        {
            self.read(idx);
        }
    }

    // ---- writing ----

    fn on_writable(&mut self, idx: usize) {
        self.flush(idx);
        self.pump(idx);
    }

    /// Moves what the connection's outbox holds into its output, as far as its window
    /// and socket allow.
    fn pump(&mut self, idx: usize) {
        let Some((conn, mut cx)) = self.cx(idx) else {
            return;
        };
        let Phase::Active(a) = &mut conn.phase else {
            return;
        };
        a.pump(&mut conn.out, &mut cx);
        if !conn.out.is_empty() {
            self.mark_dirty(idx);
            self.dirty_first.push(idx);
        }
    }

    fn flush_dirty(&mut self) {
        for idx in std::mem::take(&mut self.dirty_first) {
            if self.conns.get(idx).is_some_and(|c| c.dirty) {
                if let Some(c) = self.conns.get_mut(idx) {
                    c.dirty = false;
                }
                self.flush(idx);
            }
        }
        for idx in std::mem::take(&mut self.dirty) {
            // Skipped if written above (or closed meanwhile).
            let Some(c) = self.conns.get_mut(idx).filter(|c| c.dirty) else {
                continue;
            };
            c.dirty = false;
            self.flush(idx);
        }
    }

    fn flush(&mut self, idx: usize) {
        let Some(conn) = self.conns.get_mut(idx) else {
            return;
        };
        match conn.flush() {
            Ok(true) if matches!(conn.phase, Phase::Closing) => self.drain(idx),
            // The socket took everything: no writable event will come, so a flow that
            // waited for room in the output goes on now.
            Ok(true) if conn.active().is_some_and(|a| a.waits_for_output()) => self.pump(idx),
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "connection write failed");
                self.close(idx, Close::Gone);
            }
        }
    }

    // ---- commands and timers ----

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Accept(io, ip) => {
                if self.stopping.is_none() {
                    self.add(io, ip);
                } else if let Some(ip) = ip {
                    self.shared.per_ip.release(ip);
                }
            }
            Cmd::Ready(key) => {
                if self.is(key) {
                    self.pump(key.index as usize);
                }
            }
            Cmd::Kick(key, why) => {
                if self.is(key) {
                    tracing::info!(reason = why.label(), "connection closed by the broker");
                    self.close(key.index as usize, why);
                }
            }
            Cmd::AuthDone(key, answer) => {
                if self.is(key) {
                    let idx = key.index as usize;
                    let result = match self.cx(idx) {
                        Some((conn, mut cx)) => session::authenticated(conn, answer, &mut cx),
                        None => Ok(()),
                    };
                    match result {
                        Ok(()) => {
                            self.mark_dirty(idx);
                            self.resume(idx);
                        }
                        Err(why) => self.close(idx, why),
                    }
                }
            }
            Cmd::Durable => self.durable(),
            Cmd::Drained => self.resume_held(),
            Cmd::Shutdown => self.shutdown(),
        }
    }

    /// Whether `key` still names a live connection of this worker.
    fn is(&self, key: ConnKey) -> bool {
        self.conns
            .get(key.index as usize)
            .is_some_and(|c| c.generation == key.generation)
    }

    /// Sends the acknowledgements whose records are now on disk.
    fn durable(&mut self) {
        loop {
            let durable = self.shared.router.store().durable_seq();
            let mut waiting = std::mem::take(&mut self.lists.durable);
            waiting.sort_unstable();
            waiting.dedup();
            let mut still = Vec::new();
            let mut wanted = u64::MAX;
            for idx in waiting {
                let Some(conn) = self.conns.get_mut(idx) else {
                    continue;
                };
                let Phase::Active(a) = &mut conn.phase else {
                    continue;
                };
                let released = a.release_replies(durable, &mut conn.out);
                if let Some(next) = a.next_reply_lsn() {
                    wanted = wanted.min(next);
                    still.push(idx);
                }
                if released {
                    self.mark_dirty(idx);
                    // Input paused on a full window of unacknowledged publishes goes on.
                    self.resume(idx);
                }
            }
            self.lists.durable.extend(still);
            let wanted = self.lists.durable.iter().fold(wanted, |w, &idx| {
                self.conns
                    .get(idx)
                    .and_then(|c| match &c.phase {
                        Phase::Active(a) => a.next_reply_lsn(),
                        _ => None,
                    })
                    .map_or(w, |l| w.min(l))
            });
            self.mailbox.set_durable_wanted(wanted);
            // A commit between reading `durable` and setting `wanted` posted nothing.
            if wanted == u64::MAX || wanted > self.shared.router.store().durable_seq() {
                return;
            }
        }
    }

    /// Held publishers that may go on now.
    fn resume_held(&mut self) {
        let now = self.now;
        for idx in std::mem::take(&mut self.lists.held) {
            let Some(a) = self.conns.get_mut(idx).and_then(Conn::active) else {
                continue;
            };
            if a.held_since.is_none() {
                continue;
            }
            if a.try_release(now) {
                self.resume(idx);
            } else {
                self.lists.held.push(idx);
            }
        }
    }

    fn tick(&mut self) {
        if !self.lists.held.is_empty() {
            self.resume_held();
        }
        let now = self.now;
        self.lists.blocked.retain(|&idx| {
            self.conns
                .get_mut(idx)
                .and_then(Conn::active)
                .is_some_and(|a| a.check_stalled(now))
        });
        if self.accept_paused.is_some_and(|t| now >= t) {
            for i in 0..self.listeners.len() {
                self.accept(i);
            }
        }
    }

    /// Closes connections whose deadline passed: CONNECT never came, keep-alive, or a
    /// packet begun more than `packet_timeout` ago is still not complete.
    fn sweep(&mut self) {
        let now = self.now;
        let timeout = self.shared.packet_timeout;
        let due: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline <= now || c.packet_overdue(now, timeout))
            .map(|(i, _)| i)
            .collect();
        for idx in due {
            let conn = &self.conns[idx];
            if conn.deadline > now && !matches!(conn.phase, Phase::Closing) {
                tracing::debug!("packet not complete in time");
                self.shared.router.metrics().closed_packet_timeout.inc();
                let secs = timeout.as_secs().min(u16::MAX.into()) as u16;
                self.close(idx, Close::PacketTimeout(secs));
                continue;
            }
            let why = match self.conns[idx].phase {
                Phase::Active(_) => Close::KeepAlive,
                Phase::Closing => {
                    self.drop_conn(idx);
                    continue;
                }
                _ => {
                    tracing::debug!("no CONNECT in time");
                    Close::Gone
                }
            };
            self.close(idx, why);
        }
    }

    fn shutdown(&mut self) {
        let limit = self.shared.shutdown_timeout.min(LINGER);
        self.stopping = Some(self.now + limit);
        for (listener, _) in &mut self.listeners {
            let _ = self.poll.registry().deregister(listener);
        }
        self.listeners.clear();
        let all: Vec<usize> = self.conns.iter().map(|(i, _)| i).collect();
        for idx in all {
            self.close(idx, Close::Shutdown);
        }
    }

    // ---- closing ----

    /// Ends a connection: the session lets go of it (publishing its will unless it
    /// ended normally), the client hears why (MQTT 5), and the socket closes once its
    /// last bytes are out (or after [`LINGER`]).
    pub fn close(&mut self, idx: usize, why: Close) {
        let Some(conn) = self.conns.get_mut(idx) else {
            return;
        };
        if matches!(conn.phase, Phase::Closing) {
            return self.drop_conn(idx);
        }
        tracing::debug!(reason = why.label(), "closing connection");
        if let Phase::Active(a) = std::mem::replace(&mut conn.phase, Phase::Closing) {
            a.end(&mut conn.out, &why, &self.shared);
        }
        conn.deadline = self.now + LINGER;
        conn.partial = None;
        if matches!(why, Close::Gone) {
            // The peer is gone already: nobody to say goodbye to.
            return self.drop_conn(idx);
        }
        match conn.flush() {
            Ok(false) => {}
            Ok(true) => self.drain(idx),
            Err(_) => self.drop_conn(idx),
        }
    }

    /// The last bytes of a closing connection are out: shut our direction and take the
    /// peer's input until it closes too (within the linger). Closing a socket with
    /// unread input makes the kernel send a reset, which may destroy the DISCONNECT
    /// the client has not read yet — the one packet that says why.
    fn drain(&mut self, idx: usize) {
        let Some(conn) = self.conns.get_mut(idx) else {
            return;
        };
        if conn.peer_closed {
            return self.drop_conn(idx);
        }
        if !conn.draining {
            conn.draining = true;
            conn.io.shutdown_write();
        }
        self.discard_input(idx);
    }

    /// Reads and drops a draining connection's input; its end (or an error) closes it.
    fn discard_input(&mut self, idx: usize) {
        for _ in 0..READ_BUDGET {
            let Some(conn) = self.conns.get_mut(idx) else {
                return;
            };
            match conn.io.read(&mut self.scratch) {
                Ok(0) => return self.drop_conn(idx),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.drop_conn(idx),
            }
        }
        // A client still sending: go on next turn (the linger bounds it all).
        self.unread.push(idx);
    }

    fn drop_conn(&mut self, idx: usize) {
        if self.conns.contains(idx) {
            let mut conn = self.conns.remove(idx);
            if let Phase::Active(a) = std::mem::replace(&mut conn.phase, Phase::Closing) {
                a.end(&mut conn.out, &Close::Gone, &self.shared);
            }
            let _ = self.poll.registry().deregister(conn.io.socket());
            conn.io.shutdown();
            if let Some(ip) = conn.ip {
                self.shared.per_ip.release(ip);
            }
        }
    }
}

/// Whether the connection's input waits (authentication, a held publish, closing).
fn paused(conn: &Conn) -> bool {
    match &conn.phase {
        Phase::Handshake => false,
        Phase::Authenticating(_) | Phase::Closing => true,
        Phase::Active(a) => a.input_paused(),
    }
}

/// Handles the complete packets at the start of the connection's partial buffer.
fn process_partial(conn: &mut Conn, cx: &mut Cx<'_>, max: usize) -> Result<(), Close> {
    while let Some(p) = &conn.partial {
        match frame_len(p, max) {
            Ok(Some(len)) => {
                let frame = BytesMut::copy_from_slice(&p[..len]);
                match session::frame(conn, frame, cx)? {
                    Flow::Continue => {
                        if let Some(p) = &mut conn.partial {
                            p.advance(len);
                            if p.is_empty() {
                                conn.partial = None;
                            } else {
                                // The next packet's clock starts now.
                                conn.partial_since = clock_secs(cx.now);
                            }
                        }
                    }
                    Flow::Pause => return Ok(()),
                }
            }
            Ok(None) => return Ok(()),
            Err(e) => return Err(frame_error(conn, e)),
        }
    }
    Ok(())
}

fn frame_error(conn: &Conn, e: FrameError) -> Close {
    use ntex_mqtt::v5::codec::DisconnectReasonCode as R;
    let _ = conn;
    match e {
        FrameError::Malformed => Close::protocol(R::MalformedPacket, "malformed remaining length"),
        FrameError::TooLarge(n) => Close::protocol(
            R::PacketTooLarge,
            format!("packet of {n} bytes is larger than the maximum packet size"),
        ),
    }
}
