#!/usr/bin/env bash
# rwproxy against HAProxy 2.6 in TCP mode (round robin over the same three servers) on sysbench
# oltp_point_select, in interleaved rounds: each round runs HAProxy then rwproxy for the same
# time. Prints each round's QPS and proxy CPU microseconds per query (user + system, and user
# alone, from /proc),
# then the medians and rwproxy's ratios to HAProxy. rwproxy runs with its defaults (multiplexing
# on, consistency = "session").
#
#   benches/sql-vs-haproxy.sh [rounds, default 6] [seconds per run, default 8] [client threads,
#                             default 8] [rwproxy SQL worker threads (mysql.threads), default
#                             0 = one per core]
#
# RWPROXY_MYSQL adds lines to rwproxy's [mysql] section (RWPROXY_MYSQL="multiplexing = false").
# With RELAY_FLOOR=1 the byte relay (examples/byte_relay.rs: copies bytes, nothing else) runs
# in rwproxy's place: the floor any TCP proxy pays here, mostly the kernel's work.
#
# Installs sysbench, haproxy and MariaDB (scripts/install-deps.sh --bench) when missing. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-6}
SECONDS_PER_RUN=${2:-8}
THREADS=${3:-8}
WORKERS=${4:-0}
source benches/sql-setup.sh

RWPORT=$(free_port); HAPORT=$(free_port)
rwproxy_config "$RWPORT" "$work/rwproxy.toml"
sed -i "0,/^\[mysql\]$/s//[mysql]\nthreads = $WORKERS\n${RWPROXY_MYSQL:-}/" "$work/rwproxy.toml"
NAME=rwproxy
if [ "${RELAY_FLOOR:-0}" = 1 ]; then
  NAME="byte relay"
  cargo build --release --quiet --example byte_relay
  target/release/examples/byte_relay "127.0.0.1:$RWPORT" "127.0.0.1:$P" "127.0.0.1:$R1" "127.0.0.1:$R2" \
    2>"$work/rwproxy.log" &
else
  RUST_LOG=warn target/release/rwproxy --config "$work/rwproxy.toml" 2>"$work/rwproxy.log" &
fi
RWPID=$!; pids+=($RWPID)
haproxy_config "$HAPORT" "$work/haproxy.cfg"
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
HAPID=$!; pids+=($HAPID)
sleep 1

sb() { point_select "$1" "$THREADS" "$SECONDS_PER_RUN" "${@:2}"; }
sb "$P" prepare >/dev/null
wait_replicas
sb "$RWPORT" run >/dev/null   # warm both
sb "$HAPORT" run >/dev/null

measure() { # port pid -> "qps cpu_us_per_query user_us_per_query"
  local before after ubefore uafter out qps queries
  before=$(cpu_ticks "$2"); ubefore=$(user_ticks "$2")
  out=$(sb "$1" run)
  after=$(cpu_ticks "$2"); uafter=$(user_ticks "$2")
  qps=$(echo "$out" | awk '/queries:/ { gsub(/\(/, "", $3); print $3 }')
  queries=$(echo "$out" | awk '/queries:/ { print $2 }')
  awk -v q="$qps" -v n="$queries" -v d=$((after - before)) -v u=$((uafter - ubefore)) -v t="$TICK" \
    'BEGIN { printf "%.0f %.2f %.2f\n", q, d * 1e6 / t / n, u * 1e6 / t / n }'
}
printf '\noltp_point_select, %s threads, %s s per run, rwproxy mysql.threads = %s\n' "$THREADS" "$SECONDS_PER_RUN" "$WORKERS"
printf '%-6s %12s %14s %12s %14s %18s\n' round "HAProxy QPS" "HAProxy µs/q" "$NAME QPS" "$NAME µs/q" "user µs/q HA / rw"
: >"$work/rounds"
for r in $(seq 1 "$ROUNDS"); do
  read -r hq hc hu <<<"$(measure "$HAPORT" "$HAPID")"
  read -r rq rc ru <<<"$(measure "$RWPORT" "$RWPID")"
  printf '%-6s %12s %14s %12s %14s %18s\n' "$r" "$hq" "$hc" "$rq" "$rc" "$hu / $ru"
  echo "$hq $hc $rq $rc $hu $ru" >>"$work/rounds"
done
median() { sort -n | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
HQ=$(awk '{ print $1 }' "$work/rounds" | median); HC=$(awk '{ print $2 }' "$work/rounds" | median)
RQ=$(awk '{ print $3 }' "$work/rounds" | median); RC=$(awk '{ print $4 }' "$work/rounds" | median)
HU=$(awk '{ print $5 }' "$work/rounds" | median); RU=$(awk '{ print $6 }' "$work/rounds" | median)
printf '%-6s %12s %14s %12s %14s %18s\n' median "$HQ" "$HC" "$RQ" "$RC" "$HU / $RU"
awk -v name="$NAME" -v hq="$HQ" -v hc="$HC" -v rq="$RQ" -v rc="$RC" 'BEGIN {
  printf "%s / HAProxy: QPS %.2f x, CPU per query %.2f x\n", name, rq / hq, rc / hc }'
