//! `write::store` against a real, freshly migrated PostgreSQL: redelivery is harmless,
//! whichever way a batch is written (the `COPY` fast path, or the row-by-row fallback a
//! batch with already stored or repeated readings takes), and a month partition dropped
//! behind the writer's back is re-created.

mod common;

use chrono::{DateTime, TimeZone, Utc};
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

    let first = write::store(&db.pool, &batch).await.unwrap().inserted;
    let second = write::store(&db.pool, &batch).await.unwrap().inserted;

    assert_eq!(first, 2, "both metrics inserted the first time");
    assert_eq!(second, 0, "nothing inserted on redelivery");
    assert_eq!(db.count("SELECT count(*) FROM readings").await, 2);
    assert_eq!(db.count("SELECT count(*) FROM latest_readings").await, 2);
    assert_eq!(db.count("SELECT count(*) FROM devices").await, 1);
    db.drop_db().await;
}

fn reading(device: &str, ts: DateTime<Utc>, value: f64) -> Record {
    Record::Reading(
        Reading::new(
            DeviceId::parse(device).unwrap(),
            ts,
            [("temperature".to_owned(), value)],
        )
        .unwrap(),
    )
}

/// (count, sum, min, max, last) of the one rollup hour of gh-1's temperature.
async fn rollup(db: &common::TestDb) -> (i64, f64, f64, f64, f64) {
    sqlx::query_as(
        "SELECT count, sum, min, max, last FROM readings_hourly
         WHERE device = 'gh-1' AND metric = 'temperature'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_batch_mixing_stored_new_and_repeated_readings_stores_and_rolls_up_each_once() {
    let db = common::TestDb::new().await;
    let t = |s| Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, s).unwrap();

    // All new: the COPY path.
    let first = vec![reading("gh-1", t(0), 1.0), reading("gh-1", t(1), 2.0)];
    assert_eq!(write::store(&db.pool, &first).await.unwrap().inserted, 2);
    assert_eq!(rollup(&db).await, (2, 3.0, 1.0, 2.0, 2.0));

    // One already stored, one new, one new twice in the same batch: COPY fails on the
    // duplicate key and the batch is written again row by row.
    let mixed = vec![
        reading("gh-1", t(1), 2.0),
        reading("gh-1", t(2), 10.0),
        reading("gh-1", t(3), -4.0),
        reading("gh-1", t(3), -4.0),
    ];
    assert_eq!(write::store(&db.pool, &mixed).await.unwrap().inserted, 2);
    assert_eq!(db.count("SELECT count(*) FROM readings").await, 4);
    assert_eq!(rollup(&db).await, (4, 9.0, -4.0, 10.0, -4.0));
    let latest: (f64,) = sqlx::query_as("SELECT value FROM latest_readings WHERE device = 'gh-1'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(latest.0, -4.0);

    // Redelivering both batches changes nothing.
    assert_eq!(write::store(&db.pool, &first).await.unwrap().inserted, 0);
    assert_eq!(write::store(&db.pool, &mixed).await.unwrap().inserted, 0);
    assert_eq!(db.count("SELECT count(*) FROM readings").await, 4);
    assert_eq!(rollup(&db).await, (4, 9.0, -4.0, 10.0, -4.0));
    db.drop_db().await;
}

#[tokio::test]
async fn a_month_partition_dropped_behind_the_writers_back_is_recreated() {
    let db = common::TestDb::new().await;
    let ts = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
    assert_eq!(
        write::store(&db.pool, &[reading("gh-1", ts, 1.0)])
            .await
            .unwrap()
            .inserted,
        1
    );
    // The writer remembers that November exists; drop it without telling it.
    sqlx::query("DROP TABLE readings_p202611")
        .execute(&db.pool)
        .await
        .unwrap();
    let later = ts + chrono::Duration::hours(1);
    assert_eq!(
        write::store(&db.pool, &[reading("gh-1", later, 2.0)])
            .await
            .unwrap()
            .inserted,
        1
    );
    assert_eq!(db.count("SELECT count(*) FROM readings").await, 1);
    db.drop_db().await;
}

#[tokio::test]
async fn copied_rows_read_back_exactly_as_written() {
    let db = common::TestDb::new().await;
    // Microseconds on both sides of PostgreSQL's epoch (2000-01-01) and values whose
    // decimal text would not survive a careless round trip.
    let rows = [
        (
            "gh-1",
            Utc.timestamp_opt(1_795_353_043, 123_456_000).unwrap(),
            0.1 + 0.2,
        ),
        (
            "gh-2",
            Utc.timestamp_opt(946_684_799, 999_999_000).unwrap(),
            -1e-300,
        ),
        ("gh_3", Utc.timestamp_opt(946_684_800, 1_000).unwrap(), 27.5),
    ];
    let batch: Vec<Record> = rows.iter().map(|(d, t, v)| reading(d, *t, *v)).collect();
    assert_eq!(write::store(&db.pool, &batch).await.unwrap().inserted, 3);
    let stored: Vec<(String, String, DateTime<Utc>, f64)> =
        sqlx::query_as("SELECT device, metric, ts, value FROM readings ORDER BY device")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let want: Vec<_> = rows
        .iter()
        .map(|(d, t, v)| (d.to_string(), "temperature".to_owned(), *t, *v))
        .collect();
    assert_eq!(stored.len(), 3);
    for (s, w) in stored.iter().zip(&want) {
        assert_eq!((&s.0, &s.1, s.2), (&w.0, &w.1, w.2));
        assert_eq!(s.3.to_bits(), w.3.to_bits(), "{} value", s.0);
    }
    db.drop_db().await;
}

/// The rollup of every hour of gh-1's temperature, recomputed from the raw rows, next to
/// what `readings_hourly` holds: equal when the rollup followed every write.
async fn rollup_matches_raw(db: &common::TestDb) {
    let kept: Vec<(DateTime<Utc>, i64, f64, f64, f64, f64)> = sqlx::query_as(
        "SELECT hour, count, sum, min, max, last FROM readings_hourly
         WHERE device = 'gh-1' AND metric = 'temperature' ORDER BY hour",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let raw: Vec<(DateTime<Utc>, i64, f64, f64, f64, f64)> = sqlx::query_as(
        "SELECT date_bin('1 hour', ts, TIMESTAMPTZ '1970-01-01 00:00:00+00'), count(*),
                sum(value), min(value), max(value), (array_agg(value ORDER BY ts DESC))[1]
         FROM readings WHERE device = 'gh-1' AND metric = 'temperature' GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(kept, raw);
}

#[tokio::test]
async fn the_same_key_with_another_value_is_a_correction_that_replaces_it() {
    let db = common::TestDb::new().await;
    let t = |s| Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, s).unwrap();
    let first = vec![reading("gh-1", t(0), 1.0), reading("gh-1", t(1), 50.0)];
    let s = write::store(&db.pool, &first).await.unwrap();
    assert_eq!((s.inserted, s.replaced), (2, 0));

    // A retry: same keys, same values. Stored once, nothing replaced.
    let s = write::store(&db.pool, &first).await.unwrap();
    assert_eq!((s.inserted, s.replaced), (0, 0));

    // A correction of t(1) (50 → 2, which also was the hour's max) beside a new reading.
    let fixed = vec![reading("gh-1", t(1), 2.0), reading("gh-1", t(2), 3.0)];
    let s = write::store(&db.pool, &fixed).await.unwrap();
    assert_eq!((s.inserted, s.replaced), (1, 1));
    let values: Vec<(f64,)> =
        sqlx::query_as("SELECT value FROM readings WHERE device = 'gh-1' ORDER BY ts")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(values, vec![(1.0,), (2.0,), (3.0,)]);
    assert_eq!(rollup(&db).await, (3, 6.0, 1.0, 3.0, 3.0));
    rollup_matches_raw(&db).await;

    // The same key twice in one new batch with different values: the later one wins.
    let twice = vec![reading("gh-1", t(5), 7.0), reading("gh-1", t(5), 8.0)];
    let s = write::store(&db.pool, &twice).await.unwrap();
    assert_eq!((s.inserted, s.replaced), (1, 1));
    // And a correction of the newest reading moves `latest` with it.
    let s = write::store(&db.pool, &[reading("gh-1", t(5), 9.0)])
        .await
        .unwrap();
    assert_eq!((s.inserted, s.replaced), (0, 1));
    let latest: (f64,) = sqlx::query_as("SELECT value FROM latest_readings WHERE device = 'gh-1'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(latest.0, 9.0);
    rollup_matches_raw(&db).await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_value_beyond_the_bound_is_refused_by_postgresql_as_permanent() {
    let db = common::TestDb::new().await;
    let t = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
    // The protocol's limits stop 1e308 long before; this is the last line.
    let err = write::store(&db.pool, &[reading("gh-1", t, 1e308)])
        .await
        .unwrap_err();
    assert!(write::is_permanent(&err), "{err}");
    assert!(
        write::describe(&err).contains("readings_value_bounded"),
        "{}",
        write::describe(&err)
    );
    assert_eq!(db.count("SELECT count(*) FROM readings").await, 0);
    // Two values at the bound roll up without overflow.
    let at_bound = vec![
        reading("gh-1", t, 1e15),
        reading("gh-1", t + chrono::Duration::seconds(1), 1e15),
    ];
    assert_eq!(write::store(&db.pool, &at_bound).await.unwrap().inserted, 2);
    assert_eq!(rollup(&db).await.1, 2e15);
    db.drop_db().await;
}
