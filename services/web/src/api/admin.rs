//! Device administration for operators: provision, rotate, disable/rename, remove, and
//! the registry listing. The work is `lentera_auth::admin` (shared with the `lentera`
//! CLI); this file only speaks HTTP. A new token is in the answer exactly once, with a
//! board config snippet around it, and never in a log.

use std::str::FromStr;

use actix_web::{HttpRequest, HttpResponse, web};
use lentera_auth::Kind;
use lentera_auth::admin::{self, AdminError, DeviceChanges, NewDevice};
use lentera_db::registry::RegistryRow;
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::{AppState, params};
use crate::access::{Need, Principal};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddDevice {
    id: String,
    kind: String,
    name: Option<String>,
    location: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchDevice {
    disabled: Option<bool>,
    kind: Option<String>,
    name: Option<String>,
    location: Option<String>,
}

fn kind(raw: &str) -> Result<Kind, ApiError> {
    Kind::from_str(raw).map_err(|_| {
        ApiError::bad_request("invalid_kind", "kind must be sensor, greenhouse or lamp")
    })
}

fn unknown(id: &str) -> ApiError {
    ApiError::not_found(
        "unknown_device",
        format!("no device {id:?} in the registry"),
    )
}

fn map_err(state: &AppState, id: &str, e: AdminError) -> ApiError {
    match e {
        AdminError::NotFound => unknown(id),
        AdminError::Exists => ApiError::new(
            actix_web::http::StatusCode::CONFLICT,
            "device_exists",
            format!(
                "device {id:?} already has a token; rotate it with POST /api/v1/devices/{id}/token"
            ),
        ),
        AdminError::Invalid(s) => ApiError::bad_request("invalid_device", s),
        AdminError::Db(e) => state.db_error(e),
        e @ AdminError::AtEntry { .. } => ApiError::bad_request("invalid_device", e.to_string()),
    }
}

async fn operator(req: &HttpRequest, state: &AppState) -> Result<Principal, ApiError> {
    state.access.require(req, &state.pool, Need::Operate).await
}

/// `GET /api/v1/registry`: every device as the registry knows it (no hashes).
pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    operator(&req, &state).await?;
    let devices = admin::list(&state.pool)
        .await
        .map_err(|e| map_err(&state, "", e))?;
    Ok(HttpResponse::Ok().json(json!({ "devices": devices })))
}

/// `POST /api/v1/devices` → 201 `{device, token, config}`.
pub async fn add(
    req: HttpRequest,
    body: web::Json<AddDevice>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let who = operator(&req, &state).await?;
    let body = body.into_inner();
    let kind = kind(&body.kind)?;
    let id = params::device(&body.id)?;
    let token = admin::add_device(
        &state.pool,
        NewDevice {
            id: id.as_str().to_owned(),
            kind,
            name: body.name,
            location: body.location,
        },
    )
    .await
    .map_err(|e| map_err(&state, id.as_str(), e))?;
    tracing::info!(operator = ?who.name, device = ?id.as_str(), kind = kind.as_str(), "device provisioned");
    let device = admin::get(&state.pool, id.as_str())
        .await
        .map_err(|e| map_err(&state, id.as_str(), e))?;
    Ok(HttpResponse::Created().json(issued(&req, &state, device, &token)))
}

/// `POST /api/v1/devices/{id}/token` → 200 `{device, token, config}`; the old token
/// stops working at once (the doors cut its connections).
pub async fn rotate(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let who = operator(&req, &state).await?;
    let id = params::device(&path)?;
    let token = admin::rotate(&state.pool, id.as_str())
        .await
        .map_err(|e| map_err(&state, id.as_str(), e))?;
    tracing::info!(operator = ?who.name, device = ?id.as_str(), "device token rotated");
    let device = admin::get(&state.pool, id.as_str())
        .await
        .map_err(|e| map_err(&state, id.as_str(), e))?;
    Ok(HttpResponse::Ok().json(issued(&req, &state, device, &token)))
}

