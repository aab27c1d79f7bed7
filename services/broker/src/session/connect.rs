//! CONNECT and authentication: the first packet picks the protocol version, the
//! authenticator answers (at once, or later on the runtime while input waits), and an
//! accepted connection is registered with the router.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ntex_bytes::BytesMut;

use super::{Flow, Proto};
use crate::auth::{self, Authorizer, Credentials, Refusal};
use crate::error::Close;
use crate::net::Cx;
use crate::net::conn::{Conn, Phase};
use crate::net::mailbox::Cmd;
use crate::outbox::{self, Inbox};
use crate::router::{ConnId, Message, Registration};

/// A CONNECT whose authentication is under way.
pub struct Pending {
    pub client_id: String,
    pub will: Option<Message>,
    pub connect: PendingConnect,
}

pub enum PendingConnect {
    V3(Box<ntex_mqtt::v3::codec::Connect>),
    V5(Box<ntex_mqtt::v5::codec::Connect>, crate::v5::ConnectExtra),
}

impl Pending {
    fn credentials(&self) -> Credentials<'_> {
        let (username, password) = match &self.connect {
            PendingConnect::V3(c) => (c.username.as_deref(), c.password.as_deref()),
            PendingConnect::V5(c, _) => (c.username.as_deref(), c.password.as_deref()),
        };
        Credentials {
            client_id: &self.client_id,
            username,
            password,
        }
    }
}

/// Handles one complete packet of a connection, whatever its phase.
pub fn frame(conn: &mut Conn, frame: BytesMut, cx: &mut Cx<'_>) -> Result<Flow, Close> {
    match &mut conn.phase {
        Phase::Handshake => {
            let pending = match crate::v5::is_v5_connect(&frame) {
                Some(true) => crate::v5::connect(frame, &mut conn.out, cx)?,
                Some(false) => crate::v3::connect(frame, &mut conn.out, cx)?,
                None => {
                    // The first packet must be CONNECT [MQTT-3.1.0-1].
                    tracing::debug!("first packet is not CONNECT");
                    return Err(Close::Gone);
                }
            };
            authenticate(conn, pending, cx)?;
            Ok(Flow::Continue)
        }
        Phase::Active(a) => {
            if a.input_paused() {
                return Ok(Flow::Pause);
            }
            if let Some(ka) = a.keep_alive() {
                conn.deadline = cx.now + ka;
            }
            match a.proto {
                Proto::V3(_) => crate::v3::packet(a, &mut conn.out, frame, cx),
                Proto::V5(_) => crate::v5::packet(a, &mut conn.out, frame, cx),
            }
        }
        Phase::Authenticating(_) | Phase::Closing => Ok(Flow::Pause),
    }
}

/// Asks the authenticator; finishes CONNECT at once when it answers at once (the
/// shipped providers without a password to hash), else when [`Cmd::AuthDone`] comes.
fn authenticate(conn: &mut Conn, pending: Pending, cx: &mut Cx<'_>) -> Result<(), Close> {
    let mut answer = cx.shared.auth.authenticate(pending.credentials());
    // Inside the runtime's context: a provider may touch tokio timers or I/O on its
    // first poll (the registry's miss lookup), which needs a reactor to register with.
    let entered = cx.shared.runtime.enter();
    let first = answer
        .as_mut()
        .poll(&mut Context::from_waker(std::task::Waker::noop()));
    drop(entered);
    match first {
        Poll::Ready(answer) => finish_connect(conn, pending, answer, cx),
        Poll::Pending => {
            let (mailbox, key) = (cx.mailbox.clone(), cx.key);
            cx.shared.runtime.spawn(async move {
                mailbox.post(Cmd::AuthDone(key, answer.await));
            });
            conn.phase = Phase::Authenticating(Box::new(pending));
            Ok(())
        }
    }
}

/// The authenticator's late answer ([`Cmd::AuthDone`]).
pub fn authenticated(
    conn: &mut Conn,
    answer: Result<Arc<dyn Authorizer>, Refusal>,
    cx: &mut Cx<'_>,
) -> Result<(), Close> {
    match std::mem::replace(&mut conn.phase, Phase::Handshake) {
        Phase::Authenticating(pending) => finish_connect(conn, *pending, answer, cx),
        other => {
            conn.phase = other;
            Ok(())
        }
    }
}

fn finish_connect(
    conn: &mut Conn,
    pending: Pending,
    answer: Result<Arc<dyn Authorizer>, Refusal>,
    cx: &mut Cx<'_>,
) -> Result<(), Close> {
    let will_topic = pending.will.as_ref().map(|w| &*w.topic);
    let metrics = cx.shared.router.metrics();
    let decided = auth::decide(answer, metrics, pending.credentials(), will_topic);
    let active = match (pending.connect, decided) {
        (PendingConnect::V3(_), Err(why)) => {
            crate::v3::refuse(&mut conn.out, why);
            return Err(Close::Refused);
        }
        (PendingConnect::V5(_, _), Err(why)) => {
            crate::v5::refuse(&mut conn.out, why);
            return Err(Close::Refused);
        }
        (PendingConnect::V3(c), Ok(acl)) => {
            crate::v3::accept(*c, pending.client_id, pending.will, acl, &mut conn.out, cx)
        }
        (PendingConnect::V5(c, extra), Ok(acl)) => crate::v5::accept(
            *c,
            extra,
            pending.client_id,
            pending.will,
            acl,
            &mut conn.out,
            cx,
        ),
    };
    conn.deadline = match active.keep_alive() {
        Some(ka) => cx.now + ka,
        // Keep-alive 0 turns the mechanism off [MQTT-3.1.2-24/-21].
        None => cx.now + Duration::from_secs(100 * 365 * 24 * 3600),
    };
    conn.phase = Phase::Active(active);
    Ok(())
}

/// What CONNECT asked of the router, protocol-independent.
pub struct Connection {
    pub client_id: String,
    pub will: Option<Message>,
    pub clean_start: bool,
    /// Session expiry interval in seconds (0 = the session ends with the connection).
    pub expiry: u32,
    /// Authenticated as a registry device (its client id is its id).
    pub device: bool,
}

/// Registers an accepted connection with the router, taking over its client id's
/// session or starting one. Returns the connection id, whether a session was resumed,
/// and the connection's inbox if the resumed session already has something for it.
pub fn register(conn: Connection, cx: &Cx<'_>) -> (ConnId, bool, Option<Inbox>) {
    let mut inbox = None;
    let router = &cx.shared.router;
    let connected = router.connect(
        Registration {
            client_id: conn.client_id,
            kick: cx.kicker(),
            will: conn.will,
            clean_start: conn.clean_start,
            expiry: conn.expiry,
            device: conn.device,
        },
        || {
            let (o, i) = outbox::channel(
                cx.shared.bounds,
                router.pressure().clone(),
                router.budget().clone(),
                cx.ready_notifier(),
            );
            inbox = Some(i);
            o
        },
    );
    router.metrics().connections.inc();
    (connected.id, connected.session_present, inbox)
}
