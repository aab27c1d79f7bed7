//! Session lifecycle on the routing table: connect (takeover, clean start or resume),
//! disconnect, expiry, the subscriber's acknowledgements, and inbound QoS 2 dedupe.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    ConnId, Connected, Live, Message, NEVER, Outgoing, PendingWill, Registration, Router, Session,
    State, WillTiming,
};
use crate::outbox::Outbox;
use crate::store::Record;

impl Router {
    /// Registers a new connection, taking over the session of its client id: an existing
    /// connection is closed [MQTT-3.1.4-2]; its will is published now if it is an MQTT 5
    /// one with no delay, or whose session ends here (clean start), else discarded (see
    /// [`WillTiming::on_takeover`]). The session is resumed unless `clean_start` [MQTT-3.1.2-4/-5/-6]; a resumed
    /// session's owed messages are queued to the new connection at once, in order.
    ///
    /// `make_outbox` is called (under the lock, so nothing is routed in between) only
    /// when the session already has subscriptions or owed messages; otherwise the
    /// connection gets its queue with its first subscription ([`Router::attach`]).
    pub fn connect(&self, reg: Registration, make_outbox: impl FnOnce() -> Outbox) -> Connected {
        let mut guard = self.lock();
        let st = &mut *guard;
        st.next_id += 1;
        let id = st.next_id;
        let expiry = reg.expiry.min(self.limits.max_session_expiry);
        let client = reg.client_id;

        let mut present = false;
        // A delayed will of the session this connection replaces: published when the
        // session ends here (clean start), cancelled when it is resumed [MQTT-3.1.3-9].
        let mut will = None;
        if let Some(s) = st.sessions.get_mut(&client) {
            if let Some(old) = s.live.take() {
                st.conns.remove(&old.id);
                (old.kick)(crate::error::Close::TakenOver);
                self.metrics.takeovers.inc();
                let t = old.will_timing;
                if t.on_takeover && (t.delay == 0 || reg.clean_start) {
                    will = old.will.map(|w| (w, Instant::now(), t.expiry));
                }
            }
            let pending = s.pending_will.take().map(|w| *w);
            if reg.clean_start {
                will = will.or(pending);
                self.end_session(st, &client);
            } else {
                present = true;
            }
        }
        st.conns.insert(id, client.clone());
        let s = st.sessions.entry(client.clone()).or_insert_with(|| {
            self.metrics.sessions.inc();
            Box::new(Session::new(0))
        });
        s.expiry = expiry;
        if let Some(m) = &mut s.stamps {
            // Resumed: the last connection's PUBACKs may not have arrived.
            m.reconnected();
        }
        if let Some(t) = s.expires_at.take() {
            st.expiries.remove(&(t, client.clone()));
        }
        if s.persistent() {
            self.store.append(&Record::Session {
                client: &client,
                expiry,
            });
            s.stored = true;
        } else if std::mem::take(&mut s.stored) {
            // Resumed with expiry 0: the session now ends with this connection, so the
            // store forgets it; what it was owed is still delivered, untracked.
            self.store.append(&Record::EndSession { client: &client });
        }
        let outbox = (!s.subs.is_empty() || !s.owed.is_empty()).then(make_outbox);
        if let Some(ob) = &outbox {
            Self::resend_owed(&self.metrics, s, ob, false);
        }
        if !s.persistent() {
            s.owed.clear();
            self.budget.give(std::mem::take(&mut s.owed_bytes));
        }
        s.live = Some(Live {
            id,
            outbox,
            kick: reg.kick,
            device: reg.device,
            will: reg.will,
            will_timing: WillTiming::default(),
        });
        drop(guard);
        if let Some(w) = will {
            self.publish_will(w);
        }
        Connected {
            id,
            session_present: present,
        }
    }

    /// Device `id` may no longer connect (disabled, removed, token rotated): closes its
    /// live connection, if one authenticated as that device. Returns whether one did.
    pub fn revoke(&self, id: &str) -> bool {
        let st = self.lock();
        match st.sessions.get(id).and_then(|s| s.live.as_ref()) {
            Some(live) if live.device => {
                (live.kick)(crate::error::Close::Revoked);
                true
            }
            _ => false,
        }
    }

