//! `GET /api/v1/devices/{device}/rejected` over real HTTP against a real PostgreSQL:
//! dead letters newest first, excerpts safe to show, paging, bad parameters.

mod support;

use lentera_db::write::{Record, Rejected};
use support::{TestApp, t0};

fn dead_letter(device: &str, minute: i64, reason: &str, payload: &[u8]) -> Record {
    Record::Rejected(Rejected {
        device: device.into(),
        at: t0(minute),
        reason: reason.into(),
        detail: format!("{reason} detail"),
        source: "mqtt".into(),
        topic: format!("lentera/{device}/telemetry"),
        payload: payload.to_vec(),
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_devices_refusals_are_listed_newest_first_and_paged() {
    let app = TestApp::spawn().await;
    let long = [b'x'; 1000];
    app.store(&[
        dead_letter("gh-1", 0, "malformed_json", b"{not json"),
        dead_letter("gh-1", 1, "out_of_range", br#"{"lux":1e308}"#),
        dead_letter("gh-1", 2, "storage_refused", b"\x1b[31mERROR\n\0"),
        dead_letter("gh-1", 3, "malformed_json", &long),
        dead_letter("gh-2", 4, "out_of_range", b"{}"),
    ])
    .await;

    // gh-1 was never stored as a device (all it sent was refused): still listed.
    let (status, body) = app.get_json("/api/v1/devices/gh-1/rejected?limit=2").await;
    assert_eq!(status, 200, "{body}");
    let page = body["rejected"].as_array().unwrap();
    assert_eq!(page.len(), 2);
    assert_eq!(page[0]["reason"], "malformed_json");
    assert_eq!(page[0]["at"], "2026-11-22T00:03:00.000000Z");
    assert!(page[0]["payload"].as_str().unwrap().ends_with('…'));
    assert!(page[0]["payload"].as_str().unwrap().len() < 300);
    // Control characters arrive escaped, never raw.
    assert_eq!(page[1]["payload"], "\\u{1b}[31mERROR\\u{a}\\u{0}");
    assert_eq!(page[1]["source"], "mqtt");
    assert_eq!(page[1]["topic"], "lentera/gh-1/telemetry");
    assert_eq!(page[1]["detail"], "storage_refused detail");

    let next = body["next"].as_str().expect("a next page");
    let (status, body) = app
        .get_json(&format!(
            "/api/v1/devices/gh-1/rejected?limit=2&before={next}"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    let reasons: Vec<_> = body["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(reasons, ["out_of_range", "malformed_json"]);
    assert!(body["next"].is_null(), "{body}");

    let (_, body) = app.get_json("/api/v1/devices/nobody/rejected").await;
    assert_eq!(body["rejected"].as_array().unwrap().len(), 0);

    for (query, code) in [
        ("/api/v1/devices/bad.id/rejected", "invalid_device"),
        ("/api/v1/devices/gh-1/rejected?before=x", "invalid_cursor"),
        ("/api/v1/devices/gh-1/rejected?limit=0", "invalid_limit"),
        ("/api/v1/devices/gh-1/rejected?since=1", "invalid_query"),
    ] {
        let (status, body) = app.get_json(query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"], code, "{query}: {body}");
    }
    app.stop().await;
}
