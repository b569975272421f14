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

if ! up 5432; then
  echo "starting PostgreSQL on 127.0.0.1:5432"
  if command -v pg_lsclusters >/dev/null 2>&1 && [ -n "$(pg_lsclusters -h 2>/dev/null)" ]; then
    read -r ver cluster _ < <(pg_lsclusters -h | head -1)
    pg_ctlcluster "$ver" "$cluster" start || service postgresql start
  else
    service postgresql start
  fi
  wait_up 5432 PostgreSQL /var/log/postgresql/
fi

# the database the tests use (each test makes and drops its own schema in it)
psql_as() { psql -h 127.0.0.1 -U "$1" -d postgres -tAc "$2" 2>/dev/null; }
for user in postgres root; do
  if [ "$(psql_as "$user" "SELECT 1")" = "1" ]; then
    if [ "$(psql_as "$user" "SELECT 1 FROM pg_database WHERE datname = 'test'")" != "1" ]; then
      psql_as "$user" "CREATE DATABASE test" >/dev/null
    fi
    exit 0
  fi
done
echo "PostgreSQL on 127.0.0.1:5432 refuses the users postgres and root" >&2
exit 1
