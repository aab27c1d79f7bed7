//! The registry against a real PostgreSQL: admission, revocation by notification and by
//! reload, outages, the cache file.

mod common;

use std::time::Duration;

use common::{Proxy, TestDb, eventually, revoked, unreachable_pool};
use lentera_auth::admin::{self, NewDevice};
use lentera_auth::{AuthSettings, Denied, Kind, Registry, token};

const SEC: Duration = Duration::from_secs(1);

fn device(id: &str, kind: Kind) -> NewDevice {
    NewDevice {
        id: id.into(),
        kind,
        name: None,
        location: None,
    }
}

fn settings() -> AuthSettings {
    AuthSettings::default()
}

async fn started(pool: sqlx::PgPool, s: &AuthSettings) -> Registry {
    let r = Registry::start(pool, s);
    tokio::time::timeout(Duration::from_secs(5), r.wait_loaded())
        .await
        .expect("the registry loads");
    r
}

#[tokio::test]
async fn added_device_is_admitted_at_once_and_only_with_its_token() {
    let db = TestDb::create().await;
    let reg = started(db.pool.clone(), &settings()).await;
    assert!(reg.is_empty());
    let t = admin::add_device(&db.pool, device("gh-1", Kind::Greenhouse))
        .await
        .unwrap();
    // Admitted before the notification is processed (the miss lookup).
    let d = reg.check("gh-1", &t).await.unwrap();
    assert_eq!((d.id.as_str(), d.kind), ("gh-1", Kind::Greenhouse));
    assert_eq!(reg.check_token(&t).await.unwrap(), d);
    assert_eq!(reg.check("gh-2", &t).await, Err(Denied::Unauthorized));
    assert_eq!(
        reg.check("gh-1", &token::generate()).await,
        Err(Denied::Unauthorized)
    );
    assert_eq!(reg.check("gh-1", "").await, Err(Denied::Unauthorized));
    assert_eq!(reg.check("gh-1", "lt_x").await, Err(Denied::Unauthorized));
    assert!(reg.knows("gh-1"));
    assert_eq!(reg.len(), 1);
    // A second add of a provisioned device changes nothing.
    assert!(matches!(
        admin::add_device(&db.pool, device("gh-1", Kind::Lamp)).await,
        Err(admin::AdminError::Exists)
    ));
    assert!(reg.check("gh-1", &t).await.is_ok());
    drop(reg);
    db.drop_db().await;
}

#[tokio::test]
async fn devices_loaded_at_start_and_seen_while_open_are_provisioned_in_place() {
    let db = TestDb::create().await;
    let t1 = admin::add_device(&db.pool, device("lamp-1", Kind::Lamp))
        .await
        .unwrap();
    // A row the historian created while the platform ran open: no token, not admitted.
    sqlx::query("INSERT INTO devices (id, kind, last_seen) VALUES ('old-1', 'sensor', now())")
        .execute(&db.pool)
        .await
        .unwrap();
    let reg = started(db.pool.clone(), &settings()).await;
    assert_eq!(reg.len(), 1);
    assert_eq!(reg.check("lamp-1", &t1).await.unwrap().kind, Kind::Lamp);
    assert!(!reg.knows("old-1"));
    let t2 = admin::add_device(
        &db.pool,
        NewDevice {
            name: Some("Old one".into()),
            ..device("old-1", Kind::Greenhouse)
        },
    )
    .await
    .unwrap();
    assert_eq!(
        reg.check("old-1", &t2).await.unwrap().kind,
        Kind::Greenhouse
    );
    let row = admin::get(&db.pool, "old-1").await.unwrap();
    assert!(row.provisioned && row.last_seen.is_some());
    assert_eq!(row.name.as_deref(), Some("Old one"));
    drop(reg);
    db.drop_db().await;
}

#[tokio::test]
async fn rotate_disable_and_remove_revoke_within_a_second() {
    let db = TestDb::create().await;
    let reg = started(db.pool.clone(), &settings()).await;
    let mut rx = reg.revocations();
    let old = admin::add_device(&db.pool, device("gh-1", Kind::Greenhouse))
        .await
        .unwrap();
    let t2 = admin::add_device(&db.pool, device("gh-2", Kind::Sensor))
        .await
        .unwrap();
    let t3 = admin::add_device(&db.pool, device("gh-3", Kind::Sensor))
        .await
        .unwrap();
    assert!(
        eventually(SEC, async || reg.len() == 3).await,
        "notifications load the added devices"
    );

    let new = admin::rotate(&db.pool, "gh-1").await.unwrap();
    assert!(revoked(&mut rx, "gh-1", SEC).await, "rotate revokes");
    assert_eq!(reg.check("gh-1", &old).await, Err(Denied::Unauthorized));
    assert!(reg.check("gh-1", &new).await.is_ok());

    admin::set_disabled(&db.pool, "gh-2", true).await.unwrap();
    assert!(revoked(&mut rx, "gh-2", SEC).await, "disable revokes");
    assert_eq!(reg.check("gh-2", &t2).await, Err(Denied::Unauthorized));
    admin::set_disabled(&db.pool, "gh-2", false).await.unwrap();
    assert!(eventually(SEC, async || reg.check("gh-2", &t2).await.is_ok()).await);

    admin::remove(&db.pool, "gh-3").await.unwrap();
    assert!(revoked(&mut rx, "gh-3", SEC).await, "remove revokes");
    assert_eq!(reg.check("gh-3", &t3).await, Err(Denied::Unauthorized));
    assert!(!reg.knows("gh-3"));

    assert!(matches!(
        admin::rotate(&db.pool, "nope").await,
        Err(admin::AdminError::NotFound)
    ));
    drop(reg);
    db.drop_db().await;
}

