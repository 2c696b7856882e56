#!/usr/bin/env bash
# Start the local Redis and PostgreSQL that the integration tests use, when they are installed but down.
# Tests that need one skip with a printed reason when it is absent; this only starts what exists.
set -u
if command -v redis-server >/dev/null && ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
    echo "starting redis"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log || echo "could not start redis"
fi
if command -v pg_ctlcluster >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    echo "starting postgresql"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || echo "could not start postgresql"
fi
for _ in $(seq 20); do
    redis_ok=1; pg_ok=1
    command -v redis-cli >/dev/null && { redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 || redis_ok=0; }
    command -v pg_isready >/dev/null && { pg_isready -q -h 127.0.0.1 -p 5432 || pg_ok=0; }
    [ $redis_ok = 1 ] && [ $pg_ok = 1 ] && break
    sleep 0.5
done
exit 0
