//! `GET /api/v1/devices/{device}/readings`: raw or bucketed history as JSON or CSV.
//!
//! - JSON: at most `limit` points — raw rows or buckets alike — and `next`, a cursor
//!   for the following page (pass it back as `cursor=`, same other parameters), or
//!   `null` when nothing is left: one row more than `limit` is asked of the database,
//!   so `null` means complete, never "exactly full, maybe more". Without `limit`, raw
//!   rows come `web.default_limit` a page and buckets `web.max_limit` a page (a year of
//!   hourly buckets of one metric, 8,760, fits in one).
//! - CSV (`Accept: text/csv`): streamed in chunks straight from the database cursor, so
//!   an export of the whole window never sits in memory; without an explicit `limit` it
//!   returns every row of the window (the window itself stays bounded by
//!   `max_window_days`). A database failure mid-stream aborts the response, so a
//!   truncated export cannot be mistaken for a complete one.
//!
//! Bucketed queries whose bucket is a whole number of hours read the hourly rollup
//! (see `lentera_db::history`).

use std::fmt::Write as _;

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use lentera_db::history::{Cursor, Point, Query};
use lentera_protocol::reading::format_ts;
use tokio::sync::mpsc;

use super::error::ApiError;
use super::{AppState, params};
use crate::access::Need;

/// Rows per streamed CSV chunk: big enough to amortise a write, small enough to flow.
const CSV_CHUNK_ROWS: usize = 2_000;

pub async fn history(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<Vec<(String, String)>>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.access.require(&req, &state.pool, Need::Read).await?;
    let device = params::device(&path)?;
    let mut request = params::history(device.clone(), &query, Utc::now(), state.limits)?;
    state.require_device(device.as_str()).await?;
    if wants_csv(&req) {
        if !query.iter().any(|(k, v)| k == "limit" && !v.is_empty()) {
            request.query.limit = i64::MAX;
        }
        return Ok(stream_csv(state.pool.clone(), request.query));
    }
    let q = &request.query;
    // One row beyond the page tells whether another page exists.
    let probe = Query {
        limit: q.limit + 1,
        ..q.clone()
    };
    let mut points = lentera_db::history::query(&state.pool, &probe)
        .await
        .map_err(|e| state.db_error(e))?;
    let next = if points.len() as i64 > q.limit {
        points.truncate(q.limit as usize);
        points.last().map(|last| Cursor::after(last).to_string())
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(Page {
        device: device.as_str(),
        metric: q.metric.as_deref(),
        from: format_ts(q.from),
        to: format_ts(q.to),
        bucket: request.bucket.as_deref(),
        agg: request.agg.as_deref(),
        next,
        points: points.iter().map(JsonPoint::from).collect(),
    }))
}

/// The JSON answer, serialised directly from structs: a year of hourly buckets is 8,760
/// points, and building a `serde_json::Value` map per point cost more than the query.
#[derive(serde::Serialize)]
struct Page<'a> {
    device: &'a str,
    metric: Option<&'a str>,
    from: String,
    to: String,
    bucket: Option<&'a str>,
    agg: Option<&'a str>,
    next: Option<String>,
    points: Vec<JsonPoint<'a>>,
}

#[derive(serde::Serialize)]
struct JsonPoint<'a> {
    metric: &'a str,
    ts: String,
    value: f64,
}

impl<'a> From<&'a Point> for JsonPoint<'a> {
    fn from(p: &'a Point) -> Self {
        Self {
            metric: &p.metric,
            ts: format_ts(p.ts),
            value: p.value,
        }
    }
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

/// Streams `q` as CSV: a task reads chunks from the database and a bounded channel
/// carries them to the response, so a slow client slows the query instead of filling
/// memory.
fn stream_csv(pool: sqlx::PgPool, q: Query) -> HttpResponse {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let _ = tx.try_send(Ok(Bytes::from_static(CSV_HEADER.as_bytes())));
    actix_web::rt::spawn(async move {
        let sink = |points: Vec<Point>| {
            let tx = tx.clone();
            async move { tx.send(Ok(Bytes::from(csv_rows(&points)))).await.is_ok() }
        };
        if let Err(e) = lentera_db::history::for_each_chunk(&pool, &q, CSV_CHUNK_ROWS, sink).await {
            tracing::warn!(error = %e, "CSV export failed mid-stream; aborting the response");
            let _ = tx.send(Err(std::io::Error::other("database error"))).await;
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .streaming(body)
}

const CSV_HEADER: &str = "metric,ts,value\n";

/// CSV lines without the header.
fn csv_rows(points: &[Point]) -> String {
    let mut out = String::with_capacity(48 * points.len());
    for p in points {
        let _ = writeln!(out, "{},{},{}", p.metric, format_ts(p.ts), p.value);
    }
    out
}

/// `metric,ts,value` with a header line. Metric names are `[A-Za-z0-9_.-]`, so no cell
/// ever needs quoting.
pub fn csv(points: &[Point]) -> String {
    format!("{CSV_HEADER}{}", csv_rows(points))
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
            "metric,ts,value\ntemperature,2026-11-22T01:00:00.000000Z,27.5\nlux,2026-11-22T01:00:00.000000Z,3\n"
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
