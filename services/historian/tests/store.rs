//! `write::store` against a real, freshly migrated PostgreSQL: redelivery is harmless.

mod common;

use chrono::{TimeZone, Utc};
use lentera_db::write::{self, Record};
use lentera_protocol::{DeviceId, Reading};

#[tokio::test]
async fn storing_the_same_records_twice_does_not_duplicate_readings() {
    let db = common::TestDb::new().await;
    let ts = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
    let reading = Reading::new(
        DeviceId::parse("gh-1").unwrap(),
        ts,
        [
            ("temperature".to_owned(), 27.3),
            ("humidity".to_owned(), 61.2),
        ],
    )
    .unwrap();
    let batch = vec![Record::Reading(reading)];

    let first = write::store(&db.pool, &batch).await.unwrap();
    let second = write::store(&db.pool, &batch).await.unwrap();

    assert_eq!(first, 2, "both metrics inserted the first time");
    assert_eq!(second, 0, "nothing inserted on redelivery");
    assert_eq!(db.count("SELECT count(*) FROM readings").await, 2);
    assert_eq!(db.count("SELECT count(*) FROM latest_readings").await, 2);
    assert_eq!(db.count("SELECT count(*) FROM devices").await, 1);
    db.drop_db().await;
}
