#!/usr/bin/env bash
# Start the local services the tests use when they are down: Redis on
# 127.0.0.1:6379 (shared admission tests) and PostgreSQL on 127.0.0.1:5432
# with a database `test` (the store suite's PostgreSQL runs). Installs
# redis-server when missing; PostgreSQL must be installed (Debian cluster).
set -euo pipefail

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_up() {  # port, what, log
  for _ in $(seq 100); do
    up "$1" && return 0
    sleep 0.1
  done
  echo "$2 did not start (see $3)" >&2
  exit 1
}

if ! up 6379; then
  command -v redis-server >/dev/null 2>&1 || bash "$(dirname "$0")/debian-deps.sh" redis-server:redis-server
  echo "starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/voxgate-test-redis.log
  wait_up 6379 redis-server /tmp/voxgate-test-redis.log
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PG_URL_FILE="$ROOT/.test-pg-url"  # read by tests/conftest.py when VOXGATE_TEST_PG_URL is unset
rm -f "$PG_URL_FILE"

if ! up 5432; then
  command -v pg_lsclusters >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
    || bash "$(dirname "$0")/debian-deps.sh" pg_lsclusters:postgresql
  if command -v pg_lsclusters >/dev/null 2>&1 && [ -n "$(pg_lsclusters -h 2>/dev/null)" ]; then
    echo "starting PostgreSQL on 127.0.0.1:5432"
    read -r ver cluster _ < <(pg_lsclusters -h | head -1)
    pg_ctlcluster "$ver" "$cluster" start 2>/dev/null || service postgresql start 2>/dev/null || true
    for _ in $(seq 50); do up 5432 && break; sleep 0.1; done
  fi
fi

# the database the tests use (each test makes and drops its own schema in it)
psql_as() { psql -h 127.0.0.1 -p "$2" -U "$1" -d postgres -tAc "$3" 2>/dev/null; }
ensure_test_db() {  # port: 0 when a trusted user has (or now has) the database test
  for user in postgres root; do
    if [ "$(psql_as "$user" "$1" "SELECT 1")" = "1" ]; then
      if [ "$(psql_as "$user" "$1" "SELECT 1 FROM pg_database WHERE datname = 'test'")" != "1" ]; then
        psql_as "$user" "$1" "CREATE DATABASE test" >/dev/null
      fi
      [ "$1" = 5432 ] || echo "postgresql://$user@127.0.0.1:$1/test" > "$PG_URL_FILE"
      return 0
    fi
  done
  return 1
}
up 5432 && ensure_test_db 5432 && exit 0

# No PostgreSQL on 5432 that takes a password-less local user (a fresh Debian
# cluster asks for passwords over TCP): run a private one for the tests, with
# trust auth on 127.0.0.1:55432 and its files under /tmp, changing nothing of
# the system's cluster.
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$PGBIN" ] || { echo "PostgreSQL is not installed (package postgresql)" >&2; exit 1; }
PGDIR=/tmp/voxgate-test-pg
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if ! up 55432; then
  echo "starting a private PostgreSQL for the tests on 127.0.0.1:55432 ($PGDIR)"
  if [ ! -s "$PGDIR/PG_VERSION" ]; then
    mkdir -p "$PGDIR"
    [ "$(id -u)" -ne 0 ] || chown postgres "$PGDIR"
    as_pg "$PGBIN/initdb" -D "$PGDIR" -A trust -U postgres >/dev/null
  fi
  as_pg "$PGBIN/pg_ctl" -D "$PGDIR" -l "$PGDIR/log" -o "-p 55432 -k /tmp -c listen_addresses=127.0.0.1" start >/dev/null
  wait_up 55432 PostgreSQL "$PGDIR/log"
fi
ensure_test_db 55432 && exit 0
echo "PostgreSQL on 127.0.0.1 refuses the users postgres and root" >&2
exit 1
