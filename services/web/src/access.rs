//! Who is asking, and may they: operators and viewers (issue 13).
//!
//! A request identifies itself by `Authorization: Bearer <api token>` (scripts) or the
//! `lentera_session` cookie the login form sets (the dashboard). Both are rows of
//! `operator_tokens`, stored as hashes (`lentera_auth::admin::find_token`).
//!
//! - [`Need::Read`] (history, device lists, dead letters, `/ws`): a viewer or an
//!   operator, or nobody at all with `web.public_read`.
//! - [`Need::Operate`] (lamp overrides, device admin): an operator, always.
//! - `auth.open`: nobody is asked anything (demo only; warned at every start).
//!
//! A cookie is sent by the browser on its own, so a state-changing request that rides
//! on one must also prove it came from our page: SameSite=Strict keeps other sites'
//! requests from carrying the cookie at all, and, in case a browser gets that wrong, the
//! request must be JSON or carry `X-Requested-With` (neither can a plain cross-site
//! form send) and any `Origin` must be this host.

use std::net::IpAddr;

use actix_web::HttpRequest;
use actix_web::http::{Method, header};
use lentera_auth::RateLimiter;
use lentera_auth::admin::{self, Role};
use sqlx::PgPool;

use crate::api::error::ApiError;

/// The session cookie's name.
pub const COOKIE: &str = "lentera_session";

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Read,
    Operate,
}

/// How a request was let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `auth.open`: nothing was checked.
    Open,
    /// `web.public_read` on a read: nothing was checked.
    Public,
    Session,
    Api,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Open => "open",
            Via::Public => "public",
            Via::Session => "session",
            Via::Api => "api",
        }
    }
}

/// Who was let in; `name` is `None` when nobody was asked.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: Option<String>,
    pub role: Role,
    pub via: Via,
}

/// Access rules and the login guards, from `[auth]` and `[web]`.
#[derive(Debug)]
pub struct Access {
    pub open: bool,
    pub public_read: bool,
    pub session_ttl: chrono::Duration,
    pub trust_forwarded: bool,
    pub by_name: RateLimiter,
    pub by_ip: RateLimiter,
}

/// The credential a request carries, if any.
enum Credential<'a> {
    Bearer(&'a str),
    Cookie(String),
}

impl Access {
    /// The operator behind the request's token or cookie, without any rule applied.
    /// `Ok(None)`: no credential at all; a credential that is not valid is a 401.
    pub async fn identify(
        &self,
        req: &HttpRequest,
        pool: &PgPool,
    ) -> Result<Option<Principal>, ApiError> {
        let (token, via) = match credential(req)? {
            None => return Ok(None),
            Some(Credential::Bearer(t)) => (t.to_owned(), Via::Api),
            Some(Credential::Cookie(t)) => (t, Via::Session),
        };
        let owner = admin::find_token(pool, &token)
            .await
            .map_err(|e| admin_error(e, 5))?
            .ok_or_else(|| ApiError::unauthorized(UNAUTHORIZED))?;
        let role = owner
            .role
            .parse::<Role>()
            .map_err(|_| ApiError::unauthorized(UNAUTHORIZED))?;
        Ok(Some(Principal {
            name: Some(owner.operator),
            role,
            via,
        }))
    }

    /// Lets the request in when it meets `need`: 401 without a valid credential, 403 with
    /// the wrong role or a cookie request that may not be our page's.
    pub async fn require(
        &self,
        req: &HttpRequest,
        pool: &PgPool,
        need: Need,
    ) -> Result<Principal, ApiError> {
        if self.open {
            return Ok(Principal {
                name: None,
                role: Role::Operator,
                via: Via::Open,
            });
        }
        let who = match self.identify(req, pool).await {
            Ok(who) => who,
            // An expired cookie must not lock a public notice board.
            Err(e) if need == Need::Read && self.public_read && e.status.as_u16() == 401 => None,
            Err(e) => return Err(e),
        };
        let who = match (who, need) {
            (Some(who), _) => who,
            (None, Need::Read) if self.public_read => {
                return Ok(Principal {
                    name: None,
                    role: Role::Viewer,
                    via: Via::Public,
                });
            }
            (None, _) => return Err(ApiError::unauthorized(UNAUTHORIZED)),
        };
        if need == Need::Operate && who.role != Role::Operator {
            return Err(ApiError::forbidden(
                "forbidden",
                "this needs an operator; you are logged in as a viewer",
            ));
        }
        if who.via == Via::Session {
            check_same_origin(req)?;
            if need == Need::Operate && !is_page_request(req) {
                return Err(ApiError::forbidden(
                    "csrf",
                    "a request with the session cookie must be JSON or carry X-Requested-With",
                ));
            }
        }
        Ok(who)
    }

