//! Authentication and authorization: who may connect, and what each connection may
//! publish and subscribe to.
//!
//! Two object-safe traits keep it pluggable. An [`Authenticator`] decides once, at
//! CONNECT — asynchronously, so a later provider can look devices up in PostgreSQL — and
//! hands back that connection's [`Authorizer`], which then answers every PUBLISH and
//! SUBSCRIBE synchronously from memory: the publish path never waits on I/O.
//!
//! Shipped providers:
//! - [`devices::DeviceAuth`] (the default, `auth.open = false`): the auth file's
//!   service users first, every other user name a device checked against the device
//!   registry, held to its own topics.
//! - [`Open`] (`auth.open = true` without an auth file): every client may connect and
//!   do anything — the demo only, warned about at every start.
//! - [`file::FileAuth`]: a TOML file of users (`mosquitto_passwd`-compatible PBKDF2
//!   hashes, see [`password`]) and topic rules with `%c` / `%u` substitution
//!   ([`acl`]); anonymous clients only when allowed, with their own rules. Wrapped in
//!   [`file::Reloading`], which re-reads it on SIGHUP ([`reload_on_sighup`]).
//!
//! Whatever a provider says, `$SYS/…` is written by the broker alone ([`may_publish`]).
//! How refusals reach the client: `v3.rs` / `v5.rs` and `docs/broker-auth.md`.

pub mod acl;
pub mod devices;
pub mod file;
pub mod password;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context as _;

use crate::settings::Settings;

/// What a client presented in CONNECT.
#[derive(Clone, Copy)]
pub struct Credentials<'a> {
    /// The client id the session will use (a generated one when the client sent none).
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
}

/// Never the password: tokens and passwords stay out of every log.
impl std::fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.map(|_| "<redacted>"))
            .finish()
    }
}

/// Why a CONNECT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Unknown user, wrong password, or a password without a user name: MQTT 3.1.1
    /// CONNACK 4, MQTT 5 0x86. Unknown users and wrong passwords get the same answer so
    /// that user names cannot be probed.
    BadCredentials,
    /// Anonymous while not allowed, or a will topic the client may not publish to:
    /// MQTT 3.1.1 CONNACK 5, MQTT 5 0x87.
    NotAuthorized,
    /// A device whose client id is not its user name: answered as [`NotAuthorized`].
    ///
    /// [`NotAuthorized`]: Refusal::NotAuthorized
    ClientIdMismatch,
    /// The device registry was never loaded (no cache file, PostgreSQL down since the
    /// start): MQTT 3.1.1 CONNACK 3, MQTT 5 0x88 Server unavailable — try again later.
    Unavailable,
}

impl Refusal {
    /// Log/metric label.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::BadCredentials => "bad_credentials",
            Refusal::NotAuthorized => "not_authorized",
            Refusal::ClientIdMismatch => "client_id_mismatch",
            Refusal::Unavailable => "registry_unavailable",
        }
    }
}

/// The future [`Authenticator::authenticate`] returns. The network worker polls it once
/// at CONNECT; an answer that is not ready then (a password hash on the blocking pool,
/// a database lookup) is awaited on the broker's tokio runtime, and the CONNECT goes on
/// when it arrives — the worker serves its other connections meanwhile.
pub type AuthFuture = Pin<Box<dyn Future<Output = Result<Arc<dyn Authorizer>, Refusal>> + Send>>;

/// Decides whether a client may connect, and with which rights.
pub trait Authenticator: Send + Sync + 'static {
    /// Copies what it needs of `c`: the answer may come later, from another thread.
    fn authenticate(&self, c: Credentials<'_>) -> AuthFuture;

    /// Re-reads the provider's configuration (on SIGHUP, see `startup.rs`). Connections
    /// already open keep the rights they were given; an error leaves the old ones.
    fn reload(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// One connection's rights, asked on every PUBLISH and SUBSCRIBE (keep it in memory).
pub trait Authorizer: Send + Sync + 'static {
    /// May the client publish to topic name `topic`? (Its will topic is asked too.)
    fn may_publish(&self, topic: &str) -> bool;
    /// May the client subscribe to `filter` (without any `$share/{group}/` prefix)?
    /// True only when every topic the filter can match is allowed.
    fn may_subscribe(&self, filter: &str) -> bool;
    /// The registry device this connection authenticated as (its id), if it is one:
    /// devices are rate-limited and cut when revoked.
    fn device(&self) -> Option<&str> {
        None
    }
}

/// Everything is allowed (used without an auth file).
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn may_publish(&self, _: &str) -> bool {
        true
    }
    fn may_subscribe(&self, _: &str) -> bool {
        true
    }
}

/// Lets everyone in, credentials or not, with [`AllowAll`] (`auth.open` without an auth
/// file: the demo).
pub struct Open;

impl Authenticator for Open {
    fn authenticate(&self, _: Credentials<'_>) -> AuthFuture {
        Box::pin(async { Ok(Arc::new(AllowAll) as Arc<dyn Authorizer>) })
    }
}

