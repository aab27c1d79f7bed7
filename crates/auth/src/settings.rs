//! `[auth]` and `[quota]` settings, read by broker, ingest and web.

use std::path::PathBuf;

use serde::Deserialize;

/// `[auth]` (environment `LENTERA_AUTH__<FIELD>`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AuthSettings {
    /// `true` = the service checks no identity at all (demo only; it logs a warning at
    /// every start). Closed by default.
    pub open: bool,
    /// Where the registry keeps a snapshot of the provisioned devices (ids, kinds, token
    /// hashes; mode 0600), so a restart during a PostgreSQL outage still admits them.
    pub cache_file: Option<PathBuf>,
    /// Full registry reload period, seconds (notifications cover changes in between;
    /// the reload catches any that were missed).
    pub refresh_secs: u64,
    /// Unknown tokens looked up in PostgreSQL per second, all clients together (so a
    /// device added a moment ago is admitted before its notification arrives, while
    /// strangers spraying random tokens cannot load the database). 0 = never look up
    /// (a new device then waits for its notification or the next reload).
    pub miss_lookups_per_sec: f64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            open: false,
            cache_file: None,
            refresh_secs: 60,
            miss_lookups_per_sec: 50.0,
        }
    }
}

/// `[quota]`, shared by broker and ingest (environment `LENTERA_QUOTA__<FIELD>`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct QuotaSettings {
    /// Sustained messages per second per device (one HTTP request, one TCP line, one
    /// MQTT PUBLISH), per process. 0 = unlimited.
    pub device_rate_per_sec: f64,
    /// Messages a device may send at once above the sustained rate.
    pub device_burst: u32,
    /// Concurrent connections from one source address (a village behind one NAT
    /// address is many boards).
    pub max_connections_per_ip: usize,
}

impl Default for QuotaSettings {
    fn default() -> Self {
        Self {
            // A board reports every few seconds; 10/s leaves room for a chatty one (and
            // for a lamp board's state changes) while a flood is cut at the door. The
            // burst covers a board back-filling what it buffered while offline.
            device_rate_per_sec: 10.0,
            device_burst: 100,
            max_connections_per_ip: 256,
        }
    }
}
