#!/usr/bin/env bash
# End-to-end comparison on one machine, in one run:
#   direct to the primary  |  HAProxy (TCP mode, round robin over the 3 servers)  |  rwproxy
# with sysbench oltp_point_select and oltp_read_only, then a 1 GiB result streamed through
# rwproxy. Prints QPS, p95 latency and proxy CPU microseconds per query (from /proc).
#
#   benches/sysbench.sh [seconds per run, default 10] [client threads, default 8]
#
# Installs sysbench, haproxy and MariaDB (scripts/install-deps.sh --bench) when missing. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
THREADS=${2:-8}
source benches/sql-setup.sh

RWPORT=$(free_port); HAPORT=$(free_port)
rwproxy_config "$RWPORT" "$work/rwproxy.toml"
RUST_BACKTRACE=1 RUST_LOG=warn target/release/rwproxy --config "$work/rwproxy.toml" 2>"$work/rwproxy.log" &
RWPID=$!; pids+=($RWPID)
haproxy_config "$HAPORT" "$work/haproxy.cfg"
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
HAPID=$!; pids+=($HAPID)
sleep 1

sb() { sysbench "$1" --mysql-host=127.0.0.1 --mysql-port="$2" --mysql-user=app --mysql-password=app \
  --mysql-db=appdb --tables=4 --table-size=10000 --threads="$THREADS" --time="$SECONDS_PER_RUN" \
  --report-interval=0 --percentile=95 --db-ps-mode=auto "${@:3}"; }
sb oltp_read_only "$P" prepare >/dev/null
wait_replicas


printf '\n%-18s %-11s %10s %10s %16s\n' test target QPS "p95 ms" "proxy CPU µs/q"
run() { # test, target name, port, pid (or -)
  local before=0 after=0 out qps p95 queries cpu
  [ "$4" != - ] && before=$(cpu_ticks "$4")
  out=$(sb "$1" "$3" run "${@:5}")
  [ "$4" != - ] && after=$(cpu_ticks "$4")
  qps=$(echo "$out" | awk '/queries:/ { gsub(/\(/, "", $3); print $3 }')
  queries=$(echo "$out" | awk '/queries:/ { print $2 }')
  p95=$(echo "$out" | awk '/95th percentile:/ { print $3 }')
  if [ "$4" != - ]; then cpu=$(awk -v d=$((after - before)) -v t="$TICK" -v q="$queries" 'BEGIN { printf "%.1f", d * 1e6 / t / q }'); else cpu=-; fi
  printf '%-18s %-11s %10s %10s %16s\n' "$1${5:+ $5}" "$2" "$qps" "$p95" "$cpu"
}
for t in oltp_point_select oltp_read_only; do
  run "$t" direct "$P" -
  run "$t" haproxy "$HAPORT" "$HAPID"
  run "$t" rwproxy "$RWPORT" "$RWPID"
done
# Without BEGIN/COMMIT the read-only mix is spread over the replicas by rwproxy.
run oltp_read_only rwproxy "$RWPORT" "$RWPID" --skip-trx=on

echo
echo "1 GiB result through rwproxy (1,048,576 rows of 1 KiB, mariadb --quick):"
rss_before=$(awk '/VmRSS/ { print $2 }' "/proc/$RWPID/status")
start=$(date +%s.%N)
mariadb --no-defaults --quick -h127.0.0.1 -P"$RWPORT" -uapp -papp -N appdb \
  -e "SELECT REPEAT('x', 1020) FROM seq_1_to_1048576" | wc -c >"$work/bytes"
end=$(date +%s.%N)
peak=$(awk '/VmHWM/ { print $2 }' "/proc/$RWPID/status")
rss_after=$(awk '/VmRSS/ { print $2 }' "/proc/$RWPID/status")
awk -v b="$(cat "$work/bytes")" -v s="$start" -v e="$end" -v r0="$rss_before" -v r1="$rss_after" -v pk="$peak" 'BEGIN {
  printf "  %.0f MiB received in %.1f s; proxy RSS %.1f MiB before, %.1f MiB after, peak %.1f MiB\n", b/1048576, e-s, r0/1024, r1/1024, pk/1024 }'
