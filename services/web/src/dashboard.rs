//! The two static documents compiled into the binary: the dashboard at `/` and the
//! OpenAPI description at `/api/v1/openapi.json` (routed inside the `/api/v1` scope). No files to deploy, no CDN to reach —
//! a village network may have no internet at all.

use actix_web::{HttpResponse, web};

const INDEX_HTML: &str = include_str!("../static/index.html");
const OPENAPI_JSON: &str = include_str!("../static/openapi.json");

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(crate::api::res("/").get(index));
}

async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(INDEX_HTML)
}

pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI_JSON)
}

#[cfg(test)]
mod tests {
    #[test]
    fn openapi_document_is_json() {
        let v: serde_json::Value = serde_json::from_str(super::OPENAPI_JSON).unwrap();
        assert_eq!(v["openapi"], "3.1.0");
    }
}
