#!/usr/bin/env bash
# The integration scenarios against the docker-compose stack (needs Docker, python3, PyMySQL).
# CI has no Docker: it runs the same scenarios against the local-process cluster
# (tests/scenarios.rs) and checks the compose files (tests/compose_files.rs).
#
#   bash tests/compose/run.sh            # MySQL 8.4
#   DB_FLAVOR=mariadb DB_IMAGE=mariadb:11.4 bash tests/compose/run.sh
#   KEEP=1 bash tests/compose/run.sh     # leave the stack running afterwards
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -c 'import pymysql' 2>/dev/null || python3 -m pip install --quiet pymysql
docker compose up -d --build --wait
if [ -z "${KEEP:-}" ]; then
  trap 'docker compose down -v' EXIT
fi
# The web servers start once rwproxy is up; give the balancer's health checks a moment.
for _ in $(seq 1 60); do
  if python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:8080/", timeout=2)' 2>/dev/null; then
    break
  fi
  sleep 1
done
root_sql="sh -c 'if command -v mysql >/dev/null; then exec mysql -uroot -p\"\$MYSQL_ROOT_PASSWORD\"; else exec mariadb -uroot -p\"\$MYSQL_ROOT_PASSWORD\"; fi'"
RW_SQL=127.0.0.1:6033 RW_HTTP=127.0.0.1:8080 RW_ADMIN=127.0.0.1:9090 \
RW_PASSWORD="${APP_PASSWORD:-app}" \
RW_REPLICA1_SQL="docker compose exec -T replica1 $root_sql" \
RW_STOP_WEB1="docker compose stop web1" \
RW_START_WEB1="docker compose start web1" \
  python3 tests/compose/scenarios.py
