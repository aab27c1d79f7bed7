//! `GET /api/v1/devices`: every device with last-seen time, status and latest metrics.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use crate::access::Need;

pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.access.require(&req, &state.pool, Need::Read).await?;
    let devices = lentera_db::devices::list(&state.pool)
        .await
        .map_err(|e| state.db_error(e))?;
    Ok(HttpResponse::Ok().json(json!({ "devices": devices })))
}