/// The authenticator the settings ask for, and the device registry behind it (closed
/// mode). Call inside a tokio runtime (the registry's task is spawned on it).
pub fn from_settings(
    settings: &Settings,
) -> anyhow::Result<(Arc<dyn Authenticator>, Option<lentera_auth::Registry>)> {
    let cfg = &settings.broker;
    let file = cfg
        .auth_file
        .as_deref()
        .filter(|p| !p.as_os_str().is_empty());
    if settings.auth.open {
        // Said at every start, so an open broker never goes unnoticed in the logs.
        tracing::warn!(
            "auth.open = true: devices are not checked (no registry), every client id and              topic is allowed{} — for the demo only, never on a reachable host",
            if file.is_some() {
                " except what broker.auth_file's users and rules say"
            } else {
                ""
            }
        );
        return Ok((
            match file {
                Some(path) => Arc::new(file::Reloading::load(path, cfg.allow_anonymous)?),
                None => Arc::new(Open),
            },
            None,
        ));
    }
    let services = file
        .map(|path| file::Reloading::load(path, cfg.allow_anonymous))
        .transpose()?;
    if services.is_none() && cfg.allow_anonymous {
        tracing::warn!(
            "broker.allow_anonymous = true has no effect without broker.auth_file (its \
             [anonymous] rules say what anonymous clients may do)"
        );
    }
    let pool = lentera_db::pool(&settings.database)
        .context("the device registry's PostgreSQL pool ([database])")?;
    let registry = lentera_auth::Registry::start(pool, &settings.auth);
    let auth = devices::DeviceAuth::new(services, registry.clone(), &cfg.telemetry.prefix);
    Ok((Arc::new(auth), Some(registry)))
}

/// Reloads `auth` on every SIGHUP until the returned task is aborted. The handler is
/// installed before this returns (not when the task first runs), so a SIGHUP sent once
/// the ready file exists never meets the default action, which ends the process.
pub fn reload_on_sighup(auth: Arc<dyn Authenticator>) -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    async move {
        #[cfg(unix)]
        {
            let Ok(mut hup) = hup else {
                tracing::warn!("cannot listen for SIGHUP: the auth file is read at start only");
                return;
            };
            while hup.recv().await.is_some() {
                match auth.reload() {
                    Ok(()) => tracing::info!("authentication reloaded (SIGHUP)"),
                    Err(e) => tracing::error!(
                        error = format!("{e:#}"),
                        "auth reload failed; old rules kept"
                    ),
                }
            }
        }
        #[cfg(not(unix))]
        drop(auth);
    }
}

/// `$SYS/…` (and `$SYS` itself): the broker's own statistics topics.
pub fn is_sys(topic: &str) -> bool {
    topic
        .strip_prefix("$SYS")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// A client may publish to `topic`: its authorizer agrees and the topic is not `$SYS`
/// (only the broker writes there, see `sys.rs`).
pub fn may_publish(acl: &dyn Authorizer, topic: &str) -> bool {
    !is_sys(topic) && acl.may_publish(topic)
}

/// What the authenticator's answer means for a CONNECT with `will_topic`: a will is a
/// publish made on the client's behalf, so the same rules apply. Counts and logs
/// refusals as `connections_refused_total{reason}`.
pub fn decide(
    answer: Result<Arc<dyn Authorizer>, Refusal>,
    metrics: &crate::metrics::Metrics,
    creds: Credentials<'_>,
    will_topic: Option<&str>,
) -> Result<Arc<dyn Authorizer>, Refusal> {
    let result = match answer {
        Ok(acl) if will_topic.is_some_and(|t| !may_publish(&*acl, t)) => {
            Err(Refusal::NotAuthorized)
        }
        other => other,
    };
    if let Err(why) = result {
        tracing::info!(
            client_id = ?creds.client_id,
            username = ?creds.username,
            reason = why.code(),
            "connection refused"
        );
        match why {
            Refusal::BadCredentials => metrics.refused_bad_credentials.inc(),
            Refusal::NotAuthorized => metrics.refused_not_authorized.inc(),
            Refusal::ClientIdMismatch => metrics.refused_client_id_mismatch.inc(),
            Refusal::Unavailable => metrics.refused_registry_unavailable.inc(),
        }
    }
    result
}

/// Counts and logs a PUBLISH the client was not allowed to make.
pub fn publish_refused(metrics: &crate::metrics::Metrics, client_id: &str, topic: &str) {
    tracing::debug!(client_id = ?client_id, topic = ?topic, "publish not authorized");
    metrics.dropped_not_authorized.inc();
}

/// Counts and logs a subscription the client was not allowed to make.
pub fn subscribe_refused(metrics: &crate::metrics::Metrics, client_id: &str, filter: &str) {
    tracing::debug!(client_id = ?client_id, filter = ?filter, "subscription not authorized");
    metrics.subscriptions_refused.inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sys_topics_are_recognised_by_their_first_level() {
        assert!(is_sys("$SYS"));
        assert!(is_sys("$SYS/broker/uptime"));
        assert!(!is_sys("$SYSTEM/x"));
        assert!(!is_sys("lentera/$SYS/x"));
        assert!(!may_publish(&AllowAll, "$SYS/broker/uptime"));
        assert!(may_publish(&AllowAll, "lentera/gh-1/telemetry"));
    }

    #[tokio::test]
    async fn open_mode_needs_no_registry_and_closed_mode_starts_one() {
        let mut s = Settings::default();
        s.auth.open = true;
        assert!(from_settings(&s).unwrap().1.is_none(), "open: no registry");
        s.auth.open = false;
        // A lazily connecting pool: starting needs no PostgreSQL yet.
        s.database.url = "postgres://nobody@127.0.0.1:1/none".into();
        let (_, registry) = from_settings(&s).unwrap();
        assert!(!registry.unwrap().is_loaded());
    }

    #[test]
    fn credentials_never_show_the_password() {
        let c = Credentials {
            client_id: "gh-1",
            username: Some("gh-1"),
            password: Some(b"lt_secret"),
        };
        assert!(!format!("{c:?}").contains("secret"));
    }
}
