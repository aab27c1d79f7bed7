#!/usr/bin/env bash
# The flood benchmark of docs/benchmarks.md ("A flooding board"), in one command:
#
#   scripts/bench/flood.sh                  # 20 s per phase
#   SECONDS_PER_PHASE=60 scripts/bench/flood.sh
#
# Starts the platform closed, as deployed (release binaries; broker with service users
# and the device registry, historian, ingest, web; every quota at its default), provisions
# boards A and B and a viewer with the `lentera` CLI, and runs `lentera-loadgen flood`:
# B posts 10 readings/s throughout while A is silent, then posts at 10x its quota, then
# as fast as 16 connections go. Prints B's latency per phase, both boards' answers, and
# how many of B's readings a /ws viewer of every device got.
#
# Needs PostgreSQL at DATABASE_URL (default postgres://postgres:postgres@127.0.0.1:5432/postgres).
set -euo pipefail
cd "$(dirname "$0")/../.."

PHASE=${SECONDS_PER_PHASE:-20}
ADMIN_URL=${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
OUT=${OUT:-$(mktemp -d /tmp/lentera-bench-flood.XXXXXX)}
DB=lentera_bench_flood_$$
DB_URL="${ADMIN_URL%/*}/$DB"

echo "==> release build" >&2
cargo build --release --locked -p lentera-broker -p lentera-ingest -p lentera-historian \
  -p lentera-web -p lentera-cli -p lentera-loadgen >&2
T=${CARGO_TARGET_DIR:-target}/release

psql "$ADMIN_URL" -qc "CREATE DATABASE $DB" >/dev/null
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null || true
}
trap cleanup EXIT
export DATABASE_URL=$DB_URL
"$T/lentera" migrate >&2

# Service users, as deploy/ec2-setup.sh writes them.
: >"$OUT/broker-auth.toml"
for user in ingest historian web; do
  pw=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
  declare "PW_$user=$pw"
  printf '[[users]]\nusername = "%s"\npassword = "%s"\npublish = ["lentera/#"]\nsubscribe = ["lentera/#"]\n\n' \
    "$user" "$(printf '%s\n' "$pw" | "$T/lentera-broker" hash-password)" >>"$OUT/broker-auth.toml"
done

start() { # name, then VAR=value … ; waits for its ready file
  local name=$1; shift
  env "$@" LENTERA_DATABASE__URL="$DB_URL" LENTERA_TELEMETRY__LOG=warn \
    LENTERA_READY_FILE="$OUT/$name.json" "$T/lentera-$name" >"$OUT/$name.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 300); do [ -s "$OUT/$name.json" ] && return 0; sleep 0.1; done
  echo "$name did not start; see $OUT/$name.log" >&2; exit 2
}
addr() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$OUT/$1.json" "$2"; }

start broker LENTERA_BROKER__MQTT_ADDR=127.0.0.1:0 LENTERA_BROKER__ADMIN_ADDR=127.0.0.1:0 \
  LENTERA_BROKER__WS_ADDR= LENTERA_BROKER__DATA_DIR="$OUT/broker-store" \
  LENTERA_BROKER__AUTH_FILE="$OUT/broker-auth.toml"
MQTT=$(addr broker mqtt)
mqtt_env() { echo "LENTERA_MQTT__HOST=127.0.0.1 LENTERA_MQTT__PORT=${MQTT##*:} LENTERA_MQTT__USERNAME=$1 LENTERA_MQTT__PASSWORD=$2"; }
# shellcheck disable=SC2046
start historian $(mqtt_env historian "$PW_historian") LENTERA_HISTORIAN__ADMIN_ADDR=127.0.0.1:0
# shellcheck disable=SC2046
start ingest $(mqtt_env ingest "$PW_ingest") LENTERA_INGEST__HTTP_ADDR=127.0.0.1:0 LENTERA_INGEST__TCP_ADDR=127.0.0.1:0
# shellcheck disable=SC2046
start web $(mqtt_env web "$PW_web") LENTERA_WEB__HTTP_ADDR=127.0.0.1:0 LENTERA_DATABASE__MIGRATE=false

token() { "$T/lentera" "$@" | tail -n1 | awk '{print $NF}'; }
A=$(token devices add flood-a --kind greenhouse)
B=$(token devices add flood-b --kind greenhouse)
printf 'viewer password\n' | "$T/lentera" operators add flood-viewer --role viewer >/dev/null
V=$(token tokens add flood-viewer)

echo "==> flood: $PHASE s per phase; logs in $OUT" >&2
"$T/lentera-loadgen" flood --ingest "http://$(addr ingest http)" --web "http://$(addr web http)" \
  --viewer-token "$V" --device-a flood-a --token-a "$A" --device-b flood-b --token-b "$B" \
  --seconds "$PHASE" "${@}" | tee "$OUT/flood.txt"
