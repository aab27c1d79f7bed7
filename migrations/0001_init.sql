-- Lentera schema, version 1.
--
-- Readings are narrow rows (device, metric, ts, value). The primary key is also the
-- idempotency key: a redelivered MQTT message inserts nothing (ON CONFLICT DO NOTHING).

CREATE TABLE devices (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    -- 'sensor' or 'lamp'; a device becomes a lamp when it publishes lamp/state or is commanded.
    kind        text NOT NULL DEFAULT 'sensor' CHECK (kind IN ('sensor', 'lamp')),
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    -- Last retained status: 'online' / 'offline'.
    status      text
);

CREATE TABLE readings (
    device  text NOT NULL,
    metric  text NOT NULL,
    ts      timestamptz NOT NULL,
    value   double precision NOT NULL,
    PRIMARY KEY (device, metric, ts)
);

-- The newest value per (device, metric), so the device list never scans history.
CREATE TABLE latest_readings (
    device  text NOT NULL,
    metric  text NOT NULL,
    ts      timestamptz NOT NULL,
    value   double precision NOT NULL,
    PRIMARY KEY (device, metric)
);

-- The operator's mode per lamp (mirrors the retained lentera/{device}/lamp/mode).
CREATE TABLE lamp_modes (
    device      text PRIMARY KEY,
    mode        text NOT NULL CHECK (mode IN ('auto', 'on', 'off')),
    until       timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Everything that happened to a lamp: commands sent, states reported, modes set.
CREATE TABLE lamp_events (
    id      bigserial PRIMARY KEY,
    device  text NOT NULL,
    ts      timestamptz NOT NULL DEFAULT now(),
    kind    text NOT NULL CHECK (kind IN ('command', 'state', 'mode')),
    value   text NOT NULL
);
CREATE INDEX lamp_events_device_ts ON lamp_events (device, ts DESC);
