#!/usr/bin/env bash
# The broker with many devices connected (issue 14; docs/benchmarks.md), both brokers:
#
#   scripts/bench/scale.sh                                   # N = 0, 1000, 10000, 100000
#   scripts/bench/scale.sh --sizes 0,1000,10000              # some sizes only
#   scripts/bench/scale.sh --only lentera --sizes 10000      # one broker
#   scripts/bench/scale.sh --duration 10s                    # longer phases (default 5s)
#   scripts/bench/scale.sh --filters wildcard                # wildcard-heavy idle sessions
#
# For each N and each broker: a freshly started broker (Lentera's from this tree's
# release build, or LENTERA_BROKER_BIN=path for another one; Mosquitto from
# /usr/sbin/mosquitto), then `lentera-loadgen scale --idle N` against it, which opens N
# idle board-like sessions (own client id, an exact and a wildcard QoS 1 subscription;
# with --filters wildcard, two wildcard-first ones: +/<id>/cmd/# and lentera/+/<id>)
# and measures 1->1 throughput, 1->1,000 fan-out, p99 latency at 10,000 msg/s, the
# connect rate, a disconnect storm of all live idle sessions (time until the broker's
# connection count is back, and the longest gap in a steady 1->1 stream meanwhile) and
# the broker's RSS per session. Prints one Markdown table row per (broker, N); raw JSON
# stays in $OUT (printed). About 12 minutes for all sizes and both brokers.
#
# Open files: each live session is a descriptor in the broker too, and the hard limit
# here may be low (20,000 on the benchmark machine): live idle sessions are capped at
# LIVE_MAX (15,000, lowered to fit the limit); beyond it the rest of the N sessions are
# persistent (clean_session=0, subscribed, then disconnected: the broker keeps them and
# their subscriptions). The table says how many of each.
#
# Environment: LENTERA_BROKER_BIN (default: build and use target/release/lentera-broker),
# LIVE_MAX (15000), OUT (a new /tmp directory), NO_BUILD=1 (use the binaries as built).
set -euo pipefail
cd "$(dirname "$0")/../.."

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit "${1:-0}"
}

SIZES=0,1000,10000,100000
BROKERS="lentera mosquitto"
DURATION=5s
FILTERS=board
while [ $# -gt 0 ]; do
  case $1 in
    --sizes) SIZES=${2:?--sizes needs a list}; shift 2 ;;
    --sizes=*) SIZES=${1#*=}; shift ;;
    --only) BROKERS=${2:?--only needs lentera or mosquitto}; shift 2 ;;
    --only=*) BROKERS=${1#*=}; shift ;;
    --duration) DURATION=${2:?--duration needs a value}; shift 2 ;;
    --duration=*) DURATION=${1#*=}; shift ;;
    --filters) FILTERS=${2:?--filters needs board or wildcard}; shift 2 ;;
    --filters=*) FILTERS=${1#*=}; shift ;;
    -h | --help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage 2 >&2 ;;
  esac
done
for b in $BROKERS; do
  case $b in lentera | mosquitto) ;; *) echo "--only: lentera or mosquitto, not $b" >&2; exit 2 ;; esac
done
IFS=, read -r -a NS <<<"$SIZES"
for n in "${NS[@]}"; do
  [[ $n =~ ^[0-9]+$ ]] || { echo "--sizes: $n is not a number" >&2; exit 2; }
done

OUT=${OUT:-$(mktemp -d /tmp/lentera-bench-scale.XXXXXX)}
mkdir -p "$OUT"
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
if [[ " $BROKERS " == *" mosquitto "* ]] && [ ! -x "$MOSQUITTO" ]; then
  echo "mosquitto is not installed: apt-get install mosquitto" >&2
  exit 2
