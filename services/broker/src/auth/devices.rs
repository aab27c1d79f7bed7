//! Closed mode (`auth.open = false`, the default): service users from the auth file
//! first, every other user name is a device checked against the registry
//! (`lentera_auth::Registry`, PostgreSQL cached in memory).
//!
//! A device logs in with its id as user name **and** client id, and its token as
//! password; it may publish only `{prefix}/{id}/telemetry`, `…/status` and
//! `…/lamp/state`, and subscribe only to `{prefix}/{id}/lamp/set`, `…/lamp/mode` and `…/error`
//! (where the platform reports the board's refused readings, its only way to hear of them
//! over MQTT 3.1.1).
//! Unknown device, wrong token and disabled device get one answer (bad user name or
//! password); a registry never loaded (no cache, PostgreSQL down since start) gets
//! "server unavailable", so boards retry instead of giving up — services from the file
//! still get in then.

use std::sync::Arc;

use lentera_auth::{Denied, Registry};

use crate::auth::acl::Acl;
use crate::auth::file::Reloading;
use crate::auth::{AuthFuture, Authenticator, Authorizer, Credentials, Refusal};

pub struct DeviceAuth {
    /// `broker.auth_file`: service users and their rules (and `[anonymous]`).
    services: Option<Reloading>,
    registry: Registry,
    /// `broker.telemetry.prefix` (default `lentera`): the devices' topic root.
    prefix: String,
}

impl DeviceAuth {
    pub fn new(services: Option<Reloading>, registry: Registry, prefix: &str) -> Self {
        let prefix = prefix.trim_end_matches('/');
        let prefix = if prefix.is_empty() {
            lentera_protocol::topic::DEFAULT_PREFIX
        } else {
            prefix
        };
        Self {
            services,
            registry,
            prefix: prefix.to_owned(),
        }
    }
}

impl Authenticator for DeviceAuth {
    fn authenticate(&self, c: Credentials<'_>) -> AuthFuture {
        let refuse = |why| -> AuthFuture { Box::pin(async move { Err(why) }) };
        let service = c
            .username
            .is_none_or(|u| self.services.as_ref().is_some_and(|s| s.has_user(u)));
        if service {
            // Anonymous clients, too, are the file's business ([anonymous] rules).
            return match &self.services {
                Some(s) => s.authenticate(c),
                None => refuse(Refusal::NotAuthorized),
            };
        }
        let Some(id) = c.username else {
            return refuse(Refusal::NotAuthorized);
        };
        // One board, one client id: nobody speaks (or takes over a session) as another.
        if c.client_id != id {
            return refuse(Refusal::ClientIdMismatch);
        }
        let Some(token) = c.password.and_then(|p| std::str::from_utf8(p).ok()) else {
            return refuse(Refusal::BadCredentials);
        };
        let (registry, id, token) = (self.registry.clone(), id.to_owned(), token.to_owned());
        let prefix = self.prefix.clone();
        Box::pin(async move {
            match registry.check(&id, &token).await {
                Ok(device) => {
                    Ok(Arc::new(DeviceAcl::new(&prefix, device.id)) as Arc<dyn Authorizer>)
                }
                Err(Denied::Unauthorized) => Err(Refusal::BadCredentials),
                Err(Denied::Unavailable) => Err(Refusal::Unavailable),
            }
        })
    }

    fn reload(&self) -> anyhow::Result<()> {
        match &self.services {
            Some(s) => s.reload(),
            None => Ok(()),
        }
    }
}

/// A device's rights: its own topics, nothing else.
pub struct DeviceAcl {
    id: String,
    acl: Acl,
}

impl DeviceAcl {
    pub fn new(prefix: &str, id: String) -> Self {
        // Registry ids are validated device ids; should one ever hold a separator or a
        // wildcard, it gets no rights rather than wider ones.
        let safe = !id.is_empty() && !id.contains(['/', '+', '#', '\0']);
        let topics = |suffixes: &[&str]| -> Vec<String> {
            if !safe {
                return Vec::new();
            }
            suffixes
                .iter()
                .map(|s| format!("{prefix}/{id}/{s}"))
                .collect()
        };
        let acl = Acl {
            publish: topics(&["telemetry", "status", "lamp/state"]),
            subscribe: topics(&["lamp/set", "lamp/mode", "error"]),
            ..Acl::default()
        };
        Self { id, acl }
    }
}

impl Authorizer for DeviceAcl {
    fn may_publish(&self, topic: &str) -> bool {
        self.acl.may_publish(topic)
    }

    fn may_subscribe(&self, filter: &str) -> bool {
        self.acl.may_subscribe(filter)
    }

    fn device(&self) -> Option<&str> {
        Some(&self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_reaches_its_own_topics_only() {
        let acl = DeviceAcl::new("lentera", "gh-1".into());
        for t in ["telemetry", "status", "lamp/state"] {
            assert!(acl.may_publish(&format!("lentera/gh-1/{t}")), "{t}");
            assert!(!acl.may_publish(&format!("lentera/gh-2/{t}")), "{t}");
        }
        assert!(
            !acl.may_publish("lentera/gh-1/lamp/set"),
            "commands are not its to give"
        );
        assert!(!acl.may_publish("lentera/gh-1/error"));
        assert!(acl.may_subscribe("lentera/gh-1/lamp/set"));
        assert!(acl.may_subscribe("lentera/gh-1/lamp/mode"));
        assert!(acl.may_subscribe("lentera/gh-1/error"));
        assert!(!acl.may_subscribe("lentera/gh-2/error"));
        assert!(
            !acl.may_publish("lentera/gh-1/error"),
            "a board cannot forge the platform's reports"
        );
        assert!(!acl.may_subscribe("lentera/+/lamp/set"));
        assert!(!acl.may_subscribe("lentera/gh-1/#"));
        assert!(!acl.may_subscribe("lentera/gh-1/telemetry"));
        assert_eq!(acl.device(), Some("gh-1"));
        let odd = DeviceAcl::new("lentera", "+".into());
        assert!(
            !odd.may_publish("lentera/+/telemetry") && !odd.may_subscribe("lentera/+/lamp/set")
        );
    }
}