    /// The live device connections whose device `still_admitted` says no to are closed
    /// (after missed revocations). Returns how many.
    pub fn revoke_unless(&self, still_admitted: impl Fn(&str) -> bool) -> usize {
        let st = self.lock();
        let mut n = 0;
        for (client, s) in &st.sessions {
            if let Some(live) = &s.live
                && live.device
                && !still_admitted(client)
            {
                (live.kick)(crate::error::Close::Revoked);
                n += 1;
            }
        }
        n
    }

    /// Gives the live connection `conn` its queue, unless it has one: called before its
    /// first subscription is added.
    pub fn attach(&self, conn: ConnId, make_outbox: impl FnOnce() -> Outbox) {
        let metrics = &self.metrics;
        self.with_live(conn, |_, s| {
            if s.live.as_ref().is_some_and(|l| l.outbox.is_none()) {
                let ob = make_outbox();
                // Nothing is owed undispatched to a live session without a queue unless
                // it was routed in between; hand that over in order.
                Self::resend_owed(metrics, s, &ob, true);
                if let Some(live) = &mut s.live {
                    live.outbox = Some(ob);
                }
            }
        });
    }

    /// MQTT 5: when the live connection `conn`'s will is to be published, and for how
    /// long it is valid then.
    pub fn set_will_timing(&self, conn: ConnId, timing: WillTiming) {
        self.with_live(conn, |_, s| {
            if let Some(l) = &mut s.live {
                l.will_timing = timing;
            }
        });
    }

    /// Queues a session's owed messages to a new queue, in order (all of them, or
    /// with `undispatched_only` those never handed to a connection).
    fn resend_owed(
        metrics: &crate::metrics::Metrics,
        s: &mut Session,
        ob: &Outbox,
        undispatched_only: bool,
    ) {
        let tracked = s.persistent();
        for o in &mut s.owed {
            if undispatched_only && o.dispatched {
                continue;
            }
            let out = Outgoing {
                msg: o.msg.clone(),
                seq: tracked.then_some(o.seq),
                dup: o.dispatched,
                released: tracked && o.released,
            };
            o.dispatched = true;
            // Resumed with expiry 0: no longer tracked, so within the clean-session bound.
            let sent = if tracked {
                ob.resend_owed(out)
            } else {
                ob.offer(out).is_ok()
            };
            if !sent {
                metrics.dropped_session_queue_full.inc();
            }
        }
    }

    /// Publishes a delayed will now (its delay passed, or its session ended).
    fn publish_will(&self, (will, _, expiry): PendingWill) {
        tracing::info!(topic = %will.topic, "publishing delayed last will");
        self.metrics.wills.inc();
        self.publish_checked(None, with_expiry(will, expiry, Instant::now()));
    }

    /// Removes a session and everything it owns.
    fn end_session(&self, st: &mut State, client: &str) {
        if let Some(s) = st.sessions.remove(client) {
            for sub in s.subs.values() {
                st.index.remove(client, &sub.filter);
            }
            if let Some(t) = s.expires_at {
                st.expiries.remove(&(t, client.to_owned()));
            }
            st.watch.remove(client);
            self.metrics.sessions.dec();
            self.budget.give(s.owed_bytes);
            if s.stored {
                self.store.append(&Record::EndSession { client });
            }
        }
    }

    /// A DISCONNECT packet arrived: the will must not be published [MQTT-3.14.4-3].
    pub fn clear_will(&self, conn: ConnId) {
        self.with_live(conn, |_, s| {
            if let Some(l) = &mut s.live {
                l.will = None;
            }
        });
    }

    /// MQTT 5 DISCONNECT with a Session Expiry Interval: applies to the session from now
    /// on (capped by the configured maximum). Ignored when the session was not persistent.
    pub fn set_expiry(&self, conn: ConnId, expiry: u32) {
        let expiry = expiry.min(self.limits.max_session_expiry);
        self.with_live(conn, |client, s| {
            if !s.persistent() || s.expiry == expiry {
                return;
            }
            s.expiry = expiry;
            if expiry > 0 {
                self.store.append(&Record::Session { client, expiry });
            }
            // expiry 0: `disconnect` ends the session (and logs EndSession).
        });
    }