    /// The client's address for the login guard: the forwarded one behind a trusted proxy.
    pub fn client_ip(&self, req: &HttpRequest) -> String {
        if self.trust_forwarded
            && let Some(ip) = req.connection_info().realip_remote_addr()
        {
            return strip_port(ip);
        }
        req.peer_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default()
    }
}

const UNAUTHORIZED: &str =
    "log in (POST /api/v1/session) or send Authorization: Bearer <api token>";

/// Maps an admin failure to the API's error (only database failures are expected here).
pub fn admin_error(e: admin::AdminError, retry_after: u64) -> ApiError {
    match e {
        admin::AdminError::Db(e) => ApiError::database(e, retry_after),
        admin::AdminError::NotFound => ApiError::not_found("not_found", "not found"),
        admin::AdminError::Exists => ApiError::new(
            actix_web::http::StatusCode::CONFLICT,
            "exists",
            "already exists",
        ),
        admin::AdminError::Invalid(s) => ApiError::bad_request("invalid", s),
        e @ admin::AdminError::AtEntry { .. } => ApiError::bad_request("invalid", e.to_string()),
    }
}

fn credential(req: &HttpRequest) -> Result<Option<Credential<'_>>, ApiError> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        let v = v.to_str().unwrap_or_default();
        return match v.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() => {
                Ok(Some(Credential::Bearer(t.trim())))
            }
            _ => Err(ApiError::unauthorized(
                "the Authorization header must be `Bearer <api token>`",
            )),
        };
    }
    Ok(session_cookie(req).map(Credential::Cookie))
}

/// The value of the `lentera_session` cookie, if the request has one.
pub fn session_cookie(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
}

/// JSON, or a header a cross-site form cannot send; safe methods always pass.
fn is_page_request(req: &HttpRequest) -> bool {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return true;
    }
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
    json || req.headers().contains_key("x-requested-with")
}

/// An `Origin` (browsers send it on cross-site requests and WebSocket upgrades) must
/// name the host the request was sent to.
fn check_same_origin(req: &HttpRequest) -> Result<(), ApiError> {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
    let host = req.connection_info().host().to_owned();
    if origin_host.eq_ignore_ascii_case(&host) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "cross_origin",
            "the session cookie is only accepted from this site's own pages",
        ))
    }
}

fn strip_port(addr: &str) -> String {
    if let Ok(ip) = addr.parse::<IpAddr>() {
        return ip.to_string();
    }
    if let Ok(sock) = addr.parse::<std::net::SocketAddr>() {
        return sock.ip().to_string();
    }
    addr.trim_matches(|c| c == '[' || c == ']').to_owned()
}

/// `Set-Cookie` for a new session (`Secure` when the request came over HTTPS, as the
/// reverse proxy's `X-Forwarded-Proto` says).
pub fn session_set_cookie(token: &str, max_age_secs: i64, https: bool) -> String {
    let secure = if https { "; Secure" } else { "" };
    format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age_secs}{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let req = TestRequest::default()
            .insert_header((header::COOKIE, "a=1; lentera_session=lt_x; b=2"))
            .to_http_request();
        assert_eq!(session_cookie(&req).as_deref(), Some("lt_x"));
        let req = TestRequest::default()
            .insert_header((header::COOKIE, "lentera_session="))
            .to_http_request();
        assert_eq!(session_cookie(&req), None);
    }

    #[test]
    fn cookie_flags() {
        assert_eq!(
            session_set_cookie("lt_a", 60, true),
            "lentera_session=lt_a; HttpOnly; SameSite=Strict; Path=/; Max-Age=60; Secure"
        );
        assert!(!session_set_cookie("lt_a", 60, false).contains("Secure"));
    }

    #[test]
    fn page_requests_are_json_or_carry_the_header() {
        let put = |h: Option<(&str, &str)>| {
            let mut r = TestRequest::put();
            if let Some(h) = h {
                r = r.insert_header(h);
            }
            is_page_request(&r.to_http_request())
        };
        assert!(put(Some((
            "content-type",
            "application/json; charset=utf-8"
        ))));
        assert!(put(Some(("x-requested-with", "lentera"))));
        assert!(!put(Some(("content-type", "text/plain"))));
        assert!(!put(None));
    }

    #[test]
    fn forwarded_addresses_lose_their_port() {
        assert_eq!(strip_port("203.0.113.9:5555"), "203.0.113.9");
        assert_eq!(strip_port("[2001:db8::1]:80"), "2001:db8::1");
        assert_eq!(strip_port("2001:db8::1"), "2001:db8::1");
    }
}