/// `PATCH /api/v1/devices/{id}` `{disabled?, kind?, name?, location?}` → 200 `{device}`.
pub async fn patch(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<PatchDevice>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let who = operator(&req, &state).await?;
    let id = params::device(&path)?;
    let body = body.into_inner();
    let changes = DeviceChanges {
        kind: body.kind.as_deref().map(kind).transpose()?,
        name: body.name,
        location: body.location,
    };
    let e = |e| map_err(&state, id.as_str(), e);
    if changes != DeviceChanges::default() {
        admin::update(&state.pool, id.as_str(), changes)
            .await
            .map_err(e)?;
    }
    if let Some(disabled) = body.disabled {
        admin::set_disabled(&state.pool, id.as_str(), disabled)
            .await
            .map_err(e)?;
    }
    let device = admin::get(&state.pool, id.as_str()).await.map_err(e)?;
    tracing::info!(operator = ?who.name, device = ?id.as_str(), disabled = device.disabled, "device changed");
    Ok(HttpResponse::Ok().json(json!({ "device": device })))
}

/// `DELETE /api/v1/devices/{id}` → 204 (its readings stay).
pub async fn remove(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let who = operator(&req, &state).await?;
    let id = params::device(&path)?;
    admin::remove(&state.pool, id.as_str())
        .await
        .map_err(|e| map_err(&state, id.as_str(), e))?;
    tracing::info!(operator = ?who.name, device = ?id.as_str(), "device removed");
    Ok(HttpResponse::NoContent().finish())
}

/// The answer that carries a token: shown once, so it comes with everything a board
/// needs around it.
fn issued(
    req: &HttpRequest,
    state: &AppState,
    device: RegistryRow,
    token: &str,
) -> serde_json::Value {
    let host = state.board.host.clone().unwrap_or_else(|| {
        let h = req.connection_info().host().to_owned();
        host_only(&h).to_owned()
    });
    let config = board_config(&state.board, &host, &device, token);
    json!({ "device": device, "token": token, "config": config })
}

/// Where boards reach the platform, for the snippet (from `[web]`).
#[derive(Debug, Clone)]
pub struct BoardEndpoints {
    pub host: Option<String>,
    pub http_port: u16,
    pub tcp_port: u16,
    pub mqtt_port: u16,
}

/// `example.org:8000` → `example.org`; `[::1]:8000` → `[::1]`.
fn host_only(h: &str) -> &str {
    match h.rfind(':') {
        Some(i) if !h[i..].contains(']') => &h[..i],
        _ => h,
    }
}

/// A ready-to-paste `config.h` for the board plus the same credentials for each door.
pub fn board_config(b: &BoardEndpoints, host: &str, d: &RegistryRow, token: &str) -> String {
    let id = &d.id;
    let topic = format!("lentera/{id}/telemetry");
    let sample = if d.kind == "lamp" {
        "\"lux\":120"
    } else {
        "\"temperature\":27.5"
    };
    format!(
        r#"// config.h for {id} ({kind}). The token is shown once: keep this file private.
#define LENTERA_DEVICE_ID  "{id}"
#define LENTERA_TOKEN      "{token}"
#define LENTERA_HOST       "{host}"
#define LENTERA_HTTP_PORT  {http}
#define LENTERA_TCP_PORT   {tcp}
#define LENTERA_MQTT_PORT  {mqtt}
#define LENTERA_TOPIC      "{topic}"

// HTTP (Authorization header):
//   curl -X POST http://{host}:{http}/api/v1/readings -H 'Authorization: Bearer {token}' -H 'content-type: application/json' -d '{{"device":"{id}",{sample}}}'
// HTTP (boards that cannot set headers): POST http://{host}:{http}/api/v1/devices/{token}/readings
// TCP, first line on each connection:
//   HELLO {id} {token}
// MQTT: client id and user name "{id}", password the token, publish to {topic}
"#,
        kind = d.kind,
        http = b.http_port,
        tcp = b.tcp_port,
        mqtt = b.mqtt_port,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_only_drops_the_port() {
        assert_eq!(host_only("example.org:8000"), "example.org");
        assert_eq!(host_only("example.org"), "example.org");
        assert_eq!(host_only("[::1]:8000"), "[::1]");
        assert_eq!(host_only("[::1]"), "[::1]");
    }
}
