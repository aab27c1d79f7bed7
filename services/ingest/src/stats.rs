//! The service's Prometheus counters.
//!
//! Rejection codes are a closed set of `&'static str`s, but listing them all up front
//! would duplicate every module's codes here; instead a code's counter is registered the
//! first time it is seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lentera_bootstrap::{Counter, Gauge, Observability};

#[derive(Clone)]
pub struct Stats {
    obs: Observability,
    /// Readings acknowledged by the broker, via HTTP.
    pub accepted_http: Counter,
    /// Readings acknowledged by the broker, via TCP.
    pub accepted_tcp: Counter,
    /// Open TCP connections.
    pub tcp_connections: Gauge,
    /// Lamp commands written to bound TCP connections.
    pub relayed: Counter,
    /// Readings without `ts` that got the receive time of an earlier, in-doubt attempt
    /// (a board's retry after a retryable error; see `in_doubt`).
    pub stamps_reused: Counter,
    /// Receive times kept in doubt: readings answered with a retryable error while the
    /// broker may have them.
    pub stamps_in_doubt: Counter,
    rejections: Arc<Mutex<HashMap<&'static str, Counter>>>,
}

impl Stats {
    pub fn new(obs: &Observability) -> Self {
        let accepted = |transport| {
            obs.counter(
                "readings_accepted_total",
                "Readings acknowledged by the MQTT broker.",
                &[("transport", transport)],
            )
        };
        Self {
            accepted_http: accepted("http"),
            accepted_tcp: accepted("tcp"),
            tcp_connections: obs.gauge("tcp_connections", "Open TCP connections."),
            relayed: obs.counter(
                "lamp_commands_relayed_total",
                "Lamp commands written to TCP-bound boards.",
                &[],
            ),
            stamps_reused: obs.counter(
                "stamps_reused_total",
                "Readings without ts given the receive time of an in-doubt earlier attempt.",
                &[],
            ),
            stamps_in_doubt: obs.counter(
                "stamps_in_doubt_total",
                "Receive times kept after a retryable error while the broker may have the reading.",
                &[],
            ),
            rejections: Arc::default(),
            obs: obs.clone(),
        }
    }

    /// Counts one refused request (HTTP) or line (TCP) under its stable error code.
    pub fn reject(&self, code: &'static str) {
        let mut map = self.rejections.lock().unwrap();
        map.entry(code)
            .or_insert_with(|| {
                self.obs.counter(
                    "rejections_total",
                    "Requests and lines refused, by error code.",
                    &[("code", code)],
                )
            })
            .inc();
    }
}
