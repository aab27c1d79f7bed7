//! Storage that lasts, against real PostgreSQL: month partitions are created on write and
//! ahead, retention drops whole old months (and their rollup), the hourly rollup always
//! equals the aggregates of the raw rows (random data, redelivery, out-of-order batches),
//! and a version-1 database migrates with its data.

mod common;

use std::borrow::Cow;

use chrono::{DateTime, Duration, TimeZone, Utc};
use common::TestDb;
use lentera_db::write::{self, Record};
use lentera_historian::maintenance;
use lentera_historian::settings::HistorianSettings;
use lentera_protocol::{DeviceId, Reading};
use sqlx::{Connection, Executor, PgConnection, PgPool};

fn reading(device: &str, ts: DateTime<Utc>, metrics: &[(&str, f64)]) -> Record {
    Record::Reading(
        Reading::new(
            DeviceId::parse(device).unwrap(),
            ts,
            metrics.iter().map(|(m, v)| ((*m).to_owned(), *v)),
        )
        .unwrap(),
    )
}

async fn partitions(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'readings'::regclass ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Rows of the rollup that disagree with aggregates recomputed from raw rows, plus the
/// number of rollup rows. `sum` is compared with a tolerance: float addition order differs.
async fn rollup_mismatches(pool: &PgPool) -> (i64, i64) {
    let row: (i64, i64) = sqlx::query_as(
        "WITH raw AS (
           SELECT device, metric, date_bin('1 hour', ts, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS hour,
                  min(value) AS min, max(value) AS max, sum(value) AS sum, count(*) AS count,
                  max(ts) AS last_ts, (array_agg(value ORDER BY ts DESC))[1] AS last
           FROM readings GROUP BY 1, 2, 3)
         SELECT count(*) FILTER (WHERE r.device IS NULL OR h.device IS NULL
                  OR r.min <> h.min OR r.max <> h.max OR r.count <> h.count
                  OR r.last_ts <> h.last_ts OR r.last <> h.last
                  OR abs(r.sum - h.sum) > 1e-9 * greatest(1, abs(r.sum))),
                (SELECT count(*) FROM readings_hourly)
         FROM raw r FULL JOIN readings_hourly h USING (device, metric, hour)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    row
}

#[tokio::test]
async fn partitions_are_created_on_write_and_ahead_and_retention_drops_whole_old_months() {
    let db = TestDb::new().await;
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
    let old = Utc.with_ymd_and_hms(2024, 10, 15, 0, 0, 0).unwrap(); // wholly > 730 days ago
    let edge = Utc.with_ymd_and_hms(2024, 11, 30, 0, 0, 0).unwrap(); // its month ends after the cutoff
    let batch = vec![
        reading("gh-1", old, &[("temperature", 20.0)]),
        reading("gh-1", edge, &[("temperature", 21.0)]),
        reading("gh-1", now, &[("temperature", 22.0), ("humidity", 60.0)]),
    ];
    assert_eq!(write::store(&db.pool, &batch).await.unwrap().inserted, 4);
    assert_eq!(
        partitions(&db.pool).await,
        ["readings_p202410", "readings_p202411", "readings_p202611"]
    );

    let cfg = HistorianSettings::default();
    assert_eq!((cfg.retention_days, cfg.partitions_ahead_months), (730, 2));
    let dropped = maintenance::run_once(&db.pool, &cfg, now).await.unwrap();
    assert_eq!(dropped, ["readings_p202410"]);
    assert_eq!(
        partitions(&db.pool).await,
        [
            "readings_p202411",
            "readings_p202611",
            "readings_p202612",
            "readings_p202701"
        ]
    );
    assert_eq!(db.count("SELECT count(*) FROM readings").await, 3);
    assert_eq!(
        db.count("SELECT count(*) FROM readings_hourly WHERE hour < '2024-11-01Z'")
            .await,
        0,
        "the dropped month's rollup goes with it"
    );
    assert_eq!(rollup_mismatches(&db.pool).await, (0, 3));

    // Retention 0 keeps everything; a second round is a no-op.
    let keep = HistorianSettings {
        retention_days: 0,
        ..cfg
    };
    let far_future = now + Duration::days(3650);
    assert!(
        maintenance::run_once(&db.pool, &keep, far_future)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(db.count("SELECT count(*) FROM readings").await, 3);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_historian_creates_this_and_the_next_two_months_at_start() {
    let db = TestDb::new().await;
    // No broker needed: upkeep starts as soon as the schema is ready.
    let app = common::RunningApp::spawn(common::settings(&db.url, common::free_port()));
    let now = Utc::now();
    let want: Vec<String> = (0..=2)
        .map(|m| {
            let t = now.checked_add_months(chrono::Months::new(m)).unwrap();
            format!("readings_p{}", t.format("%Y%m"))
        })
        .collect();
    common::eventually(10, "partitions created ahead", || async {
        let have = partitions(&db.pool).await;
        want.iter().all(|w| have.contains(w))
    })
    .await;
    app.stop();
    db.drop_db().await;
}

/// xorshift64*: deterministic "random" data without a dependency; the seed is printed so
/// a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[tokio::test]
async fn the_rollup_equals_raw_aggregates_over_random_batches_with_redelivery() {
    let db = TestDb::new().await;
    let seed = Utc::now().timestamp_nanos_opt().unwrap_or(1) as u64 | 1;
    println!("seed {seed}");
    let mut rng = Rng(seed);
    // Six hours around a month boundary, so batches straddle two partitions.
    let base = Utc.with_ymd_and_hms(2026, 10, 31, 21, 0, 0).unwrap();
    let mut sent: Vec<Vec<Record>> = Vec::new();
    for _ in 0..40 {
        let batch: Vec<Record> = (0..rng.below(60) + 1)
            .map(|_| {
                let ts = base + Duration::seconds(rng.below(6 * 3600) as i64);
                let device = ["gh-1", "gh-2"][rng.below(2) as usize];
                let v = (rng.below(20_000) as f64 - 10_000.0) / 100.0;
                let metrics: &[(&str, f64)] = match rng.below(3) {
                    0 => &[("temperature", v)],
                    1 => &[("humidity", v.abs())],
                    _ => &[("temperature", v), ("humidity", v.abs())],
                };
                reading(device, ts, metrics)
            })
            .collect();
        write::store(&db.pool, &batch).await.unwrap();
        sent.push(batch);
        // Redeliver an earlier batch now and then: nothing may change.
        if rng.below(4) == 0 {
            let again = &sent[rng.below(sent.len() as u64) as usize];
            assert_eq!(write::store(&db.pool, again).await.unwrap().inserted, 0);
        }
    }
    let (mismatches, rows) = rollup_mismatches(&db.pool).await;
    assert_eq!(mismatches, 0, "seed {seed}");
    assert!(rows > 0);
    assert_eq!(
        db.count("SELECT sum(count)::bigint FROM readings_hourly")
            .await,
        db.count("SELECT count(*) FROM readings").await
    );
    db.drop_db().await;
}

#[tokio::test]
async fn a_version_1_database_migrates_with_its_readings_and_rolls_them_up() {
    let admin = std::env::var("DATABASE_URL").unwrap_or_else(|_| common::DEFAULT_URL.into());
    let name = common::unique("lentera_mig_test");
    let mut conn = PgConnection::connect(&admin).await.unwrap();
    conn.execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
        .await
        .unwrap();
    let (base, _) = admin.rsplit_once('/').unwrap();
    let pool = PgPool::connect(&format!("{base}/{name}")).await.unwrap();

    let v1 = sqlx::migrate::Migrator {
        migrations: Cow::Owned(lentera_db::MIGRATOR.migrations[..1].to_vec()),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    v1.run(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO readings SELECT 'gh-1', 'temperature', t, extract(minute FROM t)
         FROM generate_series(TIMESTAMPTZ '2026-09-30 22:00Z', '2026-10-01 02:00Z', '1 minute') t",
    )
    .execute(&pool)
    .await
    .unwrap();
    lentera_db::migrate(&pool).await.unwrap();

    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM readings")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 241);
    assert_eq!(
        partitions(&pool).await,
        ["readings_p202609", "readings_p202610"]
    );
    assert_eq!(rollup_mismatches(&pool).await, (0, 5));
    // The migrated table is the idempotent, rolled-up one.
    let again = reading(
        "gh-1",
        Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap(),
        &[("temperature", 0.0)],
    );
    assert_eq!(write::store(&pool, &[again]).await.unwrap().inserted, 0);
    pool.close().await;
    let _ = conn
        .execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
        .await;
}

/// Rough cost of the write path (partitions + rollup in the transaction), for the later
/// historian benchmark: `cargo test -p lentera-historian --test storage -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "measurement, not a check"]
async fn store_throughput() {
    let db = TestDb::new().await;
    let start = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
    let batches: Vec<Vec<Record>> = (0..200)
        .map(|b| {
            (0..500)
                .map(|i| {
                    let n = b * 500 + i;
                    let device = format!("gh-{}", n % 50);
                    let ts = start + Duration::seconds(n / 50);
                    reading(&device, ts, &[("temperature", 20.0 + (n % 7) as f64)])
                })
                .collect()
        })
        .collect();
    let t = std::time::Instant::now();
    let mut rows = 0;
    for b in &batches {
        rows += write::store(&db.pool, b).await.unwrap().inserted;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{rows} readings in {} batches of 500: {secs:.2} s, {:.0} readings/s",
        batches.len(),
        rows as f64 / secs
    );
    db.drop_db().await;
}