fi

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FDS=$(ulimit -n)
[ "$FDS" = unlimited ] && FDS=1000000
FANOUT=1000
LIVE_MAX=${LIVE_MAX:-15000}
# The broker holds every live session, the 1,000 fan-out subscribers and its own files.
if [ $((LIVE_MAX + FANOUT + 500)) -gt "$FDS" ]; then
  LIVE_MAX=$((FDS - FANOUT - 500))
  echo "open-files limit $FDS: live idle sessions capped at $LIVE_MAX" >&2
fi
if [ "$LIVE_MAX" -lt 1000 ]; then
  echo "the open-files limit $FDS is too low (need about 2,500)" >&2
  exit 2
fi

if [ "${NO_BUILD:-0}" != 1 ]; then
  echo "==> release build (load generator${LENTERA_BROKER_BIN:+; broker: $LENTERA_BROKER_BIN})" >&2
  if [ -n "${LENTERA_BROKER_BIN:-}" ]; then
    cargo build --release -p lentera-loadgen >&2
  else
    cargo build --release -p lentera-loadgen -p lentera-broker >&2
  fi
fi
L=target/release/lentera-loadgen
BROKER_BIN=${LENTERA_BROKER_BIN:-target/release/lentera-broker}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

BROKER_PID=
GAUGE_ARGS=()
start_broker() { # $1 = mosquitto | lentera; sets PORT, BROKER_PID, GAUGE_ARGS
  PORT=$(free_port)
  case $1 in
    mosquitto)
      # Debian's defaults except: no queue limit that drops (as in broker.sh), no
      # connection limit, and $SYS every second (the disconnect storm reads
      # $SYS/broker/clients/connected, so its resolution is one second).
      printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\nmax_connections -1\nsys_interval 1\n' \
        "$PORT" >"$OUT/mosquitto.conf"
      "$MOSQUITTO" -c "$OUT/mosquitto.conf" >"$OUT/mosquitto.log" 2>&1 &
      BROKER_PID=$!
      GAUGE_ARGS=(--sys-topic "\$SYS/broker/clients/connected")
      ;;
    lentera)
      rm -rf "$OUT/store" "$OUT/ready.json"
      # Open (no auth) and without the per-address cap, like the anonymous Mosquitto;
      # the admin listener on a free port, found in the ready file.
      LENTERA_AUTH__OPEN=true LENTERA_QUOTA__MAX_CONNECTIONS_PER_IP=0 \
      LENTERA_BROKER__MQTT_ADDR=127.0.0.1:$PORT LENTERA_BROKER__ADMIN_ADDR=127.0.0.1:0 \
      LENTERA_BROKER__DATA_DIR="$OUT/store" LENTERA_BROKER__WS_ADDR='' LENTERA_TELEMETRY__LOG=warn \
      LENTERA_READY_FILE="$OUT/ready.json" \
        "$BROKER_BIN" >"$OUT/lentera.log" 2>&1 &
      BROKER_PID=$!
      for _ in $(seq 200); do [ -s "$OUT/ready.json" ] && break; sleep 0.05; done
      [ -s "$OUT/ready.json" ] || { echo "lentera did not start; see $OUT/lentera.log" >&2; exit 2; }
      ADMIN=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["admin"])' "$OUT/ready.json")
      GAUGE_ARGS=(--metrics-url "http://$ADMIN/metrics" --gauge lentera_broker_connections)
      ;;
  esac
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

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "this tree: commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- services/broker || echo ' (services/broker modified)')"
  if [ -n "${LENTERA_BROKER_BIN:-}" ]; then
    echo "lentera broker: $BROKER_BIN (LENTERA_BROKER_BIN, not this tree's)"
  else
    echo "lentera broker: $BROKER_BIN (this tree)"
  fi
  echo "mosquitto: $("$MOSQUITTO" -h 2>/dev/null | head -1 || true)"
  echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; load average $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "open files: $FDS; live idle sessions at most $LIVE_MAX; phases $DURATION; idle filters: $FILTERS"
} | tee "$OUT/run.txt" >&2

