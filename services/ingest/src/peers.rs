//! Open connections per source address (`quota.max_connections_per_ip`), so one client
//! cannot take every connection slot of a door. Each door (HTTP, TCP) has its own count.
//!
//! A [`Slot`] is held for the connection's life and gives its place back when dropped,
//! however the connection ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct PeerLimit {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection's place in its address's count.
pub struct Slot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PeerLimit {
    /// `max` connections per address; 0 is taken as 1 (0 would refuse everyone).
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            open: Arc::default(),
        }
    }

    /// A slot for one more connection from `ip`, or `None` when it has `max` open.
    pub fn try_acquire(&self, ip: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().unwrap();
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            ip,
            open: self.open.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap();
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            // Forget idle addresses, so the map holds only addresses with connections.
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_gets_max_slots_and_dropping_one_frees_it() {
        let limit = PeerLimit::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = limit.try_acquire(a).unwrap();
        let _s2 = limit.try_acquire(a).unwrap();
        assert!(limit.try_acquire(a).is_none());
        assert!(
            limit.try_acquire(b).is_some(),
            "another address is unaffected"
        );
        drop(s1);
        assert!(limit.try_acquire(a).is_some());
    }
}
