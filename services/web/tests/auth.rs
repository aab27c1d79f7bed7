//! Operators and viewers over real HTTP against a real PostgreSQL: login, the session
//! cookie, logout, bearer API tokens, roles, `web.public_read`, `auth.open`, lamp mode
//! only for lamps, and device administration over REST.

mod support;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, SET_COOKIE, WWW_AUTHENTICATE};
use serde_json::{Value, json};
use support::{PASSWORD, Role, TestApp, closed_port};

async fn login(app: &TestApp, name: &str, password: &str) -> reqwest::Response {
    app.anon
        .post(app.url("/api/v1/session"))
        .json(&json!({"name": name, "password": password}))
        .send()
        .await
        .unwrap()
}

/// `lentera_session=<token>` from a login answer.
fn cookie_of(r: &reqwest::Response) -> String {
    let set = r.headers()[SET_COOKIE].to_str().unwrap();
    set.split(';').next().unwrap().to_owned()
}

async fn body(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    (status, v)
}

#[tokio::test(flavor = "multi_thread")]
async fn login_sets_a_strict_http_only_cookie_and_logout_revokes_it() {
    let app = TestApp::spawn().await;
    let r = login(&app, "op", PASSWORD).await;
    assert_eq!(r.status(), 200);
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=86400"] {
        assert!(set.contains(flag), "{set}");
    }
    assert!(!set.contains("Secure"), "plain http: {set}");
    let cookie = cookie_of(&r);
    let token = cookie.strip_prefix("lentera_session=").unwrap().to_owned();
    assert!(token.starts_with("lt_"), "{cookie}");
    let (_, me) = body(r).await;
    assert_eq!(me["name"], "op");
    assert_eq!(me["role"], "operator");
    assert!(
        !me.to_string().contains(&token),
        "the token is only in the cookie"
    );

    // Only the hash is stored.
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM operator_tokens WHERE kind = 'session' AND hash = $1",
    )
    .bind(&lentera_auth::token::hash(&token)[..])
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(stored, 1);

    // Behind the HTTPS proxy the cookie is Secure.
    let r = app
        .anon
        .post(app.url("/api/v1/session"))
        .header("x-forwarded-proto", "https")
        .json(&json!({"name": "op", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("; Secure")
    );

    let with_cookie = |method: reqwest::Method, path: &str| {
        app.anon
            .request(method, app.url(path))
            .header(COOKIE, &cookie)
    };
    let (status, me) = body(
        with_cookie(reqwest::Method::GET, "/api/v1/session")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, &me["name"], &me["via"]),
        (200, &json!("op"), &json!("session"))
    );
    let r = with_cookie(reqwest::Method::GET, "/api/v1/devices")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A state change riding on the cookie must look like our page's own request.
    let (status, err) = body(
        with_cookie(reqwest::Method::PUT, "/api/v1/lamps/lamp-1/mode")
            .header(CONTENT_TYPE, "text/plain")
            .body(r#"{"mode":"on"}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, err["error"].as_str()), (403, Some("csrf")));
    let (status, err) = body(
        with_cookie(reqwest::Method::POST, "/api/v1/devices")
            .header("origin", "http://evil.example")
            .json(&json!({"id": "gh-1", "kind": "greenhouse"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, err["error"].as_str()), (403, Some("cross_origin")));
    let r = with_cookie(reqwest::Method::POST, "/api/v1/devices")
        .header("origin", format!("http://{}", app.addr))
        .json(&json!({"id": "gh-1", "kind": "greenhouse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // Logout revokes the session: the same cookie is refused afterwards.
    let r = with_cookie(reqwest::Method::DELETE, "/api/v1/session")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(
        r.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let (status, err) = body(
        with_cookie(reqwest::Method::GET, "/api/v1/devices")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, err["error"].as_str()), (401, Some("unauthorized")));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_name_and_wrong_password_get_the_same_answer_and_forms_work() {
    let app = TestApp::spawn().await;
    let a = login(&app, "op", "wrong password").await;
    let b = login(&app, "nobody", PASSWORD).await;
    assert_eq!(a.status(), 401);
    assert_eq!(b.status(), 401);
    assert!(a.headers().get(SET_COOKIE).is_none());
    assert_eq!(a.headers()[WWW_AUTHENTICATE], b.headers()[WWW_AUTHENTICATE]);
    assert_eq!(a.text().await.unwrap(), b.text().await.unwrap());

    // A disabled operator is refused the same way.
    lentera_db::operators::set_disabled(&app.pool, "op", true)
        .await
        .unwrap();
    let c = login(&app, "op", PASSWORD).await;
    assert_eq!(c.status(), 401);
    lentera_db::operators::set_disabled(&app.pool, "op", false)
        .await
        .unwrap();

    // An HTML form without JavaScript: 303 back to the dashboard with the cookie.
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirect
        .post(app.url("/api/v1/session"))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("name=op&password={}", PASSWORD.replace(' ', "+")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/");
    assert!(cookie_of(&r).starts_with("lentera_session=lt_"));

    let (status, err) = body(
        app.anon
            .post(app.url("/api/v1/session"))
            .json(&json!({"name": "op"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, err["error"].as_str()), (400, Some("invalid_body")));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn guesses_are_rate_limited_per_name_and_per_address() {
    let app = TestApp::spawn_with(closed_port(), |s| {
        s.web.login_rate_per_sec = 0.001;
        s.web.login_burst_per_name = 3;
        s.web.login_burst_per_ip = 6;
    })
    .await;
    for _ in 0..3 {
        assert_eq!(login(&app, "op", "guess").await.status(), 401);
    }
    let r = login(&app, "op", PASSWORD).await;
    assert_eq!(r.status(), 429, "even the right password waits");
    assert!(r.headers().contains_key("retry-after"));
    let (_, err) = body(r).await;
    assert_eq!(err["error"], "rate_limited");
    for _ in 0..2 {
        assert_eq!(login(&app, "other", "guess").await.status(), 401);
    }
    assert_eq!(
        login(&app, "third", "guess").await.status(),
        429,
        "per address"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn viewers_read_operators_write_strangers_get_401() {
    let app = TestApp::spawn().await;
    let viewer = app.client_for("pak-rt", Role::Viewer).await;
    for path in [
        "/api/v1/devices",
        "/api/v1/lamps",
        "/api/v1/devices/gh-1/rejected",
    ] {
        assert_eq!(
            viewer.get(app.url(path)).send().await.unwrap().status(),
            200,
            "{path}"
        );
        let r = app.anon.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert_eq!(r.headers()[WWW_AUTHENTICATE], r#"Bearer realm="lentera""#);
        let (_, err) = body(r).await;
        assert_eq!(err["error"], "unauthorized");
    }
    let (status, err) = body(
        viewer
            .put(app.url("/api/v1/lamps/lamp-1/mode"))
            .body(r#"{"mode":"on"}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, err["error"].as_str()), (403, Some("forbidden")));
    let r = viewer
        .post(app.url("/api/v1/devices"))
        .json(&json!({"id": "gh-1", "kind": "greenhouse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let (status, me) = body(viewer.get(app.url("/api/v1/session")).send().await.unwrap()).await;
    assert_eq!(
        (status, &me["role"], &me["via"]),
        (200, &json!("viewer"), &json!("api"))
    );

    // A made-up or malformed bearer token is a 401 like no token at all.
    for auth in [
        "Bearer lt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "Bearer nope",
        "Basic b3A6eA==",
    ] {
        let r = app
            .anon
            .get(app.url("/api/v1/devices"))
            .header(AUTHORIZATION, auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{auth}");
    }

    // /ws: the viewer is let in, a stranger is refused before the upgrade.
    let _ws = app.ws("/ws").await;
    match tokio_tungstenite::connect_async(format!("ws://{}/ws", app.addr)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn public_read_opens_reads_only() {
    let app = TestApp::spawn_with(closed_port(), |s| s.web.public_read = true).await;
    assert_eq!(
        app.anon
            .get(app.url("/api/v1/devices"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // An expired or unknown cookie does not lock a public board either.
    let r = app
        .anon
        .get(app.url("/api/v1/devices"))
        .header(
            COOKIE,
            "lentera_session=lt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", app.addr))
        .await
        .expect("public /ws");
    drop(ws);
    let r = app
        .anon
        .put(app.url("/api/v1/lamps/lamp-1/mode"))
        .body(r#"{"mode":"on"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = app
        .anon
        .post(app.url("/api/v1/devices"))
        .json(&json!({"id": "gh-1", "kind": "greenhouse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn open_mode_asks_nobody() {
    let app = TestApp::spawn_with(closed_port(), |s| s.auth.open = true).await;
    let (status, me) = body(
        app.anon
            .get(app.url("/api/v1/session"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, &me["via"], &me["open"]),
        (200, &json!("open"), &json!(true))
    );
    let r = app
        .anon
        .post(app.url("/api/v1/devices"))
        .json(&json!({"id": "lamp-1", "kind": "lamp"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Past every check; only the (closed) broker is missing.
    let r = app
        .anon
        .put(app.url("/api/v1/lamps/lamp-1/mode"))
        .body(r#"{"mode":"on"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lamp_mode_is_only_for_lamps() {
    let app = TestApp::spawn().await;
    for (id, kind) in [("gh-1", "greenhouse"), ("lamp-9", "lamp")] {
        let r = app
            .http
            .post(app.url("/api/v1/devices"))
            .json(&json!({"id": id, "kind": kind}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let put = |id: &str| {
        app.http
            .put(app.url(&format!("/api/v1/lamps/{id}/mode")))
            .body(r#"{"mode":"on"}"#)
            .send()
    };
    let (status, err) = body(put("gh-1").await.unwrap()).await;
    assert_eq!((status, err["error"].as_str()), (404, Some("not_a_lamp")));
    let (status, err) = body(put("nobody").await.unwrap()).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (404, Some("unknown_device"))
    );
    // The lamp passes the check and only the broker (closed here) is missing.
    assert_eq!(put("lamp-9").await.unwrap().status(), 503);
    app.stop().await;
}

async fn stored_hash(app: &TestApp, id: &str) -> Option<Vec<u8>> {
    sqlx::query_scalar("SELECT token_hash FROM devices WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_are_provisioned_rotated_changed_and_removed_over_rest() {
    let app = TestApp::spawn().await;
    let add = |v: Value| app.http.post(app.url("/api/v1/devices")).json(&v).send();
    let (status, created) = body(
        add(json!({"id": "gh-5", "kind": "greenhouse", "name": "Kebun 5", "location": "RT 3"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("lt_") && token.len() == 35, "{token}");
    assert_eq!(created["device"]["id"], "gh-5");
    assert_eq!(created["device"]["kind"], "greenhouse");
    assert_eq!(created["device"]["name"], "Kebun 5");
    assert_eq!(created["device"]["provisioned"], true);
    let config = created["config"].as_str().unwrap();
    for needle in [
        "#define LENTERA_DEVICE_ID  \"gh-5\"".to_owned(),
        format!("#define LENTERA_TOKEN      \"{token}\""),
        format!("HELLO gh-5 {token}"),
        format!("Authorization: Bearer {token}"),
        "#define LENTERA_HOST       \"127.0.0.1\"".to_owned(),
    ] {
        assert!(config.contains(&needle), "{needle} in\n{config}");
    }
    assert_eq!(
        stored_hash(&app, "gh-5").await.unwrap(),
        lentera_auth::token::hash(&token).to_vec(),
        "only the hash is stored"
    );

    let (status, err) = body(
        add(json!({"id": "gh-5", "kind": "greenhouse"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, err["error"].as_str()),
        (409, Some("device_exists"))
    );
    let (status, err) = body(add(json!({"id": "gh-6", "kind": "toaster"})).await.unwrap()).await;
    assert_eq!((status, err["error"].as_str()), (400, Some("invalid_kind")));
    let (status, err) = body(add(json!({"id": "a/b", "kind": "lamp"})).await.unwrap()).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_device"))
    );
    let (status, err) = body(
        add(json!({"id": "gh-6", "kind": "lamp", "x": 1}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, err["error"].as_str()), (400, Some("invalid_body")));
    let (status, err) = body(
        app.http
            .post(app.url("/api/v1/devices"))
            .body(r#"{"id":"gh-6","kind":"lamp"}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, err["error"].as_str()),
        (415, Some("unsupported_media_type"))
    );

    // Rotate: a new token, a new hash.
    let (status, rotated) = body(
        app.http
            .post(app.url("/api/v1/devices/gh-5/token"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let new = rotated["token"].as_str().unwrap();
    assert_ne!(new, token);
    assert_eq!(
        stored_hash(&app, "gh-5").await.unwrap(),
        lentera_auth::token::hash(new).to_vec()
    );
    assert!(rotated["config"].as_str().unwrap().contains(new));
    let r = app
        .http
        .post(app.url("/api/v1/devices/nobody/token"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Disable and rename.
    let patch = |id: &str, v: Value| {
        app.http
            .patch(app.url(&format!("/api/v1/devices/{id}")))
            .json(&v)
            .send()
    };
    let (status, changed) = body(
        patch("gh-5", json!({"disabled": true, "location": "RT 4"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["device"]["disabled"], true);
    assert_eq!(changed["device"]["location"], "RT 4");
    assert_eq!(changed["device"]["name"], "Kebun 5");
    let (status, _) = body(patch("nobody", json!({"disabled": true})).await.unwrap()).await;
    assert_eq!(status, 404);

    let (status, list) = body(
        app.http
            .get(app.url("/api/v1/registry"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["devices"][0]["id"], "gh-5");
    assert_eq!(list["devices"][0]["disabled"], true);
    assert!(!list.to_string().contains("hash"));

    let del = || app.http.delete(app.url("/api/v1/devices/gh-5")).send();
    assert_eq!(del().await.unwrap().status(), StatusCode::NO_CONTENT);
    let (status, err) = body(del().await.unwrap()).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (404, Some("unknown_device"))
    );
    app.stop().await;
}
