#!/usr/bin/env bash
# Many idle SQL clients through rwproxy with multiplexing: 10,000 clients (mysql_async,
# examples/idle_clients.rs) each log
# in, run a read and a write, and stay connected. Prints rwproxy's resident set size before and
# after (per client), the connections each MariaDB server holds (Threads_connected), and how long
# a new client takes to log in and read while they sit there.
#
#   benches/sql-idle-clients.sh [clients, default 10000] [max_idle_connections, default 16]
#
# Installs MariaDB and sysbench (scripts/install-deps.sh --bench) when missing.
# Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${1:-10000}
MAX_IDLE=${2:-16}
ulimit -n "$(ulimit -Hn)"
source benches/sql-setup.sh
cargo build --release --quiet --example idle_clients

RWPORT=$(free_port)
rwproxy_config "$RWPORT" "$work/rwproxy.toml"
# The limits for many clients go into [mysql], which the cluster's config opens first.
sed -i "0,/^\[mysql\]$/s//[mysql]\nmax_client_connections = $((CLIENTS + 100))\nmax_connections_per_source = 0\nmax_idle_connections = $MAX_IDLE/" "$work/rwproxy.toml"
RUST_LOG=warn target/release/rwproxy --config "$work/rwproxy.toml" 2>"$work/rwproxy.log" &
RWPID=$!; pids+=($RWPID)
sleep 1
mariadb --no-defaults -h127.0.0.1 -P"$P" -uapp -papp appdb \
  -e "CREATE TABLE IF NOT EXISTS idle_bench (id INT AUTO_INCREMENT PRIMARY KEY, v INT)"

target/release/examples/idle_clients "$RWPID" "$RWPORT" "$CLIENTS" "$P" "$R1" "$R2"
