//! Lamps: list, event log, and the operator override (`PUT .../mode`), which is published
//! as the retained `lentera/{device}/lamp/mode` for the lamp controller to obey.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use lentera_mqtt::PublishError;
use lentera_protocol::LampMode;
use lentera_protocol::reading::format_ts;
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::{AppState, params};
use crate::access::Need;

pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.access.require(&req, &state.pool, Need::Read).await?;
    let lamps = lentera_db::lamps::list(&state.pool)
        .await
        .map_err(|e| state.db_error(e))?;
    Ok(HttpResponse::Ok().json(json!({ "lamps": lamps })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    limit: Option<String>,
}

pub async fn events(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<EventsQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.access.require(&req, &state.pool, Need::Read).await?;
    let device = params::device(&path)?;
    let limit = params::limit(query.limit.as_deref(), state.limits)?;
    state.require_device(device.as_str()).await?;
    let events = lentera_db::lamps::events(&state.pool, device.as_str(), limit)
        .await
        .map_err(|e| state.db_error(e))?;
    Ok(HttpResponse::Ok().json(json!({ "device": device, "events": events })))
}

/// Parses the body as the protocol's `LampMode`, so the API accepts exactly what the
/// lamp controller will. An override that would already have expired is refused: it
/// would be published and ignored, which looks to the operator like a broken button.
pub fn parse_mode(body: &[u8], now: chrono::DateTime<Utc>) -> Result<LampMode, ApiError> {
    let mode = LampMode::from_payload(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_mode",
            format!(r#"body must be {{"mode":"auto"|"on"|"off","until":"<RFC 3339>"?}}: {e}"#),
        )
    })?;
    if mode.until.is_some_and(|u| u <= now) {
        return Err(ApiError::bad_request(
            "invalid_until",
            "until must be in the future",
        ));
    }
    Ok(mode)
}

pub async fn set_mode(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let who = state
        .access
        .require(&req, &state.pool, Need::Operate)
        .await?;
    let device = params::device(&path)?;
    let mode = parse_mode(&body, Utc::now())?;
    require_lamp(&state, device.as_str()).await?;
    let topic = state.topics.lamp_mode(&device);
    // Retained, so a lamp controller that restarts later still learns the override.
    match state
        .mqtt
        .publish_acked(topic, true, mode.to_payload())
        .await
    {
        Ok(()) => {
            tracing::info!(device = ?device.as_str(), operator = ?who.name, mode = mode.mode.as_str(), "lamp mode set");
            Ok(HttpResponse::Accepted().json(json!({
                "device": device,
                "mode": mode.mode,
                "until": mode.until.map(format_ts),
            })))
        }
        Err(e) => {
            tracing::warn!(device = ?device.as_str(), error = %e, "lamp mode not published");
            let code = match e {
                PublishError::Overloaded => "broker_overloaded",
                _ => "broker_unavailable",
            };
            Err(ApiError::unavailable(
                code,
                format!("{e}; the mode was not changed, try again"),
                state.retry_after,
            ))
        }
    }
}

/// 404 unless `device` is in the registry as a lamp: an override for a greenhouse would
/// be published and obeyed by nobody.
async fn require_lamp(state: &AppState, device: &str) -> Result<(), ApiError> {
    match lentera_auth::admin::get(&state.pool, device).await {
        Ok(row) if row.kind == "lamp" => Ok(()),
        Ok(row) => Err(ApiError::not_found(
            "not_a_lamp",
            format!("device {device:?} is a {}, not a lamp", row.kind),
        )),
        Err(lentera_auth::admin::AdminError::NotFound) => Err(ApiError::not_found(
            "unknown_device",
            format!("no device {device:?} is known"),
        )),
        Err(lentera_auth::admin::AdminError::Db(e)) => Err(state.db_error(e)),
        Err(e) => Err(ApiError::bad_request("invalid_device", e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};
    use lentera_protocol::ModeKind;

    #[test]
    fn mode_body_follows_the_protocol() {
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
        assert_eq!(
            parse_mode(br#"{"mode":"off"}"#, now).unwrap().mode,
            ModeKind::Off
        );
        let m = parse_mode(br#"{"mode":"on","until":"2026-11-22T05:00:00Z"}"#, now).unwrap();
        assert_eq!(m.until, Some(now + Duration::hours(4)));
        for bad in [
            &b""[..],
            b"{",
            br#"{"mode":"dim"}"#,
            br#"{"mode":"on","x":1}"#,
            br#"{"until":"2026-11-22T05:00:00Z"}"#,
        ] {
            assert_eq!(parse_mode(bad, now).unwrap_err().code, "invalid_mode");
        }
        let past = parse_mode(br#"{"mode":"on","until":"2026-11-22T00:00:00Z"}"#, now);
        assert_eq!(past.unwrap_err().code, "invalid_until");
    }
}