    /// Runs `f` on the session whose live connection is `conn`.
    pub(super) fn with_live<R>(
        &self,
        conn: ConnId,
        f: impl FnOnce(&str, &mut Session) -> R,
    ) -> Option<R> {
        let mut st = self.lock();
        let State {
            conns, sessions, ..
        } = &mut *st;
        let client = conns.get(&conn)?;
        let s = sessions.get_mut(client)?;
        Some(f(client, s))
    }

    /// The connection is gone; returns the will to publish now, if it still has one. A
    /// non-persistent session ends here [MQTT-3.1.2-6]; a persistent one waits, keeping
    /// its subscriptions and queueing messages, until it is resumed or expires.
    ///
    /// A will with a delay interval waits in a persistent session until the delay has
    /// passed or the session ends, whichever comes first; a new connection resuming the
    /// session cancels it [MQTT-3.1.3-9]. (A session that ends with the connection
    /// publishes its will at once: that is when it ends.)
    pub fn disconnect(&self, conn: ConnId) -> Option<Message> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let client = st.conns.remove(&conn)?;
        let s = st.sessions.get_mut(&client)?;
        let live = s.live.take()?;
        let now = Instant::now();
        let mut will = live.will;
        if s.persistent() {
            s.expires_at = expiry_deadline(now, s.expiry);
            if let Some(t) = s.expires_at {
                st.expiries.insert((t, client.clone()));
            }
            if live.will_timing.delay > 0 {
                let due = now + Duration::from_secs(live.will_timing.delay.into());
                s.pending_will = will
                    .take()
                    .map(|w| Box::new((w, due, live.will_timing.expiry)));
            }
            s.watch_offline(&client, &mut st.watch);
        } else {
            self.end_session(st, &client);
        }
        // The will's Message Expiry Interval runs from its publication.
        will.map(|w| with_expiry(w, live.will_timing.expiry, now))
    }

    /// Ends persistent sessions whose expiry interval has passed while offline, and
    /// publishes delayed wills that are due (their delay passed, or their session ended).
    pub fn expire_sessions(&self, now: Instant) -> usize {
        let mut guard = self.lock();
        let st = &mut *guard;
        let mut due = Vec::new();
        while let Some(first) = st.expiries.first()
            && first.0 <= now
        {
            let (t, c) = st.expiries.pop_first().expect("just seen");
            // Only if that is still its deadline (a stale entry is harmless but skipped).
            if st
                .sessions
                .get(&c)
                .is_some_and(|s| s.live.is_none() && s.expires_at == Some(t))
            {
                due.push(c);
            }
        }
        let mut wills = Vec::new();
        for c in &due {
            tracing::debug!(client_id = %c, "session expired");
            wills.extend(st.sessions.get_mut(c).and_then(|s| s.pending_will.take()));
            self.end_session(st, c);
        }
        let State {
            sessions, watch, ..
        } = &mut *st;
        watch.retain(|client| {
            let Some(s) = sessions.get_mut(client) else {
                return false;
            };
            if s.live.is_some() {
                return false;
            }
            if s.pending_will.as_ref().is_some_and(|w| w.1 <= now) {
                wills.extend(s.pending_will.take());
            }
            // Expired messages owed to offline sessions will never be sent
            // [MQTT-3.3.2-5]: drop them now so they do not hold places in the queue.
            if s.owed_may_expire {
                let store = &self.store;
                let mut freed = 0;
                s.owed.retain(|o| {
                    // Only those whose delivery never started [MQTT-3.3.2-5].
                    let expired = !o.dispatched && o.msg.expired(now);
                    if expired {
                        store.append(&Record::Ack { client, seq: o.seq });
                        freed += o.msg.cost();
                    }
                    !expired
                });
                s.owed_bytes -= freed;
                self.budget.give(freed);
                s.owed_may_expire = s.owed.iter().any(|o| !o.dispatched && o.msg.expires());
            }
            s.owed_may_expire || s.pending_will.is_some()
        });
        // Expired retained messages are never sent again: forget them (and log it).
        if st.retained_may_expire {
            let expired: Vec<_> = st
                .retained
                .iter()
                .filter(|(_, m)| m.expired(now))
                .map(|(t, _)| t.clone())
                .collect();
            for t in &expired {
                st.retained.remove(t);
                if !crate::auth::is_sys(t) {
                    self.store.append(&Record::Unretain(t));
                }
            }
            st.retained_may_expire = st.retained.values().any(Message::expires);
            if !expired.is_empty() {
                self.metrics
                    .retained
                    .set(super::stats::client_retained(&st.retained));
            }
        }
        drop(guard);
        for w in wills {
            self.publish_will(*w);
        }
        due.len()
    }

    /// Ends expired sessions once a second — finer precision buys nothing, MQTT gives
    /// intervals in seconds — until this is the last handle on the router (the broker
    /// stopped), so in-process brokers in tests do not leave sweepers behind.
    pub async fn expire_sessions_periodically(self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while Arc::strong_count(&self.state) > 1 {
            tick.tick().await;
            self.expire_sessions(Instant::now());
        }
    }

    /// The live connection `conn` completed message `seq` of its session (PUBACK, or
    /// PUBCOMP; or it expired, or could not be sent). Keyed by the connection, not the
    /// client id: a late acknowledgement from a connection that was just taken over
    /// must not complete a message of the session that replaced it.
    pub fn ack(&self, conn: ConnId, seq: u64) {
        let (store, budget) = (&self.store, &self.budget);
        self.with_live(conn, |client, s| {
            // Acknowledgements mostly arrive in order, so this is nearly always the front.
            if let Ok(i) = s.owed.binary_search_by_key(&seq, |o| o.seq) {
                if let Some(o) = s.owed.remove(i) {
                    let cost = o.msg.cost();
                    s.owed_bytes -= cost;
                    budget.give(cost);
                }
                if s.persistent() {
                    store.append(&Record::Ack { client, seq });
                }
            }
        });
    }

    /// The live connection `conn`'s client sent PUBREC for QoS 2 message `seq`: from
    /// now on the PUBREL is what is owed, also across a reconnect or restart.
    pub fn released(&self, conn: ConnId, seq: u64) {
        let store = &self.store;
        self.with_live(conn, |client, s| {
            if let Ok(i) = s.owed.binary_search_by_key(&seq, |o| o.seq)
                && !s.owed[i].released
            {
                s.owed[i].released = true;
                if s.persistent() {
                    store.append(&Record::Rel { client, seq });
                }
            }
        });
    }

    /// Inbound QoS 2: returns false when `packet_id` was already received on this session
    /// and not yet released, i.e. the PUBLISH is a resend that must not be routed again.
    pub fn qos2_received(&self, conn: ConnId, packet_id: u16) -> bool {
        self.with_live(conn, |_, s| {
            s.qos2_in.get_or_insert_default().insert(packet_id)
        })
        .unwrap_or(true)
    }

    /// Inbound QoS 2: PUBREL arrived for `packet_id`. Returns whether it was awaited
    /// (MQTT 5 answers an unknown one with PUBCOMP 0x92, Packet Identifier not found).
    pub fn qos2_released(&self, conn: ConnId, packet_id: u16) -> bool {
        self.with_live(conn, |_, s| {
            let Some(set) = &mut s.qos2_in else {
                return false;
            };
            let known = set.remove(&packet_id);
            if set.is_empty() {
                s.qos2_in = None;
            }
            known
        })
        .unwrap_or(false)
    }
}

/// `msg` with a Message Expiry Interval of `secs` counted from `now`.
pub(super) fn with_expiry(mut msg: Message, secs: Option<u32>, now: Instant) -> Message {
    if let Some(secs) = secs {
        let mut p = msg.properties.as_deref().cloned().unwrap_or_default();
        p.expires_at = Some(now + Duration::from_secs(secs.into()));
        msg.properties = Some(Arc::new(p));
    }
    msg
}

pub(super) fn expiry_deadline(now: Instant, expiry: u32) -> Option<Instant> {
    (expiry != NEVER).then(|| now + Duration::from_secs(expiry.into()))
}
