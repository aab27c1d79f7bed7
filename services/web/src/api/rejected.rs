//! `GET /api/v1/devices/{device}/rejected`: what the platform refused from a device after
//! it had answered it (a board's own MQTT publishes, readings PostgreSQL refused), so a
//! board owner can see why data is missing. Newest first, paged by `before`.

use actix_web::{HttpRequest, HttpResponse, web};
use lentera_protocol::reading::format_ts;
use lentera_protocol::rejection::excerpt;
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::{AppState, params};
use crate::access::Need;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectedQuery {
    limit: Option<String>,
    /// `next` of the previous page.
    before: Option<String>,
}

pub async fn list(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<RejectedQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.access.require(&req, &state.pool, Need::Read).await?;
    let device = params::device(&path)?;
    let limit = params::limit(query.limit.as_deref(), state.limits)?;
    let before = match query.before.as_deref().filter(|b| !b.is_empty()) {
        None => None,
        Some(b) => Some(b.parse::<i64>().map_err(|_| {
            ApiError::bad_request("invalid_cursor", "before must be the `next` of a page")
        })?),
    };
    // Not `require_device`: a device whose every message was refused was never stored.
    let mut rows = lentera_db::rejected::list(&state.pool, device.as_str(), before, limit + 1)
        .await
        .map_err(|e| state.db_error(e))?;
    let next = (rows.len() as i64 > limit).then(|| {
        rows.truncate(limit as usize);
        rows.last().map(|r| r.id.to_string())
    });
    let rejected: Vec<_> = rows
        .iter()
        .map(|r| {
            json!({
                "at": format_ts(r.at),
                "reason": r.reason,
                "detail": r.detail,
                "source": r.source,
                "topic": r.topic,
                "payload": excerpt(&r.payload),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "device": device,
        "rejected": rejected,
        "next": next.flatten(),
    })))
}
