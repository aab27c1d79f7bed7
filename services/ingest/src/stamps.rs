//! Receive times for readings that come without `ts`, one source for every door.
//!
//! HTTP (`/api/v1/readings`, SenML, `/sensor`) and TCP lines all stamp through one
//! [`Stamps`]: a [`lentera_protocol::Stamper`] behind a mutex, so three readings of one
//! device in one request get three distinct microseconds (they were one millisecond, and
//! the historian's `(device, metric, ts)` key kept one of them). With several ingest
//! instances each owns one residue class (`ingest.instance` of `ingest.instances`), so two
//! instances never hand one device the same microsecond either.
//!
//! A request takes the lock once ([`Stamps::receipt`]) and stamps all its readings under
//! it; the receipt holds no lock across an `.await`.

use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use lentera_protocol::{DeviceId, Stamper};

/// Cheap to clone; every clone shares the one stamper.
#[derive(Clone, Debug)]
pub struct Stamps {
    stamper: Arc<Mutex<Stamper>>,
}

impl Default for Stamps {
    fn default() -> Self {
        Self::new(0, 1)
    }
}

impl Stamps {
    /// The stamper of instance `instance` of `instances` (validated by the settings).
    pub fn new(instance: u32, instances: u32) -> Self {
        Self {
            stamper: Arc::new(Mutex::new(Stamper::new(instance, instances))),
        }
    }

    /// Locks the stamper for one request, received now.
    pub fn receipt(&self) -> Receipt<'_> {
        let stamper = self.stamper.lock().unwrap_or_else(|e| e.into_inner());
        Receipt {
            stamper,
            now: Utc::now(),
        }
    }
}

/// One request's hold on the stamper, with its receive time.
pub struct Receipt<'a> {
    stamper: MutexGuard<'a, Stamper>,
    now: DateTime<Utc>,
}

impl Receipt<'_> {
    /// When the request arrived: what the limits compare `ts` with.
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// A receive time for one reading of `device`, unique for the device.
    pub fn stamp(&mut self, device: &DeviceId) -> DateTime<Utc> {
        self.stamper.stamp(device.as_str(), self.now)
    }

    /// The stamper itself, for code that takes one (`&mut Stamper`).
    pub fn stamper(&mut self) -> &mut Stamper {
        &mut self.stamper
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_request_hands_one_device_distinct_microseconds() {
        let stamps = Stamps::default();
        let d = DeviceId::parse("gh-1").unwrap();
        let mut r = stamps.receipt();
        let a = r.stamp(&d);
        let b = r.stamp(&d);
        assert!(b > a);
        assert_eq!((b - a).num_microseconds(), Some(1));
        drop(r);
        // The next request continues after the last stamp, even within one microsecond.
        let c = stamps.receipt().stamp(&d);
        assert!(c > b);
    }

    #[test]
    fn an_instance_stamps_only_its_residue_class() {
        let stamps = Stamps::new(2, 3);
        let d = DeviceId::parse("gh-1").unwrap();
        let mut r = stamps.receipt();
        for _ in 0..10 {
            assert_eq!(r.stamp(&d).timestamp_micros().rem_euclid(3), 2);
        }
    }
}
