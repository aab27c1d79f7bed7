//! Broker-wide quotas that no single connection owns: the bytes queued for all sessions
//! together ([`Budget`]), and open connections per source address ([`PerIp`]).
//!
//! Both are counted with atomics or one short lock and never wait: a refusal is an
//! answer (a dropped message, a closed socket), counted and logged at a bounded rate.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lentera_bootstrap::{Counter, Gauge};
use parking_lot::Mutex;

use crate::metrics::Metrics;

/// How often at most an overflow is logged (each one is counted).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What a refused message was refused for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// The session's own `session_queue_bytes`.
    Session,
    /// `queued_bytes_total`.
    Total,
}

/// Bytes queued for all sessions (`broker.queued_bytes_total`), and the counters of
/// what the byte bounds refused or evicted. One per router, shared by every queue.
pub struct Budget {
    used: AtomicUsize,
    total: usize,
    /// `broker.session_queue_bytes`.
    pub per_session: usize,
    gauge: Gauge,
    refused_session: Counter,
    refused_total: Counter,
    evicted: Counter,
    /// Refusals not yet logged, and when the last log line was written.
    unlogged: AtomicU64,
    last_warn: Mutex<Option<Instant>>,
}

impl Budget {
    pub fn new(per_session: usize, total: usize, m: &Metrics) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            total: total.max(1),
            per_session: per_session.max(1),
            gauge: m.queued_bytes.clone(),
            refused_session: m.dropped_queue_bytes.clone(),
            refused_total: m.dropped_queued_bytes_total.clone(),
            evicted: m.dropped_qos0_evicted.clone(),
            unlogged: AtomicU64::new(0),
            last_warn: Mutex::new(None),
        })
    }

    /// No bound at all (unit tests of the queues).
    pub fn unbounded() -> Arc<Self> {
        let obs = lentera_bootstrap::Observability::new("broker-test");
        Self::new(usize::MAX, usize::MAX, &Metrics::new(&obs))
    }

    /// Takes `n` bytes if they fit under the total.
    pub fn try_take(&self, n: usize) -> bool {
        let ok = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|&after| after <= self.total)
            })
            .is_ok();
        if ok {
            self.publish_gauge();
        }
        ok
    }

    /// Takes `n` bytes whatever the total (messages recovered from the store: they
    /// were accepted before the restart and stay owed).
    pub fn force_take(&self, n: usize) {
        self.used.fetch_add(n, Ordering::AcqRel);
        self.publish_gauge();
    }

    /// Gives back `n` bytes taken before.
    pub fn give(&self, n: usize) {
        if n == 0 {
            return;
        }
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
        self.publish_gauge();
    }

    /// Bytes queued right now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    fn publish_gauge(&self) {
        self.gauge
            .set(self.used.load(Ordering::Relaxed).min(i64::MAX as usize) as i64);
    }

    /// An oldest QoS 0 message gave way to a newer message of its queue.
    pub fn evicted(&self) {
        self.evicted.inc();
    }

    /// A message was refused for session `client`: counted, and logged at most every
    /// [`WARN_EVERY`] with the number refused since the last line.
    pub fn refused(&self, why: Overflow, client: &str) {
        match why {
            Overflow::Session => self.refused_session.inc(),
            Overflow::Total => self.refused_total.inc(),
        }
        self.unlogged.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut last = self.last_warn.lock();
        if last.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            return;
        }
        *last = Some(now);
        drop(last);
        let refused = self.unlogged.swap(0, Ordering::Relaxed);
        let (bound, limit) = match why {
            Overflow::Session => ("broker.session_queue_bytes", self.per_session),
            Overflow::Total => ("broker.queued_bytes_total", self.total),
        };
        tracing::warn!(
            client_id = ?client,
            bound,
            limit,
            queued_bytes = self.used(),
            refused,
            "queue byte bound reached: messages refused for a session (counted in \
             messages_dropped_total; this line repeats at most every 10 s)"
        );
    }
}

/// Open connections per source address (`quota.max_connections_per_ip`), counted from
/// `accept` (so sockets that never send CONNECT count too) until the socket closes.
pub struct PerIp {
    max: usize,
    open: Mutex<HashMap<IpAddr, u32>>,
    /// Local addresses of the WebSocket bridge's own connections to the MQTT
    /// listener, registered before they connect: their peer is loopback, so they are
    /// not counted here (the bridge counts the WebSocket client's real address).
    bridged: Mutex<HashSet<SocketAddr>>,
    pub refused: Counter,
}

impl PerIp {
    /// `max` 0 = no limit.
    pub fn new(max: usize, refused: Counter) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::new(HashMap::new()),
            bridged: Mutex::new(HashSet::new()),
            refused,
        })
    }

    /// Counts a new connection from `ip`; false (nothing counted) when `ip` already has
    /// `max` open.
    pub fn acquire(&self, ip: IpAddr) -> bool {
        if self.max == 0 {
            return true;
        }
        let mut open = self.open.lock();
        let n = open.entry(ip).or_insert(0);
        if *n as usize >= self.max {
            if *n == 0 {
                open.remove(&ip);
            }
            drop(open);
            self.refused.inc();
            return false;
        }
        *n += 1;
        true
    }

    /// A connection accepted from `peer`: `None` when refused, `Some(None)` for the
    /// WebSocket bridge (not counted), `Some(Some(ip))` counted (release it).
    pub fn admit(&self, peer: SocketAddr) -> Option<Option<IpAddr>> {
        if self.bridged.lock().remove(&peer) {
            return Some(None);
        }
        let ip = peer.ip().to_canonical();
        self.acquire(ip).then_some(Some(ip))
    }

    /// The WebSocket bridge is about to connect from `local` (see `bridged`).
    pub fn bridge_from(&self, local: SocketAddr) {
        self.bridged.lock().insert(local);
    }

    /// That bridge connection failed before it was accepted.
    pub fn bridge_failed(&self, local: SocketAddr) {
        self.bridged.lock().remove(&local);
    }

    /// A connection from `ip` counted by [`PerIp::acquire`] closed.
    pub fn release(&self, ip: IpAddr) {
        if self.max == 0 {
            return;
        }
        let mut open = self.open.lock();
        if let Some(n) = open.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_beyond_its_total_and_frees_what_is_given_back() {
        let obs = lentera_bootstrap::Observability::new("broker-test");
        let b = Budget::new(10, 100, &Metrics::new(&obs));
        assert!(b.try_take(60));
        assert!(!b.try_take(41));
        assert!(b.try_take(40));
        b.give(50);
        assert_eq!(b.used(), 50);
        b.refused(Overflow::Total, "gh-1");
        b.refused(Overflow::Total, "gh-1");
        assert_eq!(b.refused_total.get(), 2);
    }

    #[test]
    fn per_ip_counts_each_address_on_its_own() {
        let obs = lentera_bootstrap::Observability::new("broker-test");
        let counter = || obs.counter("refused", "test", &[]);
        let p = PerIp::new(2, counter());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(p.acquire(a) && p.acquire(a));
        assert!(!p.acquire(a));
        assert!(p.acquire(b));
        p.release(a);
        assert!(p.acquire(a));
        assert_eq!(p.refused.get(), 1);
        assert!(PerIp::new(0, counter()).acquire(a), "0 = no limit");
    }
}
