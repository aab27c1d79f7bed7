# shellcheck shell=bash
# What the tests and run-local need on the machine.
#
# A throw-away PostgreSQL for tests: its own data directory and port, stopped on exit,
# so the tests never touch a cluster someone relies on.

pg_bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return 0; }
  return 1
}

install_postgres() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "PostgreSQL is not installed. Install it (apt-get install postgresql) or set DATABASE_URL." >&2
    exit 1
  fi
  echo "==> installing PostgreSQL with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
}

start_throwaway_postgres() {
  local bin dir port run_as=()
  bin=$(pg_bindir) || { install_postgres; bin=$(pg_bindir); }
  dir=$(mktemp -d /tmp/lentera-pg.XXXXXX)
  # PostgreSQL refuses to run as root; CI runs as root, a laptop usually does not.
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres:postgres "$dir"
    run_as=(runuser -u postgres --)
  fi
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "${run_as[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  "${run_as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null
  export LENTERA_TEST_PG_DIR=$dir
  # shellcheck disable=SC2064
  trap "${run_as[*]} '$bin/pg_ctl' -D '$dir/data' -m immediate stop >/dev/null 2>&1; rm -rf '$dir'" EXIT
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
}

# The tools some tests need (pg_ctl, Mosquitto, Python's paho-mqtt and requests,
# Chromium) are required when the suite runs through scripts/test: each ensure_* below
# installs what is missing (as root, with apt-get or pip) and exports its
# LENTERA_REQUIRE_* variable, under which the tests fail instead of skipping when the
# tool is absent. When a tool cannot be installed (not root, or the install failed) the
# suite stops here with an error — unless LENTERA_ALLOW_SKIP=1 is set, which lets the
# tests that need it skip (each says SKIPPING loudly) and leaves its LENTERA_REQUIRE_*
# unset.
missing_tool() { # $1 what is missing, $2 how to install it, $3 the LENTERA_REQUIRE_* variables
  if [ "${LENTERA_ALLOW_SKIP:-0}" = 1 ]; then
    echo "warning: $1 is missing ($2); LENTERA_ALLOW_SKIP=1, so the tests that need it will say SKIPPING" >&2
    local v
    for v in $3; do unset "$v"; done
    return 0
  fi
  echo "error: $1 is missing and could not be installed ($2)." >&2
  echo "       Install it, or set LENTERA_ALLOW_SKIP=1 to run the suite with the tests that need it skipped." >&2
  exit 1
}

# The fault tests start (and stop) private clusters of their own with initdb/pg_ctl, even
# when DATABASE_URL points elsewhere; with the binaries present they must run, not skip.
ensure_pg_ctl() {
  if ! pg_bindir >/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
      missing_tool "PostgreSQL's server binaries (initdb, pg_ctl)" "apt-get install postgresql" LENTERA_REQUIRE_PG_CTL
      return 0
    fi
    install_postgres
  fi
  export LENTERA_REQUIRE_PG_CTL=1
}

# A cluster that keeps its data between runs (scripts/run-local), in $1 on port $2.
start_persistent_postgres() {
  local dir=$1 port=$2 bin run_as=()
  bin=$(pg_bindir) || { install_postgres; bin=$(pg_bindir); }
  mkdir -p "$dir"
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres:postgres "$dir"
    run_as=(runuser -u postgres --)
  fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    "${run_as[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  "${run_as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null
  PERSISTENT_PG=("${run_as[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast stop)
  psql -h 127.0.0.1 -p "$port" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='lentera'" | grep -q 1 \
    || psql -h 127.0.0.1 -p "$port" -U postgres -qc "CREATE DATABASE lentera"
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/lentera"
}

stop_persistent_postgres() {
  if [ -n "${PERSISTENT_PG+x}" ]; then "${PERSISTENT_PG[@]}" >/dev/null 2>&1 || true; fi
}

# Mosquitto, for the tests that check our services run unchanged on another broker, and
# its clients (mosquitto_pub/sub) as independent clients of ours. Only the binary is
# needed: the package's own daemon is kept from starting so it cannot take port 1883.
ensure_mosquitto() {
  if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    if [ "$(id -u)" -ne 0 ]; then
      missing_tool "mosquitto" "apt-get install mosquitto mosquitto-clients" LENTERA_REQUIRE_MOSQUITTO
      return 0
    fi
    echo "==> installing Mosquitto with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    local made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends mosquitto mosquitto-clients >/dev/null
    [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
  fi
  # The clients (mosquitto_pub/sub) come in their own package.
  if ! command -v mosquitto_pub >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
      missing_tool "mosquitto_pub/mosquitto_sub" "apt-get install mosquitto-clients" LENTERA_REQUIRE_MOSQUITTO
      return 0
    fi
    echo "==> installing mosquitto-clients with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mosquitto-clients >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mosquitto-clients >/dev/null; }
  fi
  export LENTERA_REQUIRE_MOSQUITTO=1
}

# Python clients the tests drive: paho-mqtt (an independent MQTT client for the broker's
# conformance tests) and requests (the seed's client.py runs unchanged against ingest).
# They go into whichever `python3` is first on PATH, since that is the one tests run.
ensure_python() {
  if ! command -v python3 >/dev/null 2>&1; then
    missing_tool "python3" "apt-get install python3 python3-pip" "LENTERA_REQUIRE_PYTHON LENTERA_REQUIRE_PAHO"
    return 0
  fi
  if ! python3 -c 'import paho.mqtt.client, requests' >/dev/null 2>&1; then
    echo "==> installing paho-mqtt and requests with pip"
    python3 -m pip install --quiet --disable-pip-version-check 'paho-mqtt>=2,<3' requests >/dev/null 2>&1 \
      || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages 'paho-mqtt>=2,<3' requests >/dev/null \
      || { missing_tool "Python's paho-mqtt and requests" "python3 -m pip install 'paho-mqtt>=2,<3' requests" "LENTERA_REQUIRE_PYTHON LENTERA_REQUIRE_PAHO"; return 0; }
  fi
  export LENTERA_REQUIRE_PYTHON=1 LENTERA_REQUIRE_PAHO=1
}

# Debian's Chromium, for the dashboard test in a real (headless) browser.
ensure_chromium() {
  if [ ! -x /usr/bin/chromium ] && [ ! -x /usr/bin/chromium-browser ]; then
    if [ "$(id -u)" -ne 0 ]; then
      missing_tool "chromium" "apt-get install chromium" LENTERA_REQUIRE_CHROMIUM
      return 0
    fi
    echo "==> installing Chromium with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium >/dev/null
  fi
  export LENTERA_REQUIRE_CHROMIUM=1
}

# rumqttd 0.20.0 (crates.io), a second independent broker the end-to-end and fault tests
# also run on (tests/src/broker.rs). Built from tests/brokers/rumqttd — its own small
# workspace with its own lock file, outside the root one — into target/brokers/, on
# demand: cargo rebuilds nothing when it is up to date. Needs only cargo and crates.io.
ensure_rumqttd() {
  local target=${CARGO_TARGET_DIR:-target}
  if ! command -v cargo >/dev/null 2>&1; then
    missing_tool "cargo (to build rumqttd)" "install Rust" LENTERA_REQUIRE_RUMQTTD
    return 0
  fi
  echo "==> rumqttd 0.20.0 (tests/brokers/rumqttd -> $target/brokers/debug/rumqttd)"
  if ! cargo build --quiet --locked --manifest-path tests/brokers/rumqttd/Cargo.toml \
    --target-dir "$target/brokers"; then
    missing_tool "rumqttd" "cargo build --locked --manifest-path tests/brokers/rumqttd/Cargo.toml --target-dir $target/brokers" LENTERA_REQUIRE_RUMQTTD
    return 0
  fi
  LENTERA_RUMQTTD=$(cd "$target/brokers/debug" && pwd)/rumqttd
  export LENTERA_RUMQTTD LENTERA_REQUIRE_RUMQTTD=1
}
