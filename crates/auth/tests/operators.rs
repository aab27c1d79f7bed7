//! Operator accounts, sessions and API tokens against a real PostgreSQL.

mod common;

use chrono::{Duration, Utc};
use common::TestDb;
use lentera_auth::admin::{self, AdminError, Role};
use lentera_db::operators;

#[tokio::test]
async fn sessions_expire_and_last_used_is_recorded() {
    let db = TestDb::create().await;
    let p = &db.pool;
    admin::add_operator(p, "ops@village", Role::Operator, "long enough")
        .await
        .unwrap();
    assert!(matches!(
        admin::add_operator(p, "ops@village", Role::Viewer, "long enough").await,
        Err(AdminError::Exists)
    ));
    assert!(matches!(
        admin::add_operator(p, "bad name", Role::Viewer, "long enough").await,
        Err(AdminError::Invalid(_))
    ));
    assert!(matches!(
        admin::add_operator(p, "short", Role::Viewer, "pw").await,
        Err(AdminError::Invalid(_))
    ));
    // Unknown name and wrong password: the same answer.
    assert_eq!(
        admin::login(p, "nobody", "long enough").await.unwrap(),
        None
    );
    assert_eq!(
        admin::login(p, "ops@village", "wrong one").await.unwrap(),
        None
    );

    let live = admin::new_session(p, "ops@village", Utc::now() + Duration::hours(1))
        .await
        .unwrap();
    let dead = admin::new_session(p, "ops@village", Utc::now() - Duration::seconds(1))
        .await
        .unwrap();
    let owner = admin::find_token(p, &live).await.unwrap().unwrap();
    assert_eq!(
        (
            owner.operator.as_str(),
            owner.role.as_str(),
            owner.kind.as_str()
        ),
        ("ops@village", "operator", "session")
    );
    assert!(admin::find_token(p, &dead).await.unwrap().is_none());
    assert!(admin::find_token(p, "lt_garbage").await.unwrap().is_none());
    let tokens = operators::list_tokens(p, "ops@village").await.unwrap();
    assert_eq!(tokens.len(), 2);
    assert!(tokens.iter().any(|t| t.last_used.is_some()), "{tokens:?}");
    let first_use = tokens.iter().find_map(|t| t.last_used).unwrap();
    admin::find_token(p, &live).await.unwrap();
    let again = operators::list_tokens(p, "ops@village").await.unwrap();
    assert_eq!(
        again.iter().find_map(|t| t.last_used),
        Some(first_use),
        "not rewritten within a minute"
    );
    assert_eq!(operators::delete_expired(p).await.unwrap(), 1);
    assert!(admin::revoke_token(p, &live).await.unwrap());
    assert!(admin::find_token(p, &live).await.unwrap().is_none());
    assert!(matches!(
        admin::new_api_token(p, "nobody", None).await,
        Err(AdminError::NotFound)
    ));
    // Debug of a row with a password hash does not show it.
    let row = operators::get(p, "ops@village").await.unwrap().unwrap();
    assert!(!format!("{row:?}").contains("$7$"));
    db.drop_db().await;
}
