#!/usr/bin/env bash
# The readings-path benchmark of docs/benchmarks.md ("Readings path"), in one command:
#
#   scripts/bench/readings.sh                      # every row, 10 s wrk runs, 200,000 readings
#   DURATION=30s READINGS=500000 scripts/bench/readings.sh
#   ROWS="historian e2e" scripts/bench/readings.sh # some rows only
#   HISTORIAN_BATCH=2000 ROWS=historian scripts/bench/readings.sh   # historian.batch_size
#   HISTORIAN_BATCH=10000 BROKER_INFLIGHT=8192 ROWS=historian scripts/bench/readings.sh
#
# Needs: PostgreSQL at DATABASE_URL (default postgres://postgres:postgres@127.0.0.1:5432/postgres),
# wrk, python3 with flask, mosquitto_sub (mosquitto-clients). Builds release binaries,
# starts the broker, ingest, the seed's Flask server and the historian on free ports, runs
# every row, stops everything and prints a Markdown table. Raw outputs stay in $OUT
# (printed). Run it on a quiet machine.
#
# The platform runs as deployed: closed (auth.open = false, the default). One database
# for the run (created, migrated with `lentera migrate`, dropped at the end) holds the
# device registry that the broker and ingest check; the broker has an auth file of
# service users (ingest and historian with the rules of deploy/broker-auth.example.toml,
# and `bench` for lentera-loadgen, mosquitto_sub and the historian bench); the simulated
# boards `bench-1` (wrk) and `bench-e2e` (the e2e row) are provisioned with
# `lentera devices add` and send their tokens as `Authorization: Bearer`. Every
# `[quota]` stays at its default except where a row says why.
#
# Row 1 is like for like: on both sides every message is published at QoS 1 (each
# acknowledged by PUBACK before it counts) and delivered to the same kind of subscriber,
# one `mosquitto_sub -q 1` (on lentera-bench/# for the load generator's publishers, on
# lentera/+/telemetry for ingest's), and the broker's delivered-message counter is
# reported for both. Both sides are authenticated as deployed: the publishers and the
# subscriber log in as the broker user `bench` (its password checked once, at CONNECT),
# and every ingest request carries a device token that ingest checks.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
BATCH=${BATCH:-100}
READINGS=${READINGS:-200000}
E2E_RATE=${E2E_RATE:-200}
E2E_SECS=${E2E_SECS:-20}
ROWS=${ROWS:-"broker ingest seed historian e2e"}
# historian.batch_size for the historian row (empty: the historian's default, 5,000).
HISTORIAN_BATCH=${HISTORIAN_BATCH:-}
# The broker's per-subscriber in-flight window: at least two historian batches.
BROKER_INFLIGHT=${BROKER_INFLIGHT:-20000}
# The server's admin URL: the run's database is made next to it; the historian bench
# (drain) makes its own fresh ones from it too.
export DATABASE_URL=${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
OUT=${OUT:-$(mktemp -d /tmp/lentera-bench-readings.XXXXXX)}
mkdir -p "$OUT"
DB=lentera_bench_readings_$$
DB_URL=$(python3 -c "import sys,urllib.parse as u; p=u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path='/$DB')))" "$DATABASE_URL")
# The ingest rows and the e2e row measure what a few simulated devices can push (bench-1
# from 64 connections, bench-e2e at E2E_RATE requests/s), not the quota: their ingest
# runs with the per-device rate raised far above any run's, the limiter still counting
# every request. (The broker's [quota] counts devices only; services and `bench` are not
# limited there, so the broker keeps its defaults.)
NO_QUOTA=(LENTERA_QUOTA__DEVICE_RATE_PER_SEC=1000000000 LENTERA_QUOTA__DEVICE_BURST=1000000000)

for tool in wrk python3 psql mosquitto_sub curl; do
  command -v $tool >/dev/null || { echo "$tool is not installed" >&2; exit 2; }
done
python3 -c 'import flask' 2>/dev/null || { echo "python3 flask is not installed (apt-get install python3-flask)" >&2; exit 2; }

echo "==> release build (broker, ingest, historian + its bench, load generator, lentera CLI)" >&2
cargo build --release --locked -p lentera-broker -p lentera-ingest -p lentera-historian -p lentera-loadgen \
  -p lentera-cli >&2
cargo build --release --locked -p lentera-historian --example bench >&2
T=${CARGO_TARGET_DIR:-target}/release

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # $1 port, $2 name
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "$2 did not start; see $OUT/$2.log" >&2
  exit 2
}
wait_ready() { # $1 /readyz URL, $2 name: closed services are ready once their registry is loaded
  for _ in $(seq 300); do
    curl -sf "$1" >/dev/null && return 0
    sleep 0.1
  done
  echo "$2 never became ready ($1); see $OUT/$2.log" >&2
  exit 2
}
PIDS=()
cleanup() {
  if [ -n "${SUB_PID:-}" ]; then kill "$SUB_PID" 2>/dev/null || true; fi
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

psql -q "$DATABASE_URL" -c "CREATE DATABASE $DB" >&2
"$T/lentera" --database-url "$DB_URL" migrate >&2

# Service users, hashed with `lentera-broker hash-password`. ingest and historian get
# their deployed rules (deploy/broker-auth.example.toml, as deploy/ec2-setup.sh copies
# them); `bench` publishes the load generator's lentera-bench/… and the historian
# bench's telemetry, and subscribes to both.
secret() { head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9'; }
hash() { printf '%s\n' "$1" | "$T/lentera-broker" hash-password; }
PW_ingest=$(secret) PW_historian=$(secret) PW_bench=$(secret)
AUTH_FILE=$OUT/broker-auth.toml
: >"$AUTH_FILE"
for user in ingest historian; do
  pw=PW_$user
  awk -v u="$user" -v h="$(hash "${!pw}")" '
    /^\[\[users\]\]/ { inside = 0 }
    $0 ~ "^username = \"" u "\"" { inside = 1; print "[[users]]" }
    inside && /^password/ { print "password = \"" h "\""; next }
    /^$/ { inside = 0 }
    inside { print }
  ' deploy/broker-auth.example.toml >>"$AUTH_FILE"
  echo >>"$AUTH_FILE"
  grep -q "^username = \"$user\"" "$AUTH_FILE" || { echo "no $user in deploy/broker-auth.example.toml" >&2; exit 2; }
done
printf '[[users]]\nusername = "bench"\npassword = "%s"\npublish = ["lentera-bench/#", "lentera/#"]\nsubscribe = ["lentera-bench/#", "lentera/#"]\n' \
  "$(hash "$PW_bench")" >>"$AUTH_FILE"
mqtt_login() { # $1 user: ingest's and the historian's broker login
  local pw=PW_$1
  echo "LENTERA_MQTT__USERNAME=$1 LENTERA_MQTT__PASSWORD=${!pw}"
}

# The broker: the historian acknowledges a delivery only after its batch commits, so the
# broker's per-subscriber in-flight window must hold a whole batch (historian.batch_size,
# 5,000; the broker's default of 64 would cap every batch at 64 readings), and the
# persistent session must be able to queue the whole `historian` row.
# Its byte bounds likewise: a queued reading is ~80 bytes of topic and payload, 256 is
# room to spare (the total bound is never lowered below its default, 256 MiB).
MQTT_PORT=$(free_port)
BROKER_ADMIN_PORT=$(free_port)
SESSION_BYTES=$(( (READINGS + 100000) * 256 ))
TOTAL_BYTES=$(( 2 * SESSION_BYTES > 268435456 ? 2 * SESSION_BYTES : 268435456 ))
LENTERA_BROKER__MQTT_ADDR=127.0.0.1:$MQTT_PORT LENTERA_BROKER__ADMIN_ADDR=127.0.0.1:$BROKER_ADMIN_PORT \
LENTERA_BROKER__DATA_DIR="$OUT/broker-store" LENTERA_BROKER__WS_ADDR= \
LENTERA_BROKER__AUTH_FILE="$AUTH_FILE" LENTERA_DATABASE__URL="$DB_URL" \
LENTERA_BROKER__MAX_INFLIGHT=$BROKER_INFLIGHT LENTERA_BROKER__SESSION_QUEUE_CAPACITY=$((READINGS + 100000)) \
LENTERA_BROKER__SESSION_QUEUE_BYTES=$SESSION_BYTES LENTERA_BROKER__QUEUED_BYTES_TOTAL=$TOTAL_BYTES \
LENTERA_TELEMETRY__LOG=warn $T/lentera-broker >"$OUT/broker.log" 2>&1 &
PIDS+=($!)
wait_port "$MQTT_PORT" broker
wait_ready "http://127.0.0.1:$BROKER_ADMIN_PORT/readyz" broker

# The simulated boards, provisioned as an operator would; the token is the last word.
token() { "$T/lentera" --database-url "$DB_URL" devices add "$@" | tail -n1 | awk '{print $NF}'; }
BENCH_TOKEN=$(token bench-1 --kind greenhouse)
# bench-e2e posts lux, the e2e row's metric: a plain sensor.
E2E_TOKEN=$(token bench-e2e --kind sensor)
[[ $BENCH_TOKEN == lt_* && $E2E_TOKEN == lt_* ]] || { echo "lentera devices add printed no token" >&2; exit 2; }
# Messages the broker has delivered to subscribers so far.
delivered() {
  curl -sf "http://127.0.0.1:$BROKER_ADMIN_PORT/metrics" \
    | awk '$1 == "lentera_broker_messages_delivered_total" { printf "%d\n", $2 }'
}

# Row 1's one QoS 1 subscriber, the same program on both sides.
SUB_PID=""
SUB_BEFORE=0
start_sub() { # $1 topic filter, $2 name
  mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -u bench -P "$PW_bench" -q 1 -t "$1" -i "bench-sub-$2-$$" >/dev/null &
  SUB_PID=$!
  sleep 0.5 # its SUBSCRIBE
  SUB_BEFORE=$(delivered)
}
stop_sub() { # sets SUB_GOT: what the subscriber was delivered
  sleep 1 # deliveries still in flight
  SUB_GOT=$(( $(delivered) - SUB_BEFORE ))
  kill "$SUB_PID" 2>/dev/null || true
  wait "$SUB_PID" 2>/dev/null || true
  SUB_PID=""
}

declare -A R
run_wrk() { # $1 name, $2 url, then env for ingest.lua
  local name=$1 url=$2; shift 2
  [[ $name == ingest_* ]] && start_sub 'lentera/+/telemetry' "$name"
  env BENCH_TOKEN="$BENCH_TOKEN" "$@" wrk -t2 -c"$CONNECTIONS" -d"$DURATION" -s scripts/bench/ingest.lua "$url" >"$OUT/$name.wrk" 2>&1
  local line; line=$(grep '^RESULT' "$OUT/$name.wrk")
  local req secs per non2xx sockerr p99
  req=$(sed 's/.*requests=\([0-9]*\).*/\1/' <<<"$line")
  secs=$(sed 's/.*seconds=\([0-9.]*\).*/\1/' <<<"$line")
  per=$(sed 's/.*readings_per_request=\([0-9]*\).*/\1/' <<<"$line")
  non2xx=$(sed 's/.*non2xx=\([0-9]*\).*/\1/' <<<"$line")
  sockerr=$(sed 's/.*socket_errors=\([0-9]*\).*/\1/' <<<"$line")
  p99=$(sed 's/.*p99_ms=\([0-9.]*\).*/\1/' <<<"$line")
  R[$name]=$(python3 -c "print(round($req*$per/$secs))")
  R[$name.note]="$(python3 -c "print(round($req/$secs))") req/s, p99 ${p99} ms, non-2xx $non2xx, socket errors $sockerr"
  if [ -n "$SUB_PID" ]; then
    stop_sub
    R[$name.note]="${R[$name.note]}, subscriber got $SUB_GOT of $((req * per)) readings"
  fi
  echo "    $name: ${R[$name]} readings/s (${R[$name.note]})" >&2
}

if [[ " $ROWS " == *" broker "* ]]; then
  echo "==> broker: lentera-loadgen QoS 1 publish rate (4 publishers, 1 mosquitto_sub)" >&2
  start_sub 'lentera-bench/#' broker
  $T/lentera-loadgen throughput --port "$MQTT_PORT" --username bench --password "$PW_bench" --publishers 4 --subscribers 0 --topics shared \
    --qos 1 --size 64 --duration "$DURATION" --json >"$OUT/broker.json"
  R[broker]=$(python3 -c "import json; print(round(json.load(open('$OUT/broker.json'))['sent_per_sec']))")
  stop_sub
  R[broker.note]="subscriber got $SUB_GOT of $(python3 -c "import json; print(json.load(open('$OUT/broker.json'))['acked'])") acknowledged"
  echo "    broker: ${R[broker]} msg/s" >&2
fi

if [[ " $ROWS " == *" ingest "* || " $ROWS " == *" seed "* ]]; then
  echo "==> ingest: wrk against POST /api/v1/readings and /sensor" >&2
  HTTP_PORT=$(free_port)
  # shellcheck disable=SC2046 # mqtt_login's words are VAR=value pairs
  env "${NO_QUOTA[@]}" $(mqtt_login ingest) LENTERA_DATABASE__URL="$DB_URL" \
  LENTERA_INGEST__HTTP_ADDR=127.0.0.1:$HTTP_PORT LENTERA_INGEST__TCP_ADDR=127.0.0.1:0 \
  LENTERA_MQTT__PORT=$MQTT_PORT LENTERA_MQTT__CLIENT_ID=bench-ingest-$$ LENTERA_TELEMETRY__LOG=warn \
    $T/lentera-ingest >"$OUT/ingest.log" 2>&1 &
  INGEST_PID=$!
  PIDS+=($INGEST_PID)
  wait_port "$HTTP_PORT" ingest
  wait_ready "http://127.0.0.1:$HTTP_PORT/readyz" ingest
  run_wrk ingest_batch "http://127.0.0.1:$HTTP_PORT" BENCH_BATCH="$BATCH"
  run_wrk ingest_one "http://127.0.0.1:$HTTP_PORT" BENCH_BATCH=1
  run_wrk ingest_sensor "http://127.0.0.1:$HTTP_PORT" BENCH_PATH=/sensor
  kill "$INGEST_PID"; wait "$INGEST_PID" 2>/dev/null || true
fi

if [[ " $ROWS " == *" seed "* ]]; then
  echo "==> seed: wrk against the seed's Flask /sensor" >&2
  SEED_PORT=$(free_port)
  python3 scripts/bench/seed_server.py "$SEED_PORT" >"$OUT/seed.log" 2>&1 &
  SEED_PID=$!
  PIDS+=($SEED_PID)
  wait_port "$SEED_PORT" seed
  run_wrk seed "http://127.0.0.1:$SEED_PORT" BENCH_PATH=/sensor
  kill "$SEED_PID"; wait "$SEED_PID" 2>/dev/null || true
fi

if [[ " $ROWS " == *" historian "* ]]; then
  echo "==> historian: $READINGS readings queued at the broker, drained into PostgreSQL; then one raw COPY" >&2
  $T/examples/bench drain --mqtt-port "$MQTT_PORT" --username bench --password "$PW_bench" --readings "$READINGS" \
    ${HISTORIAN_BATCH:+--batch-size "$HISTORIAN_BATCH"} >"$OUT/historian.json"
  cat "$OUT/historian.json" >&2
fi

if [[ " $ROWS " == *" e2e "* ]]; then
  echo "==> e2e: HTTP accept -> row committed, $E2E_RATE req/s for $E2E_SECS s" >&2
  # The run's database: the registry ingest checks bench-e2e against, and the historian's.
  HIST_READY=$OUT/historian.ready
  # shellcheck disable=SC2046
  env $(mqtt_login historian) \
  LENTERA_HISTORIAN__ADMIN_ADDR=127.0.0.1:0 LENTERA_DATABASE__URL=$DB_URL LENTERA_MQTT__PORT=$MQTT_PORT \
  LENTERA_MQTT__CLIENT_ID=bench-historian-e2e-$$ LENTERA_READY_FILE=$HIST_READY LENTERA_TELEMETRY__LOG=warn \
    $T/lentera-historian >"$OUT/historian.log" 2>&1 &
  HIST_PID=$!
  PIDS+=($HIST_PID)
  HTTP_PORT=$(free_port)
  # NO_QUOTA: the row measures latency at E2E_RATE requests/s from one simulated device
  # (far above a board's 5/s), not the quota.
  # shellcheck disable=SC2046
  env "${NO_QUOTA[@]}" $(mqtt_login ingest) LENTERA_DATABASE__URL="$DB_URL" \
  LENTERA_INGEST__HTTP_ADDR=127.0.0.1:$HTTP_PORT LENTERA_INGEST__TCP_ADDR=127.0.0.1:0 \
  LENTERA_MQTT__PORT=$MQTT_PORT LENTERA_MQTT__CLIENT_ID=bench-ingest-e2e-$$ LENTERA_TELEMETRY__LOG=warn \
    $T/lentera-ingest >"$OUT/ingest-e2e.log" 2>&1 &
  INGEST_PID=$!
  PIDS+=($INGEST_PID)
  wait_port "$HTTP_PORT" ingest-e2e
  for _ in $(seq 200); do [ -s "$HIST_READY" ] && break; sleep 0.1; done
  [ -s "$HIST_READY" ] || { echo "historian did not start; see $OUT/historian.log" >&2; exit 2; }
  wait_ready "http://$(python3 -c "import json; print(json.load(open('$HIST_READY'))['admin'])")/readyz" historian
  wait_ready "http://127.0.0.1:$HTTP_PORT/readyz" ingest-e2e
  sleep 1 # the historian's SUBSCRIBE follows its CONNACK
  $T/examples/bench e2e --ingest "http://127.0.0.1:$HTTP_PORT" --database-url "$DB_URL" \
    --device bench-e2e --token "$E2E_TOKEN" \
    --rate "$E2E_RATE" --duration-secs "$E2E_SECS" >"$OUT/e2e.json"
  cat "$OUT/e2e.json" >&2
  kill "$INGEST_PID" "$HIST_PID"; wait "$INGEST_PID" "$HIST_PID" 2>/dev/null || true
fi

j() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }
echo
echo "Platform: closed, as deployed (device tokens, service users, [quota] defaults; the ingest and e2e rows raise the per-device rate)"
echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs) · Date: $(date -u +%F) · Commit: $(git rev-parse --short HEAD)"
echo
echo "| Row | Lentera | Baseline | Ratio | Target | Notes |"
echo "|---|---|---|---|---|---|"
ratio() { python3 -c "print(f'{$1/$2:.2f}×' if $2 else '—')"; }
if [ -n "${R[broker]:-}" ] && [ -n "${R[ingest_batch]:-}" ]; then
  echo "| 1. ingest HTTP readings/s ($BATCH per request) vs broker QoS 1 publish msg/s, each with 1 QoS 1 subscriber | ${R[ingest_batch]} | ${R[broker]} | $(ratio ${R[ingest_batch]} ${R[broker]}) | ≥ 0.5× | ${R[ingest_batch.note]}; broker: ${R[broker.note]} |"
  echo "| 1b. ingest, 1 reading per request, vs broker | ${R[ingest_one]} | ${R[broker]} | $(ratio ${R[ingest_one]} ${R[broker]}) | — | ${R[ingest_one.note]} |"
