-- Lentera schema, version 3: every reading accounted for.
--
-- 1. `rejected_readings` is the dead-letter table: every message the platform refused
--    after its sender had been answered (an MQTT PUBACK cannot refuse; PostgreSQL may
--    refuse a row long after the 202) is kept here with its reason, source and raw
--    payload, instead of vanishing into a log line. Web serves it at
--    GET /api/v1/devices/{device}/rejected; the historian deletes rows older than
--    historian.rejected_retention_days.
-- 2. `readings.value` is bounded to ±1e15 (lentera_protocol::limits::VALUE_BOUND), so
--    the hourly rollup's sum cannot overflow whatever is stored. Rows outside it that
--    an older version stored are moved to the dead letters first, and the rollup of
--    their hours is rebuilt.

CREATE TABLE rejected_readings (
    id           bigserial PRIMARY KEY,
    -- The device named by the topic or body, as sent (it may not be a valid id).
    device       text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    -- A stable reason code: a reading error code (out_of_range, malformed_json, …) or
    -- storage_refused (PostgreSQL refused the row: detail has its SQLSTATE and message).
    reason       text NOT NULL,
    detail       text NOT NULL,
    -- Which door: mqtt (a board's own publish), broker, http, tcp, migration.
    source       text NOT NULL,
    topic        text NOT NULL,
    payload      bytea NOT NULL
);
CREATE INDEX rejected_readings_device_time ON rejected_readings (device, received_at DESC, id DESC);
CREATE INDEX rejected_readings_time ON rejected_readings (received_at);

DO $$
DECLARE
    lo timestamptz;
    hi timestamptz;
BEGIN
    SELECT min(ts), max(ts) INTO lo, hi FROM readings WHERE NOT (value BETWEEN -1e15 AND 1e15);
    IF lo IS NOT NULL THEN
        INSERT INTO rejected_readings (device, reason, detail, source, topic, payload)
        SELECT device, 'out_of_range',
               format('metric %s = %s at %s is outside [-1e15, 1e15]; moved here by migration 0003',
                      metric, value, ts),
               'migration', '',
               convert_to(json_build_object(metric, value, 'ts', ts)::text, 'UTF8')
        FROM readings WHERE NOT (value BETWEEN -1e15 AND 1e15);
        DELETE FROM readings WHERE NOT (value BETWEEN -1e15 AND 1e15);
        DELETE FROM latest_readings WHERE NOT (value BETWEEN -1e15 AND 1e15);
        PERFORM lentera_rebuild_rollup(lo, hi + interval '1 hour');
    END IF;
END
$$;

ALTER TABLE readings ADD CONSTRAINT readings_value_bounded CHECK (value BETWEEN -1e15 AND 1e15);
