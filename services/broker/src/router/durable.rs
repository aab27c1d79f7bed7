//! The router's side of durability: starting from recovered state, and writing the live
//! state as a compaction snapshot.

use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Instant;

use super::sessions::expiry_deadline;
use super::{Limits, Message, Owed, Router, Session, State};
use crate::metrics::Metrics;
use crate::outbox::Pressure;
use crate::quota::Budget;
use crate::store::recover::Recovered;
use crate::store::{Record, Store, record};
use crate::telemetry::Telemetry;

impl Router {
    /// A router starting from recovered state, writing changes to `store`.
    pub fn with_store(metrics: Metrics, store: Store, rec: Recovered, limits: Limits) -> Self {
        let mut st = State {
            retained_may_expire: rec.retained.values().any(Message::expires),
            retained: rec.retained,
            ..State::default()
        };
        // The restart resets the expiry clock of offline sessions: the downtime is the
        // broker's, not the client's.
        let now = Instant::now();
        let budget = Budget::new(
            limits.session_queue_bytes,
            limits.queued_bytes_total,
            &metrics,
        );
        for (client, r) in rec.sessions {
            let mut s = Session::new(r.expiry.min(limits.max_session_expiry));
            s.stored = true;
            s.expires_at = expiry_deadline(now, s.expiry);
            for sub in r.subs.values() {
                st.index.insert(&client, &sub.filter, sub.into());
            }
            s.subs = r.subs;
            s.next_seq = r.owed.keys().next_back().map_or(1, |k| k + 1);
            s.owed = r
                .owed
                .into_iter()
                // Whether it was sent before the restart is unknown, so the resend says
                // DUP=1: required for a re-delivery [MQTT-3.3.1-1], harmless otherwise.
                .map(|(seq, msg)| Owed {
                    seq,
                    msg,
                    dispatched: true,
                    released: r.released.contains(&seq),
                })
                .collect();
            s.owed_may_expire = s.owed.iter().any(|o| o.msg.expires());
            s.stamps = super::stamps::Stamps::recovered(&r.stamps);
            if let Some(t) = s.expires_at {
                st.expiries.insert((t, client.clone()));
            }
            s.watch_offline(&client, &mut st.watch);
            // Accepted before the restart: owed whatever the bounds say now.
            s.owed_bytes = s.owed.iter().map(|o| o.msg.cost()).sum();
            budget.force_take(s.owed_bytes);
            st.sessions.insert(client, Box::new(s));
        }
        metrics.retained.set(st.retained.len() as i64);
        metrics.sessions.set(st.sessions.len() as i64);
        let router = Self {
            state: Arc::new(Mutex::new(st)),
            // Publishers are held back before one subscriber that keeps up with its
            // client but not with the publishers reaches its own bound and drops.
            pressure: Arc::new(Pressure::new(limits.session_queue_capacity / 2)),
            budget,
            telemetry: Arc::new(Telemetry::disabled(&metrics)),
            metrics,
            store,
            limits,
        };
        // Start from a compact log: the replayed history collapses to the live state.
        router.compact(&mut router.lock());
        router
    }

    /// Replaces the log with the live state: retained messages, then each persistent
    /// session with its subscriptions, owed messages and remembered stamps.
    pub(super) fn compact(&self, st: &mut State) {
        if !self.store.enabled() {
            return;
        }
        let mut buf = Vec::new();
        for m in st
            .retained
            .values()
            .filter(|m| !crate::auth::is_sys(&m.topic))
        {
            record::encode(&Record::Retain(m), &mut buf);
        }
        for (client, s) in &st.sessions {
            if !s.persistent() {
                continue;
            }
            record::encode(
                &Record::Session {
                    client,
                    expiry: s.expiry,
                },
                &mut buf,
            );
            for (raw, sub) in &s.subs {
                let rec = Record::Sub {
                    client,
                    filter: raw,
                    qos: sub.qos,
                    no_local: sub.no_local,
                    retain_as_published: sub.retain_as_published,
                    id: sub.id,
                };
                record::encode(&rec, &mut buf);
            }
            for o in &s.owed {
                let rec = Record::Enq {
                    client,
                    seq: o.seq,
                    msg: &o.msg,
                };
                record::encode(&rec, &mut buf);
                if o.released {
                    let rec = Record::Rel { client, seq: o.seq };
                    record::encode(&rec, &mut buf);
                }
            }
            for stamp in s.stamps.iter().flat_map(|m| m.iter()) {
                let rec = Record::Stamp {
                    client,
                    stamp: *stamp,
                };
                record::encode(&rec, &mut buf);
            }
        }
        self.store.compact(buf);
    }
}