fi
if [ -n "${R[seed]:-}" ]; then
  [ -n "${R[ingest_batch]:-}" ] && echo "| 2. ingest readings/s ($BATCH per request) vs seed Flask /sensor | ${R[ingest_batch]} | ${R[seed]} | $(ratio ${R[ingest_batch]} ${R[seed]}) | ≥ 50× | seed: ${R[seed.note]} |"
  [ -n "${R[ingest_sensor]:-}" ] && echo "| 2b. ingest /sensor vs seed Flask /sensor (same request) | ${R[ingest_sensor]} | ${R[seed]} | $(ratio ${R[ingest_sensor]} ${R[seed]}) | — | ingest: ${R[ingest_sensor.note]} |"
fi
if [ -s "$OUT/historian.json" ]; then
  F=$OUT/historian.json
  echo "| 3. historian readings/s into PostgreSQL vs raw binary COPY | $(j $F "round(d['historian_per_sec'])") | $(j $F "round(d['copy_per_sec'])") | $(j $F "f\"{d['historian_vs_copy']:.2f}×\"") | ≥ 0.5× and ≥ 50,000/s | $(j $F "f\"{d['readings']} readings, batch {d['batch_size']}, broker window $BROKER_INFLIGHT; queued at {round(d['publish_per_sec'])}/s\"") |"
fi
if [ -s "$OUT/e2e.json" ]; then
  F=$OUT/e2e.json
  echo "| 4. HTTP accept → row committed, p50 / p99 / max ms | $(j $F "f\"{d['p50_ms']:.0f} / {d['p99_ms']:.0f} / {d['max_ms']:.0f}\"") | — | — | — | $(j $F "f\"{d['rate']} req/s, {d['committed']}/{d['requests']} committed, non-202 {d['not_202']}, poll {d['poll_ms']} ms\"") |"
fi
echo
echo "Raw results: $OUT" >&2
