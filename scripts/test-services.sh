#!/usr/bin/env bash
# Start the local services the tests use when they are down: Redis on
# 127.0.0.1:6379 (shared admission tests). Installs redis-server when missing.
set -euo pipefail
if (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then exit 0; fi
command -v redis-server >/dev/null 2>&1 || bash "$(dirname "$0")/debian-deps.sh" redis-server:redis-server
echo "starting redis-server on 127.0.0.1:6379"
redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
  --dir /tmp --logfile /tmp/voxgate-test-redis.log
for _ in $(seq 50); do
  (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && exit 0
  sleep 0.1
done
echo "redis-server did not start (see /tmp/voxgate-test-redis.log)" >&2
exit 1
