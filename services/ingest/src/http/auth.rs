//! Which device an HTTP request speaks for, and its quota.
//!
//! Closed mode: `Authorization: Bearer <token>`, or the token in the path of
//! `POST /api/v1/devices/{token}/readings` for boards that cannot set a header. No
//! token, an unknown one, a wrong one or a disabled device's are one answer: `401
//! unauthorized` with `WWW-Authenticate: Bearer`. Checked before the body is read, so a
//! stranger's body is never buffered. Open mode: nobody is asked (`None`).
//!
//! Tokens are never logged: no access log runs on this server, and no span or event
//! here records the header or the path.

use actix_web::HttpRequest;
use actix_web::http::header;
use lentera_auth::{Denied, retry_after_secs};
use lentera_protocol::DeviceId;

use super::HttpState;
use super::error::ApiError;

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The device the request's bearer token admits; `None` in open mode.
pub async fn from_bearer(
    req: &HttpRequest,
    state: &HttpState,
) -> Result<Option<DeviceId>, ApiError> {
    if state.identity.is_open() {
        return Ok(None);
    }
    let token = bearer(req).ok_or(ApiError::Unauthorized)?;
    from_token(token, state).await
}

/// The device `token` admits; `None` in open mode (the token is not looked at).
pub async fn from_token(token: &str, state: &HttpState) -> Result<Option<DeviceId>, ApiError> {
    if state.identity.is_open() {
        return Ok(None);
    }
    match state.identity.token(token).await {
        Ok(device) => Ok(Some(device)),
        Err(Denied::Unauthorized) => Err(ApiError::Unauthorized),
        Err(Denied::Unavailable) => Err(ApiError::RegistryUnavailable),
    }
}

/// Takes one request from `device`'s quota.
pub fn rate(state: &HttpState, device: &DeviceId) -> Result<(), ApiError> {
    state
        .identity
        .rate(device)
        .map_err(|wait| ApiError::RateLimited {
            retry_after: retry_after_secs(wait),
        })
}
