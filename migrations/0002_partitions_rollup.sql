-- Lentera schema, version 2: storage that lasts.
--
-- 1. `readings` becomes a table partitioned by month on `ts` (declarative range
--    partitioning; the primary key (device, metric, ts) includes the partition key, as
--    PostgreSQL requires). Partitions are named readings_pYYYYMM and cover
--    [first of month 00:00 UTC, first of next month). Retention drops whole partitions,
--    which is instant and leaves no bloat, unlike DELETE.
-- 2. `readings_hourly` is an hourly rollup (min, max, sum, count, last) maintained by
--    the historian in the same transaction as the raw insert, so long-range bucketed
--    history reads ~8,760 rows a year per series instead of 525,600.
--
-- Existing data (a version-1 database) is moved into the partitions and rolled up.
-- There is deliberately no DEFAULT partition: a row landing there would block creating
-- the real partition for its month later. Writers call lentera_ensure_partitions first.

-- Creates the month partitions covering every given instant; returns how many were new.
-- Safe to call concurrently (two historians): a lost creation race is not an error.
CREATE FUNCTION lentera_ensure_partitions(instants timestamptz[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    m timestamptz;
    name text;
    created integer := 0;
BEGIN
    FOR m IN
        SELECT DISTINCT date_trunc('month', i, 'UTC') FROM unnest(instants) AS i WHERE i IS NOT NULL
    LOOP
        name := 'readings_p' || to_char(m AT TIME ZONE 'UTC', 'YYYYMM');
        CONTINUE WHEN to_regclass(name) IS NOT NULL;
        BEGIN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF readings FOR VALUES FROM (%L) TO (%L)',
                name, m, (m AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC');
            created := created + 1;
        EXCEPTION WHEN duplicate_table THEN
            NULL;
        END;
    END LOOP;
    RETURN created;
END
$$;

-- Drops every month partition that ends at or before `cutoff`, and the rollup rows of
-- those months (so the rollup always agrees with the raw rows it summarises).
-- Returns the dropped partitions' names.
CREATE FUNCTION lentera_drop_partitions_before(cutoff timestamptz) RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    part text;
    month_end timestamptz;
BEGIN
    FOR part IN
        SELECT c.relname FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'readings'::regclass AND c.relname ~ '^readings_p[0-9]{6}$'
        ORDER BY c.relname
    LOOP
        month_end := (to_date(substr(part, 11) || '01', 'YYYYMMDD')::timestamp
                      + interval '1 month') AT TIME ZONE 'UTC';
        CONTINUE WHEN month_end > cutoff;
        EXECUTE format('DROP TABLE IF EXISTS %I', part);
        DELETE FROM readings_hourly
        WHERE hour >= month_end - interval '1 month' AND hour < month_end;
        RETURN NEXT part;
    END LOOP;
END
$$;

ALTER TABLE readings RENAME TO readings_v1;
ALTER TABLE readings_v1 RENAME CONSTRAINT readings_pkey TO readings_v1_pkey;

CREATE TABLE readings (
    device  text NOT NULL,
    metric  text NOT NULL,
    ts      timestamptz NOT NULL,
    value   double precision NOT NULL,
    PRIMARY KEY (device, metric, ts)
) PARTITION BY RANGE (ts);

-- One row per (device, metric, hour): enough to answer avg/min/max/sum/count/last for
-- any bucket that is a whole number of hours. `last_ts` orders `last` when two batches
-- fill the same hour out of order.
CREATE TABLE readings_hourly (
    device   text NOT NULL,
    metric   text NOT NULL,
    hour     timestamptz NOT NULL,
    min      double precision NOT NULL,
    max      double precision NOT NULL,
    sum      double precision NOT NULL,
    count    bigint NOT NULL,
    last_ts  timestamptz NOT NULL,
    last     double precision NOT NULL,
    PRIMARY KEY (device, metric, hour)
);

-- (Re)computes the rollup for [from, to) from raw rows, replacing what was there.
-- Used for the version-1 data below, after bulk loads (COPY) that bypass the
-- historian, and to repair the rollup by hand.
CREATE FUNCTION lentera_rebuild_rollup(from_ts timestamptz, to_ts timestamptz) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
    h0 timestamptz := date_bin('1 hour', from_ts, TIMESTAMPTZ '1970-01-01 00:00:00+00');
BEGIN
    DELETE FROM readings_hourly WHERE hour >= h0 AND hour < to_ts;
    INSERT INTO readings_hourly (device, metric, hour, min, max, sum, count, last_ts, last)
    SELECT device, metric, date_bin('1 hour', ts, TIMESTAMPTZ '1970-01-01 00:00:00+00'),
           min(value), max(value), sum(value), count(*), max(ts),
           (array_agg(value ORDER BY ts DESC))[1]
    FROM readings
    WHERE ts >= h0 AND ts < to_ts
    GROUP BY 1, 2, 3;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

SELECT lentera_ensure_partitions(ARRAY(SELECT DISTINCT date_trunc('month', ts, 'UTC') FROM readings_v1));
INSERT INTO readings (device, metric, ts, value) SELECT device, metric, ts, value FROM readings_v1;
DROP TABLE readings_v1;
SELECT lentera_rebuild_rollup(coalesce((SELECT min(ts) FROM readings), now()), 'infinity');
