//! History REST beyond the basics, against real PostgreSQL: keyset paging walks every raw
//! row and every bucket exactly once in both orders (a bucketed answer is never cut
//! without a `next`), whole-hour buckets (served by the hourly rollup) equal aggregates
//! recomputed from raw rows — also across partial edge hours — and CSV without a limit
//! streams the whole window.

mod support;

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use support::{TestApp, reading, t0};

fn q(t: DateTime<Utc>) -> String {
    t.timestamp_millis().to_string()
}

/// Follows `next` from the first page to the last; returns (metric, ts) of every row and
/// the number of pages.
async fn walk(app: &TestApp, base: &str) -> (Vec<(String, String)>, usize) {
    let mut rows = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{base}&cursor={c}"),
            None => base.to_owned(),
        };
        let (status, body) = app.get_json(&url).await;
        assert_eq!(status, 200, "{body}");
        pages += 1;
        for p in body["points"].as_array().unwrap() {
            rows.push((
                p["metric"].as_str().unwrap().to_owned(),
                p["ts"].as_str().unwrap().to_owned(),
            ));
        }
        match &body["next"] {
            Value::String(c) => cursor = Some(c.clone()),
            Value::Null => return (rows, pages),
            other => panic!("next = {other}"),
        }
        assert!(pages < 100, "paging does not terminate");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cursor_paging_visits_every_raw_row_once_in_either_order() {
    let app = TestApp::spawn().await;
    let records: Vec<_> = (0..10)
        .map(|i| {
            reading(
                "gh-1",
                t0(i),
                &[("temperature", i as f64), ("humidity", 50.0)],
            )
        })
        .collect();
    app.store(&records).await;
    let window = format!("from={}&to={}", q(t0(0)), q(t0(10)));

    let (all, _) = walk(
        &app,
        &format!("/api/v1/devices/gh-1/readings?{window}&limit=1000"),
    )
    .await;
    assert_eq!(all.len(), 20);
    let (asc, pages) = walk(
        &app,
        &format!("/api/v1/devices/gh-1/readings?{window}&limit=7"),
    )
    .await;
    assert_eq!((asc.clone(), pages), (all.clone(), 3));
    let (desc, _) = walk(
        &app,
        &format!("/api/v1/devices/gh-1/readings?{window}&limit=6&order=desc"),
    )
    .await;
    let mut reversed = all.clone();
    reversed.reverse();
    assert_eq!(desc, reversed);

    // Rows added behind the cursor do not shift later pages (keyset, not OFFSET).
    let (_, first) = app
        .get_json(&format!("/api/v1/devices/gh-1/readings?{window}&limit=4"))
        .await;
    app.store(&[reading("gh-1", t0(0), &[("lux", 1.0)])]).await;
    let next = first["next"].as_str().unwrap();
    let (_, second) = app
        .get_json(&format!(
            "/api/v1/devices/gh-1/readings?{window}&limit=4&cursor={next}"
        ))
        .await;
    assert_eq!(second["points"][0]["ts"], all[4].1);
    assert_eq!(second["points"][0]["metric"], all[4].0);

    let (status, body) = app
        .get_json(&format!(
            "/api/v1/devices/gh-1/readings?{window}&cursor=garbage"
        ))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_cursor"))
    );
    app.stop().await;
}

