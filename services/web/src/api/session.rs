//! `/api/v1/session`: log in (`POST`), who am I (`GET`), log out (`DELETE`).
//!
//! Login takes `{name, password}` as JSON or as an HTML form. The password is checked
//! by `lentera_auth::admin::login` on a blocking thread (PBKDF2 is slow on purpose), and
//! an unknown name costs the same as a wrong password and gets the same answer. Guesses
//! are rate-limited per name and per client address before any hashing is done, which
//! also keeps a login flood from eating the CPU. Success sets the session cookie; the
//! token itself never appears in a body or a log.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use lentera_auth::admin;
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use crate::access::{self, Need, Principal, admin_error};

/// Longest operator name and password looked at: anything longer cannot be right.
const MAX_NAME: usize = 64;
const MAX_PASSWORD: usize = 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    name: String,
    password: String,
}

fn is_form(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

/// The body's credentials. Parse errors say nothing about the values (they could be a
/// password typed into the wrong field).
fn parse_login(req: &HttpRequest, body: &[u8]) -> Result<Login, ApiError> {
    const SHAPE: &str = r#"body must be {"name":"…","password":"…"} (JSON or a form)"#;
    if is_form(req) {
        let text =
            std::str::from_utf8(body).map_err(|_| ApiError::bad_request("invalid_body", SHAPE))?;
        web::Query::<Login>::from_query(text)
            .map(web::Query::into_inner)
            .map_err(|_| ApiError::bad_request("invalid_body", SHAPE))
    } else {
        serde_json::from_slice(body).map_err(|_| ApiError::bad_request("invalid_body", SHAPE))
    }
}

pub async fn login(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let access = &state.access;
    let ip = access.client_ip(&req);
    access
        .by_ip
        .check(&ip)
        .map_err(|d| too_many(lentera_auth::retry_after_secs(d)))?;
    let creds = parse_login(&req, &body)?;
    let refused = || ApiError::unauthorized("wrong name or password");
    if creds.name.is_empty() || creds.name.len() > MAX_NAME || creds.password.len() > MAX_PASSWORD {
        return Err(refused());
    }
    access
        .by_name
        .check(&creds.name.to_lowercase())
        .map_err(|d| too_many(lentera_auth::retry_after_secs(d)))?;
    let Some((name, role)) = admin::login(&state.pool, &creds.name, &creds.password)
        .await
        .map_err(|e| admin_error(e, state.retry_after))?
    else {
        // Not the name: it may be a password typed into the wrong field.
        tracing::info!(client = ?ip, "login refused");
        return Err(refused());
    };
    let expires_at = Utc::now() + access.session_ttl;
    let token = admin::new_session(&state.pool, &name, expires_at)
        .await
        .map_err(|e| admin_error(e, state.retry_after))?;
    tracing::info!(operator = ?name, role = role.as_str(), client = ?ip, "operator logged in");
    let https = req.connection_info().scheme() == "https";
    let cookie = access::session_set_cookie(&token, access.session_ttl.num_seconds(), https);
    if is_form(&req) {
        // A form posted without JavaScript: back to the dashboard, logged in.
        return Ok(HttpResponse::SeeOther()
            .insert_header((header::SET_COOKIE, cookie))
            .insert_header((header::LOCATION, "/"))
            .finish());
    }
    Ok(HttpResponse::Ok()
        .insert_header((header::SET_COOKIE, cookie))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({
            "name": name,
            "role": role.as_str(),
            "via": "session",
            "expires_at": lentera_protocol::reading::format_ts(expires_at),
        })))
}

fn too_many(retry_after: u64) -> ApiError {
    ApiError::rate_limited("too many login attempts; wait and try again", retry_after)
}

pub async fn whoami(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let who: Principal = if state.access.open {
        state.access.require(&req, &state.pool, Need::Read).await?
    } else {
        state
            .access
            .identify(&req, &state.pool)
            .await?
            .ok_or_else(|| ApiError::unauthorized("not logged in"))?
    };
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({
            "name": who.name,
            "role": who.role.as_str(),
            "via": who.via.as_str(),
            "open": state.access.open,
            "public_read": state.access.public_read,
        })))
}

/// Revokes the session cookie's token and clears the cookie. Idempotent: 204 either way.
pub async fn logout(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if let Some(token) = access::session_cookie(&req) {
        admin::revoke_token(&state.pool, &token)
            .await
            .map_err(|e| admin_error(e, state.retry_after))?;
    }
    let https = req.connection_info().scheme() == "https";
    Ok(HttpResponse::NoContent()
        .insert_header((header::SET_COOKIE, access::session_set_cookie("", 0, https)))
        .finish())
}
