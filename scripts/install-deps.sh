#!/usr/bin/env bash
# Installs, when missing, what the tests and the local demo need on Debian/Ubuntu:
# MariaDB server and client, and (with --tests, for the test suite) PyMySQL and Chromium.
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
{ [ -x /usr/sbin/mariadbd ] || command -v mariadbd >/dev/null 2>&1; } || missing+=(mariadb-server)
command -v mariadb-install-db >/dev/null 2>&1 || missing+=(mariadb-server)
command -v mariadb >/dev/null 2>&1 || missing+=(mariadb-client)
# The status-page test renders the page in headless Chromium.
[ "${1:-}" = "--tests" ] && ! command -v chromium >/dev/null 2>&1 && missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ "${1:-}" = "--tests" ] && ! python3 -c 'import pymysql' 2>/dev/null; then
  echo "installing: PyMySQL"
  python3 -m pip install --quiet pymysql 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages pymysql 2>/dev/null \
    || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pymysql >/dev/null
  python3 -c 'import pymysql'
fi
