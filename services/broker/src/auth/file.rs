//! The shipped authenticator: users and rules from a TOML file (`broker.auth_file`),
//! read once at start. Format and examples: `docs/broker-auth.md`.
//!
//! ```toml
//! [all_users]                      # every authenticated user, on top of their own rules
//! publish = ["lentera/%c/#"]
//! subscribe = ["lentera/%c/lamp/set"]
//!
//! [anonymous]                      # used only while broker.allow_anonymous = true
//! subscribe = ["$SYS/#"]
//!
//! [[users]]
//! username = "lamp"
//! password = "$7$10000$…$…"        # mosquitto_passwd / lentera-broker hash-password
//! publish = ["lentera/+/lamp/set"]
//! subscribe = ["lentera/+/telemetry", "lentera/+/lamp/state", "lentera/+/lamp/mode"]
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::auth::acl::Rules;
use crate::auth::password::{self, PasswordHash};
use crate::auth::{AuthFuture, Authenticator, Authorizer, Credentials, Refusal};

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct AuthFile {
    all_users: Rules,
    anonymous: Rules,
    users: Vec<UserEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    username: String,
    password: String,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    deny_publish: Vec<String>,
    #[serde(default)]
    deny_subscribe: Vec<String>,
}

struct User {
    hash: PasswordHash,
    /// `all_users` followed by the user's own rules.
    rules: Rules,
}

pub struct FileAuth {
    users: HashMap<String, Arc<User>>,
    /// `None` when anonymous clients are refused.
    anonymous: Option<Rules>,
    /// Verified when the user name is unknown, so that a refusal takes as long either way.
    dummy: Arc<User>,
    /// Where password hashes are checked: tokio's blocking pool when the broker was built
    /// inside a tokio runtime (it is), so the ~10 ms of PBKDF2 per CONNECT does not stall
    /// the other connections of the network worker; inline otherwise.
    blocking: Option<tokio::runtime::Handle>,
}

impl FileAuth {
    pub fn load(path: &Path, allow_anonymous: bool) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading broker.auth_file {}", path.display()))?;
        Self::from_toml(&text, allow_anonymous)
            .with_context(|| format!("broker.auth_file {}", path.display()))
    }

    pub fn from_toml(text: &str, allow_anonymous: bool) -> anyhow::Result<Self> {
        let file: AuthFile = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()?
            .try_deserialize()?;
        file.all_users.validate().map_err(anyhow::Error::msg)?;
        file.anonymous.validate().map_err(anyhow::Error::msg)?;
        let mut users = HashMap::new();
        for u in file.users {
            let own = Rules {
                publish: u.publish,
                subscribe: u.subscribe,
                deny_publish: u.deny_publish,
                deny_subscribe: u.deny_subscribe,
            };
            own.validate()
                .map_err(|e| anyhow::anyhow!("user {:?}: {e}", u.username))?;
            let hash = PasswordHash::parse(&u.password)
                .map_err(|e| anyhow::anyhow!("user {:?}: password: {e}", u.username))?;
            let user = User {
                hash,
                rules: file.all_users.and(&own),
            };
            if users.insert(u.username.clone(), Arc::new(user)).is_some() {
                bail!("user {:?} is listed twice", u.username);
            }
        }
        let anonymous = allow_anonymous.then_some(file.anonymous);
        if let Some(a) = &anonymous
            && a.publish.is_empty()
            && a.subscribe.is_empty()
        {
            tracing::warn!(
                "broker.allow_anonymous = true but the auth file has no [anonymous] rules: \
                 anonymous clients may connect and do nothing else"
            );
        }
        tracing::info!(
            users = users.len(),
            anonymous = anonymous.is_some(),
            "authentication file loaded"
        );
        let dummy = User {
            hash: PasswordHash::parse(&password::hash_with(b"", password::DEFAULT_ITERATIONS))
                .map_err(anyhow::Error::msg)?,
            rules: Rules::default(),
        };
        Ok(Self {
            users,
            anonymous,
            dummy: Arc::new(dummy),
            blocking: tokio::runtime::Handle::try_current().ok(),
        })
    }

    /// Whether `name` is one of the file's users (a service, not a device).
    pub fn has_user(&self, name: &str) -> bool {
        self.users.contains_key(name)
    }

    /// Who is connecting: anonymous, or a known user whose password is still to be
    /// checked (`Err` when the answer is already clear).
    fn lookup(&self, c: &Credentials<'_>) -> Result<Lookup, Refusal> {
        match (c.username, c.password) {
            // No user name: anonymous [MQTT-3.1.2-19] (3.1.1 forbids a password without
            // one [MQTT-3.1.2-22]; MQTT 5 allows it, but there is nobody to check it for).
            (None, None) => self
                .anonymous
                .clone()
                .map(Lookup::Anonymous)
                .ok_or(Refusal::NotAuthorized),
            (None, Some(_)) => Err(Refusal::BadCredentials),
            (Some(name), _) => Ok(match self.users.get(name) {
                Some(u) => Lookup::User(u.clone(), true),
                None => Lookup::User(self.dummy.clone(), false),
            }),
        }
    }
}

enum Lookup {
    Anonymous(Rules),
    /// The user (or the dummy, `false`, for an unknown name: same work, then refused).
    User(Arc<User>, bool),
}

