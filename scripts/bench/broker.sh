#!/usr/bin/env bash
# The broker benchmark of docs/benchmarks.md, both brokers, one run each, in one command:
#
#   scripts/bench/broker.sh                # every row, 30 s throughput / 60 s latency
#   DURATION=10s LATENCY_DURATION=20s scripts/bench/broker.sh   # a quicker look
#   ROWS="4x4-qos1 idle" scripts/bench/broker.sh                # some rows only
#
# Builds the release broker and load generator, then for each row starts a fresh broker
# (Mosquitto from Debian's package with `max_queued_messages` raised, and Lentera's),
# runs `lentera-loadgen --json` against it, stops it, and finally prints the table in
# Markdown. Raw JSON results stay in $OUT (printed). Run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-30s}
LATENCY_DURATION=${LATENCY_DURATION:-60s}
ROWS=${ROWS:-"4x4-qos0 4x4-qos1 fan-in fan-out latency idle"}
BROKERS=${BROKERS:-"mosquitto lentera"}
OUT=${OUT:-$(mktemp -d /tmp/lentera-bench-broker.XXXXXX)}
mkdir -p "$OUT"

MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
if [ ! -x "$MOSQUITTO" ]; then
  echo "mosquitto is not installed: apt-get install mosquitto" >&2
  exit 2
fi
# 10,000 connections need as many descriptors in the broker and in the load generator.
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 10200 ]; then
  echo "the open-files limit $(ulimit -n) is too low for 10,000 connections: raise the hard limit" >&2
  exit 2
fi

echo "==> release build (broker, load generator)" >&2
cargo build --release --locked -p lentera-broker -p lentera-loadgen >&2
L=target/release/lentera-loadgen

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

BROKER_PID=
start_broker() { # $1 = mosquitto | lentera; sets PORT and BROKER_PID
  PORT=$(free_port)
  case $1 in
    mosquitto)
      printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\n' "$PORT" \
        >"$OUT/mosquitto.conf"
      "$MOSQUITTO" -c "$OUT/mosquitto.conf" >"$OUT/mosquitto.log" 2>&1 &
      ;;
    lentera)
      rm -rf "$OUT/store"
      # Like for like with the Mosquitto above, which runs anonymous (allow_anonymous
      # true, no users, no per-address limit): Lentera's broker runs open
      # (LENTERA_AUTH__OPEN=true, no auth file, no registry: every client and topic
      # allowed) and without its per-address connection cap (quota.max_connections_per_ip,
      # 256 by default; 0 = none), since the idle row opens 10,000 connections from
      # 127.0.0.1. These rows compare the brokers' MQTT throughput, latency and memory,
      # not authentication: the closed broker, as deployed, is measured by
      # scripts/bench/readings.sh and scripts/bench/flood.sh.
      LENTERA_AUTH__OPEN=true LENTERA_QUOTA__MAX_CONNECTIONS_PER_IP=0 \
      LENTERA_BROKER__MQTT_ADDR=127.0.0.1:$PORT LENTERA_BROKER__ADMIN_ADDR=127.0.0.1:0 \
      LENTERA_BROKER__DATA_DIR="$OUT/store" LENTERA_BROKER__WS_ADDR= LENTERA_TELEMETRY__LOG=warn \
        target/release/lentera-broker >"$OUT/lentera.log" 2>&1 &
      ;;
  esac
  BROKER_PID=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "$1 did not start; see $OUT/$1.log" >&2
  exit 2
}

stop_broker() {
  [ -n "$BROKER_PID" ] || return 0
  kill "$BROKER_PID" 2>/dev/null || true
  wait "$BROKER_PID" 2>/dev/null || true
  BROKER_PID=
}
trap stop_broker EXIT

row_args() {
  case $1 in
    4x4-qos0) echo "throughput --publishers 4 --subscribers 4 --topics shared --qos 0 --size 64 --duration $DURATION" ;;
    4x4-qos1) echo "throughput --publishers 4 --subscribers 4 --topics shared --qos 1 --size 64 --duration $DURATION" ;;
    fan-in) echo "throughput --publishers 16 --subscribers 1 --topics distinct --qos 1 --size 64 --duration $DURATION" ;;
    fan-out) echo "throughput --publishers 1 --subscribers 16 --topics shared --qos 0 --size 64 --duration $DURATION" ;;
    latency) echo "latency --publishers 4 --subscribers 4 --topics distinct --qos 1 --rate 4000 --duration $LATENCY_DURATION" ;;
    idle) echo "connections --connections 10000 --concurrency 64 --hold 30s" ;;
    *) echo "unknown row $1" >&2; exit 2 ;;
  esac
}

for row in $ROWS; do
  for broker in $BROKERS; do
    start_broker "$broker"
    args=$(row_args "$row")
    [ "$row" = idle ] && args="$args --pid $BROKER_PID"
    echo "==> $row on $broker: lentera-loadgen $args" >&2
    # shellcheck disable=SC2086
    $L $args --port "$PORT" --json >"$OUT/$row.$broker.json"
    stop_broker
  done
done

echo "results in $OUT" >&2
python3 - "$OUT" $ROWS <<'EOF'
import json, pathlib, sys
out, rows = pathlib.Path(sys.argv[1]), sys.argv[2:]
def load(row, broker):
    p = out / f"{row}.{broker}.json"
    return json.loads(p.read_text()) if p.exists() else None
def cell(row, r):
    if r is None:
        return "—"
    if row == "idle":
        return f"{r['kib_per_connection']:.2f} KiB ({r['rss_before_kib']/1024:.1f} → {r['rss_after_kib']/1024:.1f} MiB, closed {r['closed_while_held']})"
    if row == "latency":
        l = r["latency"]
        return f"p50 {l['p50_us']/1000:.2f} ms / p99 {l['p99_us']/1000:.2f} ms (lost {r['lost']})"
    s = f"{r['delivered_per_sec']:,.0f} msg/s"
    return s + (f" (lost {r['lost']})" if r["qos"] > 0 else f" (dropped {r['dropped']})")
def ratio(row, a, b):
    if a is None or b is None:
        return "—"
    if row == "idle":
        return f"{a['kib_per_connection'] / b['kib_per_connection']:.2f}× memory"
    if row == "latency":
        return f"{a['latency']['p99_us'] / max(b['latency']['p99_us'], 1):.2f}× p99"
    return f"{a['delivered_per_sec'] / max(b['delivered_per_sec'], 1):.2f}×"
print("| Row | Lentera | Mosquitto | Lentera ÷ Mosquitto |")
print("|---|---|---|---|")
for row in rows:
    a, b = load(row, "lentera"), load(row, "mosquitto")
    print(f"| {row} | {cell(row, a)} | {cell(row, b)} | {ratio(row, a, b)} |")
EOF
