//! `GET /api/v1/devices`: every device with last-seen time, status and latest metrics.

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::AppState;
use super::error::ApiError;

pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let devices = lentera_db::devices::list(&state.pool)
        .await
        .map_err(|e| state.db_error(e))?;
    Ok(HttpResponse::Ok().json(json!({ "devices": devices })))
}
