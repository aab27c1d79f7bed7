#!/usr/bin/env bash
# Prepares a fresh Debian/Ubuntu EC2 instance and starts Lentera, closed, behind HTTPS.
#   sudo deploy/ec2-setup.sh <domain> <email-for-lets-encrypt>
# Writes deploy/.env (PostgreSQL and broker passwords) and deploy/broker-auth.toml once,
# then creates the first operator account and prints its password. Run again: the
# secrets are kept, the stack is updated.
set -euo pipefail
domain=${1:?usage: ec2-setup.sh <domain> <email>}
email=${2:?usage: ec2-setup.sh <domain> <email>}
cd "$(dirname "$0")/.."

if ! command -v docker >/dev/null; then
  apt-get update
  apt-get install -y docker.io docker-compose-v2 || apt-get install -y docker.io docker-compose-plugin
  systemctl enable --now docker
fi

secret() { head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32; }
umask 077
if [ ! -f deploy/.env ]; then
  {
    echo "LENTERA_DOMAIN=$domain"
    echo "ACME_EMAIL=$email"
    echo "POSTGRES_PASSWORD=$(secret)"
    for s in INGEST HISTORIAN WEB LAMP; do echo "MQTT_PASSWORD_$s=$(secret)"; done
  } > deploy/.env
fi
# shellcheck source=/dev/null
set -a; . deploy/.env; set +a

compose() { docker compose --env-file deploy/.env -f docker-compose.yml -f deploy/docker-compose.prod.yml "$@"; }
compose build
# The provisioning CLI, inside the web image (it reads LENTERA_DATABASE__URL).
cli() { compose run --rm -T --no-deps --entrypoint lentera web "$@"; }

if [ ! -f deploy/broker-auth.toml ]; then
  # One user per service, each with the hash of its password from deploy/.env; the
  # example's other users (placeholders) are dropped: boards log in with device tokens.
  hash() { printf '%s\n' "$1" | compose run --rm -T --no-deps broker hash-password; }
  declare -A pw=([ingest]=$MQTT_PASSWORD_INGEST [historian]=$MQTT_PASSWORD_HISTORIAN
                 [web]=$MQTT_PASSWORD_WEB [lamp]=$MQTT_PASSWORD_LAMP)
  out=$(mktemp)
  for user in ingest historian web lamp; do
    awk -v u="$user" -v h="$(hash "${pw[$user]}")" '
      /^\[\[users\]\]/ { inside = 0 }
      $0 ~ "^username = \"" u "\"" { inside = 1; print "[[users]]" }
      inside && /^password/ { print "password = \"" h "\""; next }
      /^$/ { inside = 0 }
      inside { print }
    ' deploy/broker-auth.example.toml >> "$out"
    echo >> "$out"
  done
  mv "$out" deploy/broker-auth.toml
  # Read by the broker container's own user (uid 10001); it holds hashes, not passwords.
  chmod 644 deploy/broker-auth.toml
fi

compose up -d
cli migrate
if ! cli operators list | grep -qw admin; then
  admin=$(secret)
  printf '%s\n' "$admin" | cli operators add admin --role operator
  echo "==> dashboard login: admin / $admin   (change it: lentera operators passwd admin)"
fi
compose ps
echo "==> add a board: docker compose --env-file deploy/.env -f docker-compose.yml -f deploy/docker-compose.prod.yml run --rm --entrypoint lentera web devices add gh-1 --kind greenhouse"