#[tokio::test]
async fn changes_missed_while_the_listener_is_down_are_caught_on_reconnect() {
    let db = TestDb::create().await;
    let proxy = Proxy::start().await;
    let reg = started(db.pool_via(&proxy), &settings()).await;
    let mut rx = reg.revocations();
    let ta = admin::add_device(&db.pool, device("a", Kind::Sensor))
        .await
        .unwrap();
    let tb = admin::add_device(&db.pool, device("b", Kind::Sensor))
        .await
        .unwrap();
    assert!(eventually(SEC, async || reg.len() == 2).await);

    proxy.set_up(false);
    // Made while the registry cannot hear: their notifications are lost for it.
    admin::rotate(&db.pool, "a").await.unwrap();
    admin::set_disabled(&db.pool, "b", true).await.unwrap();
    // Meanwhile the known devices are still admitted from memory.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(reg.check("b", &tb).await.is_ok());
    proxy.set_up(true);

    let within = Duration::from_secs(15);
    assert!(revoked(&mut rx, "a", within).await);
    assert!(eventually(SEC, async || !reg.knows("b")).await);
    assert_eq!(reg.check("a", &ta).await, Err(Denied::Unauthorized));
    assert_eq!(reg.check("b", &tb).await, Err(Denied::Unauthorized));
    drop(reg);
    db.drop_db().await;
}

#[tokio::test]
async fn the_periodic_reload_catches_a_change_that_was_never_notified() {
    let db = TestDb::create().await;
    let reg = started(
        db.pool.clone(),
        &AuthSettings {
            refresh_secs: 1,
            ..settings()
        },
    )
    .await;
    let t = admin::add_device(&db.pool, device("a", Kind::Sensor))
        .await
        .unwrap();
    assert!(eventually(SEC, async || reg.knows("a")).await);
    let mut rx = reg.revocations();
    sqlx::query("ALTER TABLE devices DISABLE TRIGGER devices_registry_changed")
        .execute(&db.pool)
        .await
        .unwrap();
    admin::set_disabled(&db.pool, "a", true).await.unwrap();
    assert!(revoked(&mut rx, "a", Duration::from_secs(3)).await);
    assert_eq!(reg.check("a", &t).await, Err(Denied::Unauthorized));
    drop(reg);
    db.drop_db().await;
}

#[tokio::test]
async fn a_postgres_outage_keeps_known_devices_admitted() {
    let db = TestDb::create().await;
    let t = admin::add_device(&db.pool, device("a", Kind::Lamp))
        .await
        .unwrap();
    let proxy = Proxy::start().await;
    let reg = started(db.pool_via(&proxy), &settings()).await;
    proxy.set_up(false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        assert_eq!(reg.check("a", &t).await.unwrap().kind, Kind::Lamp);
    }
    // Strangers are refused, not told to come back later: a snapshot exists.
    assert_eq!(
        reg.check_token(&token::generate()).await,
        Err(Denied::Unauthorized)
    );
    assert!(reg.is_loaded());
    drop(reg);
    db.drop_db().await;
}

#[tokio::test]
async fn the_cache_file_restores_the_snapshot_without_postgres() {
    let db = TestDb::create().await;
    let dir = std::env::temp_dir().join(format!("lentera-auth-{}", db.name));
    std::fs::create_dir_all(&dir).unwrap();
    let cache = dir.join("registry.json");
    let s = AuthSettings {
        cache_file: Some(cache.clone()),
        ..settings()
    };
    let t = admin::add_device(&db.pool, device("gh-1", Kind::Greenhouse))
        .await
        .unwrap();
    let reg = started(db.pool.clone(), &s).await;
    assert!(eventually(SEC, async || cache.exists()).await);
    drop(reg);

    // Restarted while PostgreSQL is unreachable.
    let reg = Registry::start(unreachable_pool().await, &s);
    assert!(reg.is_loaded(), "loaded from the cache at once");
    assert_eq!(reg.check("gh-1", &t).await.unwrap().kind, Kind::Greenhouse);
    assert_eq!(
        reg.check("gh-1", &token::generate()).await,
        Err(Denied::Unauthorized)
    );
    drop(reg);

    // No cache and no PostgreSQL: nothing can be decided.
    let reg = Registry::start(unreachable_pool().await, &settings());
    assert!(!reg.is_loaded());
    assert_eq!(reg.check("gh-1", &t).await, Err(Denied::Unavailable));
    drop(reg);
    std::fs::remove_dir_all(&dir).unwrap();
    db.drop_db().await;
}

#[tokio::test]
async fn miss_lookups_are_rate_limited() {
    let db = TestDb::create().await;
    let reg = started(
        db.pool.clone(),
        &AuthSettings {
            miss_lookups_per_sec: 1.0,
            ..settings()
        },
    )
    .await;
    // No notification: only a miss lookup can find the device.
    sqlx::query("ALTER TABLE devices DISABLE TRIGGER devices_registry_changed")
        .execute(&db.pool)
        .await
        .unwrap();
    let t = admin::add_device(&db.pool, device("a", Kind::Sensor))
        .await
        .unwrap();
    // A stranger spends the one lookup this second; the device has to wait for the next.
    assert_eq!(
        reg.check_token(&token::generate()).await,
        Err(Denied::Unauthorized)
    );
    assert_eq!(reg.check("a", &t).await, Err(Denied::Unauthorized));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(reg.check("a", &t).await.is_ok());
    // Now in the snapshot: no lookup needed, however many strangers come.
    for _ in 0..5 {
        let _ = reg.check_token(&token::generate()).await;
    }
    assert!(reg.check("a", &t).await.is_ok());
    drop(reg);
    db.drop_db().await;
}
