//! `GET /api/v1/devices/{device}/readings`: raw or bucketed history as JSON or CSV.

use std::fmt::Write as _;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use lentera_db::history::Point;
use lentera_protocol::reading::format_ts;
use serde_json::json;

use super::error::ApiError;
use super::{AppState, params};

pub async fn history(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<Vec<(String, String)>>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let device = params::device(&path)?;
    let request = params::history(device.clone(), &query, Utc::now(), state.limits)?;
    state.require_device(device.as_str()).await?;
    let points = lentera_db::history::query(&state.pool, &request.query)
        .await
        .map_err(|e| state.db_error(e))?;
    if wants_csv(&req) {
        return Ok(HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .body(csv(&points)));
    }
    let q = &request.query;
    Ok(HttpResponse::Ok().json(json!({
        "device": device,
        "metric": q.metric,
        "from": format_ts(q.from),
        "to": format_ts(q.to),
        "bucket": request.bucket,
        "agg": request.agg,
        "points": points.iter().map(|p| json!({
            "metric": p.metric, "ts": format_ts(p.ts), "value": p.value,
        })).collect::<Vec<_>>(),
    })))
}

/// CSV when the client lists `text/csv` in `Accept` (a spreadsheet or `curl -H`); JSON
/// otherwise, including for `*/*`.
fn wants_csv(req: &HttpRequest) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/csv"))
        })
}

/// `metric,ts,value` with a header line. Metric names are `[A-Za-z0-9_.-]`, so no cell
/// ever needs quoting.
pub fn csv(points: &[Point]) -> String {
    let mut out = String::with_capacity(32 * (points.len() + 1));
    out.push_str("metric,ts,value\n");
    for p in points {
        let _ = writeln!(out, "{},{},{}", p.metric, format_ts(p.ts), p.value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;
    use chrono::TimeZone;

    #[test]
    fn csv_has_a_header_and_one_line_per_point() {
        let ts = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
        let points = [
            Point {
                metric: "temperature".into(),
                ts,
                value: 27.5,
            },
            Point {
                metric: "lux".into(),
                ts,
                value: 3.0,
            },
        ];
        assert_eq!(
            csv(&points),
            "metric,ts,value\ntemperature,2026-11-22T01:00:00.000Z,27.5\nlux,2026-11-22T01:00:00.000Z,3\n"
        );
    }

    #[test]
    fn csv_only_when_asked_for() {
        let with = |accept: &str| {
            wants_csv(
                &TestRequest::default()
                    .insert_header((header::ACCEPT, accept))
                    .to_http_request(),
            )
        };
        assert!(with("text/csv"));
        assert!(with("application/json;q=0.5, TEXT/CSV; q=0.9"));
        assert!(!with("*/*"));
        assert!(!with("application/json"));
        assert!(!wants_csv(&TestRequest::default().to_http_request()));
    }
}
