#!/usr/bin/env bash
# Installs, when missing, what the tests and the local demo need on Debian/Ubuntu:
# MariaDB server and client; with --tests also what the test suite needs (PyMySQL, mysqlclient,
# pytest, Chromium); with --bench the benchmarks' tools (sysbench, HAProxy, wrk).
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
{ [ -x /usr/sbin/mariadbd ] || command -v mariadbd >/dev/null 2>&1; } || missing+=(mariadb-server)
command -v mariadb-install-db >/dev/null 2>&1 || missing+=(mariadb-server)
command -v mariadb >/dev/null 2>&1 || missing+=(mariadb-client)
if [ "${1:-}" = "--bench" ]; then
  for tool in sysbench haproxy wrk; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
fi
if [ "${1:-}" = "--tests" ]; then
  # The status-page test renders the page in headless Chromium; mysqlclient builds against
  # libmariadb.
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  # tests/http_h1.rs uses curl as a real HTTP/1.x client (chunked uploads, HTTP/1.0, 100-continue).
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  # tests/sysbench.rs runs sysbench's OLTP workloads through rwproxy.
  command -v sysbench >/dev/null 2>&1 || missing+=(sysbench)
  pkg-config --exists libmariadb 2>/dev/null || missing+=(libmariadb-dev pkg-config)
  # tests/clients.rs: Node's mysql2 reads JSON columns through rwproxy.
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

pip_install() {
  python3 -m pip install --quiet "$@" 2>/dev/null || python3 -m pip install --quiet --break-system-packages "$@"
}

if [ "${1:-}" = "--tests" ]; then
  # tests/mysql.rs: Oracle MySQL 9.7 (Debian sid's build) in a private prefix.
  bash "$(dirname "$0")/mysql-prefix.sh"
  npm_dir="$(dirname "$0")/../target/npm"
  if [ ! -d "$npm_dir/node_modules/mysql2" ]; then
    echo "installing: mysql2 (npm) into target/npm"
    mkdir -p "$npm_dir"
    npm install --silent --no-audit --no-fund --prefix "$npm_dir" mysql2@3 >/dev/null
  fi
  if ! python3 -c 'import pymysql, MySQLdb, pytest, mysql.connector, sqlalchemy' 2>/dev/null; then
    echo "installing: PyMySQL, mysqlclient, pytest, SQLAlchemy"
    # mysql-connector-python: a client library that takes several hosts (failover).
    # SQLAlchemy: an ORM whose default engine runs with autocommit off.
    pip_install pymysql mysqlclient pytest mysql-connector-python==26.10.0 sqlalchemy
    python3 -c 'import pymysql, MySQLdb, pytest, mysql.connector, sqlalchemy'
  fi
  # mysqlclient's own test suite ships only in its sdist: fetch the installed version's.
  suite="$(dirname "$0")/../target/mysqlclient-suite"
  if ! ls "$suite"/mysqlclient-*/tests/configdb.py >/dev/null 2>&1; then
    version=$(python3 -c 'import MySQLdb; print(".".join(map(str, MySQLdb.version_info[:3])))')
    echo "fetching the mysqlclient $version test suite"
    mkdir -p "$suite"
    python3 -m pip download --quiet --no-deps --no-binary :all: -d "$suite" "mysqlclient==$version"
    tar -xzf "$suite/mysqlclient-$version.tar.gz" -C "$suite"
  fi
fi