/// SQL over raw rows, independent of the code under test.
async fn raw_buckets(
    app: &TestApp,
    agg: &str,
    bucket_secs: i64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<(String, f64)> {
    let expr = match agg {
        "avg" => "avg(value)",
        "min" => "min(value)",
        "max" => "max(value)",
        "sum" => "sum(value)",
        "count" => "count(*)::float8",
        _ => "(array_agg(value ORDER BY ts DESC))[1]",
    };
    let rows: Vec<(DateTime<Utc>, f64)> = sqlx::query_as(&format!(
        "SELECT date_bin(make_interval(secs => $1), ts, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS b, {expr}
         FROM readings WHERE device = 'gh-1' AND metric = 'temperature' AND ts >= $2 AND ts < $3
         GROUP BY 1 ORDER BY 1"
    ))
    .bind(bucket_secs as f64)
    .bind(from)
    .bind(to)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(b, v)| (lentera_protocol::reading::format_ts(b), v))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn hourly_and_daily_buckets_from_the_rollup_equal_raw_aggregates() {
    let app = TestApp::spawn().await;
    // Three days of irregular readings (every 7 minutes, a sawtooth), in 3 batches so the
    // rollup is built by upserts, plus one batch redelivered.
    let start = t0(0) - Duration::days(3);
    let records: Vec<_> = (0..(3 * 24 * 60 / 7))
        .map(|i| {
            let v = ((i * 37) % 101) as f64 / 4.0 - 5.0;
            reading(
                "gh-1",
                start + Duration::minutes(7 * i),
                &[("temperature", v)],
            )
        })
        .collect();
    for chunk in records.chunks(250) {
        app.store(chunk).await;
    }
    app.store(&records[..100]).await;

    // Edges inside hours on purpose: partial hours come from raw rows.
    let from = start + Duration::minutes(95);
    let to = t0(0) - Duration::minutes(20);
    for (bucket, secs) in [("1h", 3600), ("3h", 10_800), ("1d", 86_400)] {
        for agg in ["avg", "min", "max", "sum", "count", "last"] {
            let (status, body) = app
                .get_json(&format!(
                    "/api/v1/devices/gh-1/readings?metric=temperature&bucket={bucket}&agg={agg}&from={}&to={}&limit=10000",
                    q(from),
                    q(to)
                ))
                .await;
            assert_eq!(status, 200, "{body}");
            let got: Vec<(String, f64)> = body["points"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["ts"].as_str().unwrap().to_owned(),
                        p["value"].as_f64().unwrap(),
                    )
                })
                .collect();
            let want = raw_buckets(&app, agg, secs, from, to).await;
            assert_eq!(got.len(), want.len(), "{bucket} {agg}");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.0, w.0, "{bucket} {agg}");
                assert!(
                    (g.1 - w.1).abs() <= 1e-9 * w.1.abs().max(1.0),
                    "{bucket} {agg}: {g:?} vs {w:?}"
                );
            }
        }
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn csv_without_a_limit_streams_the_whole_window() {
    let app = TestApp::spawn().await;
    let start = t0(0) - Duration::days(6);
    let records: Vec<_> = (0..6 * 24 * 60)
        .map(|i| {
            reading(
                "gh-1",
                start + Duration::minutes(i),
                &[("humidity", (i % 100) as f64)],
            )
        })
        .collect();
    for chunk in records.chunks(1000) {
        app.store(chunk).await;
    }
    let text = app
        .http
        .get(app.url(&format!(
            "/api/v1/devices/gh-1/readings?from={}&to={}",
            q(start),
            q(t0(0))
        )))
        .header("Accept", "text/csv")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        6 * 24 * 60 + 1,
        "header plus every row, beyond max_limit"
    );
    assert_eq!(lines[0], "metric,ts,value");
    assert_eq!(
        lines[1],
        format!("humidity,{},0", lentera_protocol::reading::format_ts(start))
    );
    app.stop().await;
}

/// Every (metric, ts, value) point of a bucketed query, following `next` to the end;
/// returns the points and the page count.
async fn walk_points(app: &TestApp, base: &str) -> (Vec<(String, String, f64)>, usize) {
    let mut points = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{base}&cursor={c}"),
            None => base.to_owned(),
        };
        let (status, body) = app.get_json(&url).await;
        assert_eq!(status, 200, "{body}");
        pages += 1;
        for p in body["points"].as_array().unwrap() {
            points.push((
                p["metric"].as_str().unwrap().to_owned(),
                p["ts"].as_str().unwrap().to_owned(),
                p["value"].as_f64().unwrap(),
            ));
        }
        match &body["next"] {
            Value::String(c) => cursor = Some(c.clone()),
            Value::Null => return (points, pages),
            other => panic!("next = {other}"),
        }
        assert!(pages < 100, "paging does not terminate");
    }
}

