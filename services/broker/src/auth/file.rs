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
use std::path::Path;
use std::sync::Arc;

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
}

struct User {
    hash: PasswordHash,
    /// `all_users` followed by the user's own rules.
    rules: Rules,
}

pub struct FileAuth {
    users: HashMap<String, User>,
    /// `None` when anonymous clients are refused.
    anonymous: Option<Rules>,
    /// Verified when the user name is unknown, so that a refusal takes as long either way.
    dummy: PasswordHash,
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
            };
            own.validate()
                .map_err(|e| anyhow::anyhow!("user {:?}: {e}", u.username))?;
            let hash = PasswordHash::parse(&u.password)
                .map_err(|e| anyhow::anyhow!("user {:?}: password: {e}", u.username))?;
            let user = User {
                hash,
                rules: file.all_users.and(&own),
            };
            if users.insert(u.username.clone(), user).is_some() {
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
        Ok(Self {
            users,
            anonymous,
            dummy: PasswordHash::parse(&password::hash(b"", password::DEFAULT_ITERATIONS))
                .map_err(anyhow::Error::msg)?,
        })
    }

    fn check(&self, c: Credentials<'_>) -> Result<Arc<dyn Authorizer>, Refusal> {
        let rules = match (c.username, c.password) {
            // No user name: anonymous [MQTT-3.1.2-19] (3.1.1 forbids a password without
            // one [MQTT-3.1.2-22]; MQTT 5 allows it, but there is nobody to check it for).
            (None, None) => self.anonymous.as_ref().ok_or(Refusal::NotAuthorized)?,
            (None, Some(_)) => return Err(Refusal::BadCredentials),
            (Some(name), password) => {
                let password = password.unwrap_or_default();
                match self.users.get(name) {
                    Some(u) if u.hash.verify(password) => &u.rules,
                    Some(_) => return Err(Refusal::BadCredentials),
                    None => {
                        self.dummy.verify(password);
                        return Err(Refusal::BadCredentials);
                    }
                }
            }
        };
        Ok(Arc::new(rules.for_client(c.client_id, c.username)))
    }
}

impl Authenticator for FileAuth {
    fn authenticate<'a>(&'a self, c: Credentials<'a>) -> AuthFuture<'a> {
        // Everything is in memory: no need to leave the worker thread.
        let result = self.check(c);
        Box::pin(async move { result })
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
            password::hash(b"pw", 100)
        );
        FileAuth::from_toml(&text, allow_anonymous).unwrap()
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
        let acl = file(false).check(creds(Some("lamp"), Some(b"pw"))).unwrap();
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
        let refused = |c| f.check(c).err();
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
        let acl = file(true).check(creds(None, None)).unwrap();
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