impl Authenticator for FileAuth {
    fn authenticate(&self, c: Credentials<'_>) -> AuthFuture {
        let (client_id, username) = (c.client_id.to_owned(), c.username.map(str::to_owned));
        let lookup = self.lookup(&c);
        let password = c.password.unwrap_or_default().to_vec();
        let blocking = self.blocking.clone();
        Box::pin(async move {
            let rules = match lookup? {
                Lookup::Anonymous(rules) => rules,
                Lookup::User(user, known) => {
                    let verify = {
                        let user = user.clone();
                        move || user.hash.verify(&password)
                    };
                    // PBKDF2 takes milliseconds: off the network worker when a runtime
                    // is there to take it.
                    let ok = match &blocking {
                        Some(pool) => pool.spawn_blocking(verify).await.unwrap_or(false),
                        None => verify(),
                    };
                    if !(ok && known) {
                        return Err(Refusal::BadCredentials);
                    }
                    user.rules.clone()
                }
            };
            let acl = rules.for_client(&client_id, username.as_deref());
            Ok(Arc::new(acl) as Arc<dyn Authorizer>)
        })
    }
}

/// [`FileAuth`] that [`Authenticator::reload`] replaces with a fresh read of its file.
pub struct Reloading {
    path: PathBuf,
    allow_anonymous: bool,
    current: RwLock<Arc<FileAuth>>,
}

impl Reloading {
    pub fn load(path: &Path, allow_anonymous: bool) -> anyhow::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            allow_anonymous,
            current: RwLock::new(Arc::new(FileAuth::load(path, allow_anonymous)?)),
        })
    }

    /// Whether `name` is one of the file's users (a service, not a device).
    pub fn has_user(&self, name: &str) -> bool {
        self.current().has_user(name)
    }

    fn current(&self) -> Arc<FileAuth> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Authenticator for Reloading {
    fn authenticate(&self, c: Credentials<'_>) -> AuthFuture {
        self.current().authenticate(c)
    }

    fn reload(&self) -> anyhow::Result<()> {
        let fresh = FileAuth::load(&self.path, self.allow_anonymous)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(allow_anonymous: bool) -> FileAuth {
        let text = format!(
            r#"
            [all_users]
            publish = ["lentera/%c/#"]

            [anonymous]
            subscribe = ["$SYS/#"]

            [[users]]
            username = "lamp"
            password = "{}"
            publish = ["lentera/+/lamp/set"]
            subscribe = ["lentera/+/lamp/state"]
            "#,
            password::hash_with(b"pw", 100)
        );
        FileAuth::from_toml(&text, allow_anonymous).unwrap()
    }

    /// `authenticate`, driven to completion (no runtime: verification runs inline).
    fn check(f: &FileAuth, c: Credentials<'_>) -> Result<Arc<dyn Authorizer>, Refusal> {
        let mut fut = f.authenticate(c);
        let waker = std::task::Waker::noop();
        match fut
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
        {
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => panic!("inline verification completes at once"),
        }
    }

    fn creds<'a>(user: Option<&'a str>, pw: Option<&'a [u8]>) -> Credentials<'a> {
        Credentials {
            client_id: "lamp-svc",
            username: user,
            password: pw,
        }
    }

    #[test]
    fn users_get_their_own_and_the_common_rules() {
        let acl = check(&file(false), creds(Some("lamp"), Some(b"pw"))).unwrap();
        assert!(acl.may_publish("lentera/gh-1/lamp/set"));
        assert!(
            acl.may_publish("lentera/lamp-svc/status"),
            "all_users with %c"
        );
        assert!(!acl.may_publish("lentera/gh-1/telemetry"));
        assert!(acl.may_subscribe("lentera/+/lamp/state"));
        assert!(!acl.may_subscribe("lentera/#"));
    }

    #[test]
    fn wrong_password_unknown_user_and_anonymous_are_refused() {
        let f = file(false);
        let refused = |c| check(&f, c).err();
        assert_eq!(
            refused(creds(Some("lamp"), Some(b"nope"))),
            Some(Refusal::BadCredentials)
        );
        assert_eq!(
            refused(creds(Some("lamp"), None)),
            Some(Refusal::BadCredentials)
        );
        assert_eq!(
            refused(creds(Some("ghost"), Some(b"pw"))),
            Some(Refusal::BadCredentials)
        );
        assert_eq!(refused(creds(None, None)), Some(Refusal::NotAuthorized));
        assert_eq!(
            refused(creds(None, Some(b"pw"))),
            Some(Refusal::BadCredentials)
        );
    }

    #[test]
    fn anonymous_clients_get_the_anonymous_rules_when_allowed() {
        let acl = check(&file(true), creds(None, None)).unwrap();
        assert!(acl.may_subscribe("$SYS/#"));
        assert!(
            !acl.may_publish("lentera/lamp-svc/status"),
            "all_users is not for them"
        );
    }

    #[test]
    fn mistakes_in_the_file_are_reported_at_load() {
        for bad in [
            "[[users]]\nusername = \"a\"\npassword = \"plain\"\n",
            "[all_users]\npublish = [\"a/#/b\"]\n",
            "[[users]]\nusername = \"a\"\npasword = \"x\"\n",
            "[anonymus]\npublish = [\"a\"]\n",
        ] {
            assert!(FileAuth::from_toml(bad, false).is_err(), "{bad}");
        }
    }
}
