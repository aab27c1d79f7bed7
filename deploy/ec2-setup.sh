#!/usr/bin/env bash
# Prepares a fresh Debian/Ubuntu EC2 instance and starts Lentera behind HTTPS.
#   sudo deploy/ec2-setup.sh <domain> <email-for-lets-encrypt>
set -euo pipefail
domain=${1:?usage: ec2-setup.sh <domain> <email>}
email=${2:?usage: ec2-setup.sh <domain> <email>}
cd "$(dirname "$0")/.."

if ! command -v docker >/dev/null; then
  apt-get update
  apt-get install -y docker.io docker-compose-v2 || apt-get install -y docker.io docker-compose-plugin
  systemctl enable --now docker
fi

if [ ! -f deploy/.env ]; then
  umask 077
  cat > deploy/.env <<ENV
LENTERA_DOMAIN=$domain
ACME_EMAIL=$email
POSTGRES_PASSWORD=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
ENV
fi

docker compose --env-file deploy/.env -f docker-compose.yml -f deploy/docker-compose.prod.yml up -d --build
docker compose --env-file deploy/.env -f docker-compose.yml -f deploy/docker-compose.prod.yml ps