for n in "${NS[@]}"; do
  for broker in $BROKERS; do
    start_broker "$broker"
    echo "==> $broker, $n idle sessions (log: $OUT/$broker.$n.log)" >&2
    args=(scale --idle "$n" --live-max "$LIVE_MAX" --fanout "$FANOUT" --duration "$DURATION"
      --port "$PORT" --pid "$BROKER_PID" --label "$broker" --filters "$FILTERS"
      "${GAUGE_ARGS[@]}" --json)
    echo "lentera-loadgen ${args[*]}" >"$OUT/$broker.$n.log"
    # Every phase has its own timeouts; this is the backstop against a hung run.
    if ! timeout 600 "$L" "${args[@]}" >"$OUT/$broker.$n.json" 2>>"$OUT/$broker.$n.log"; then
      echo "    failed or timed out: see $OUT/$broker.$n.log" >&2
    fi
    tail -n +2 "$OUT/$broker.$n.log" | sed 's/^/    /' >&2
    stop_broker
  done
done

echo "results in $OUT" >&2
python3 - "$OUT" "$SIZES" "$BROKERS" <<'EOF'
import json, pathlib, sys
out, sizes, brokers = pathlib.Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3].split()
def load(broker, n):
    p = out / f"{broker}.{n}.json"
    try:
        return json.loads(p.read_text().strip().splitlines()[0])
    except Exception:
        return None
def num(v, d=0):
    return f"{v:,.{d}f}"
def stream(p):
    # Only what arrived counts; what did not is in the JSON ("missing"), and includes
    # the publisher's window still in flight when the phase ended.
    if not p or p.get("stalled", True):
        return "stalled"
    return num(p["per_sec"])
def latency(p):
    if not p or p.get("stalled", True):
        return "stalled"
    s = f"{p['latency']['p99_us'] / 1000:.2f} ms"
    if p["expected"] and p["received"] < 0.99 * p["expected"]:
        s += f" ({100 * p['received'] / p['expected']:.0f}% arrived)"
    return s
def connect(r):
    c = r["connect"]
    if r["idle"] == 0:
        return "—"
    s = num(c["per_sec"]) + "/s"
    if r["persistent"]:
        s += f" (persistent {num(c['persistent']['per_sec'])}/s, live {num(c['live']['per_sec'])}/s)"
    if c["failed"]:
        s += f", {num(c['failed'])} failed"
    return s
def storm(r):
    st = r.get("storm")
    if not st:
        return "—", "—"
    if st.get("error") and st.get("stalled"):
        return "stalled", "stalled"
    rec = st.get("recovered_secs")
    if rec is None:
        back = f"not in {st['timeout_secs']:.0f} s (count {st.get('count_last')}, baseline {st.get('baseline')})"
    else:
        back = f"{rec:.2f} s"
    gap = f"{st['max_gap_ms']:,.0f} ms"
    if st["expected_in_window"] and st["received_in_window"] < 0.99 * st["expected_in_window"]:
        gap += f" ({100 * st['received_in_window'] / st['expected_in_window']:.0f}% arrived)"
    return back, gap
def sessions(r):
    if r["persistent"]:
        return f"{num(r['idle'])} ({num(r['live'])} live + {num(r['persistent'])} persistent)"
    return num(r["idle"])
print("| Broker | Idle sessions | 1→1 QoS 0, msg/s | Fan-out 1→1,000, deliveries/s | p99 at 10,000 msg/s | Connect, sessions/s | Storm: back to baseline | Storm: max 1→1 gap | RSS per session |")
print("|---|---|---|---|---|---|---|---|---|")
for n in sizes:
    for b in brokers:
        r = load(b, n)
        if r is None:
            print(f"| {b} | {num(int(n))} | run failed | | | | | | |")
            continue
        back, gap = storm(r)
        kib = r.get("kib_per_session")
        rss = "—" if r["idle"] == 0 or kib is None else f"{kib:.2f} KiB"
        print(f"| {b} | {sessions(r)} | {stream(r['throughput'])} | {stream(r['fanout'])} | "
              f"{latency(r['latency'])} | {connect(r)} | {back} | {gap} | {rss} |")
EOF