/// A year of hourly readings for two metrics: bucket=1h without `limit` returns every
/// bucket of one metric in one page (8,760 ≤ max_limit) and, for both metrics (17,520
/// points), a full page plus `next` — never a silent cut. Following `next` (also with a
/// small `limit`, in either order, over the rollup and over raw rows) yields every
/// bucket exactly once, equal to the single-page answer.
#[tokio::test(flavor = "multi_thread")]
async fn bucketed_history_is_complete_and_pages_with_next() {
    let app = TestApp::spawn().await;
    let start = t0(0) - Duration::days(365);
    let hours = 365 * 24;
    let records: Vec<_> = (0..hours)
        .map(|i| {
            reading(
                "gh-1",
                start + Duration::hours(i),
                &[
                    ("temperature", (i % 40) as f64),
                    ("humidity", (i % 90) as f64),
                ],
            )
        })
        .collect();
    for chunk in records.chunks(5000) {
        app.store(chunk).await;
    }
    let window = format!("from={}&to={}", q(start), q(t0(0)));

    // One metric: the whole year in one page, `next` null.
    let (status, body) = app
        .get_json(&format!(
            "/api/v1/devices/gh-1/readings?metric=temperature&bucket=1h&{window}"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["points"].as_array().unwrap().len(), hours as usize);
    assert_eq!(body["next"], Value::Null, "nothing left, so no cursor");
    assert_eq!(
        body["points"][0]["ts"],
        lentera_protocol::reading::format_ts(start)
    );

    // Both metrics: more points than a page may hold.
    let base = format!("/api/v1/devices/gh-1/readings?bucket=1h&{window}");
    let (_, first) = app.get_json(&base).await;
    assert_eq!(first["points"].as_array().unwrap().len(), 10_000);
    assert!(first["next"].is_string(), "a cut page says where to go on");
    let (all, pages) = walk_points(&app, &base).await;
    assert_eq!((all.len(), pages), (2 * hours as usize, 2));
    let mut keys: Vec<(String, String)> =
        all.iter().map(|(m, t, _)| (t.clone(), m.clone())).collect();
    let sorted = {
        let mut k = keys.clone();
        k.sort();
        k
    };
    assert_eq!(keys, sorted, "ascending by (bucket, metric) across pages");
    keys.dedup();
    assert_eq!(keys.len(), all.len(), "no bucket twice");

    // Small pages, descending, rollup (1d) and raw-row buckets (90m): the same points as
    // one page, in reverse, each once.
    for (bucket, limit) in [("1d", 97), ("90m", 997)] {
        let one = format!("/api/v1/devices/gh-1/readings?bucket={bucket}&agg=max&{window}");
        let (whole, _) = walk_points(&app, &one).await;
        let per_metric = if bucket == "1d" {
            365
        } else {
            hours as usize * 2 / 3
        };
        assert_eq!(whole.len(), 2 * per_metric, "{bucket}");
        let (paged, pages) = walk_points(&app, &format!("{one}&order=desc&limit={limit}")).await;
        assert_eq!(pages, whole.len().div_ceil(limit), "{bucket}");
        let mut reversed = whole.clone();
        reversed.reverse();
        assert_eq!(paged, reversed, "{bucket}");
    }

    // A page that ends exactly at the last bucket has `next` null (no empty last page).
    let (_, body) = app
        .get_json(&format!(
            "/api/v1/devices/gh-1/readings?metric=temperature&bucket=1d&limit=365&{window}"
        ))
        .await;
    assert_eq!(body["points"].as_array().unwrap().len(), 365);
    assert_eq!(body["next"], Value::Null);

    // CSV without a limit: every bucket of the window.
    let text = app
        .http
        .get(app.url(&base))
        .header("Accept", "text/csv")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text.lines().count(), 2 * hours as usize + 1);
    app.stop().await;
}
