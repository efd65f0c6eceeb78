#!/usr/bin/env bash
# Does rwproxy's SQL throughput grow with its worker threads? sysbench oltp_point_select through
# rwproxy with `mysql.threads` = 1, 2, 4, … up to the machine's cores (or the counts given), one
# rwproxy process per count, run in interleaved rounds of the same length. Prints each run's QPS,
# the proxy's CPU per query and the cores it kept busy (CPU time / wall time), then the medians
# per thread count. rwproxy runs with its defaults otherwise (multiplexing on,
# consistency = "session").
#
#   benches/sql-scaling.sh [rounds, default 3] [seconds per run, default 8]
#                          [client threads, default 16] [thread counts, default "1 2 4 … nproc"]
#
# On a machine where the servers and sysbench share the proxy's cores, the proxy cannot grow
# past what they leave it: read the "cores" column with the machine's size in mind.
# Installs sysbench and MariaDB (scripts/install-deps.sh --bench) when missing. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECONDS_PER_RUN=${2:-8}
CLIENTS=${3:-16}
CORES=$(nproc)
if [ -n "${4:-}" ]; then
  COUNTS=$4
else
  COUNTS=1; n=2
  while [ "$n" -le "$CORES" ]; do COUNTS="$COUNTS $n"; n=$((n * 2)); done
  case " $COUNTS " in *" $CORES "*) ;; *) COUNTS="$COUNTS $CORES" ;; esac
fi
source benches/sql-setup.sh

declare -A port_of_count pid_of_count
for t in $COUNTS; do
  port=$(free_port)
  rwproxy_config "$port" "$work/rwproxy-$t.toml"
  # A second proxy needs its own admin port: the admin listener is dropped from these copies.
  awk '/^\[/ { section = $0 } section != "[admin]" { print }' "$work/rwproxy-$t.toml" >"$work/rw-$t.toml"
  sed -i "0,/^\[mysql\]$/s//[mysql]\nthreads = $t/" "$work/rw-$t.toml"
  RUST_LOG=warn target/release/rwproxy --config "$work/rw-$t.toml" 2>"$work/rwproxy-$t.log" &
  pid_of_count[$t]=$!; pids+=($!)
  port_of_count[$t]=$port
done
sleep 1

sb() { point_select "$1" "$CLIENTS" "$SECONDS_PER_RUN" "${@:2}"; }
sb "$P" prepare >/dev/null
wait_replicas
for t in $COUNTS; do sb "${port_of_count[$t]}" run >/dev/null; done # warm every proxy

measure() { # port pid -> "qps cpu_us_per_query cores"
  local before after out qps queries
  before=$(cpu_ticks "$2")
  out=$(sb "$1" run)
  after=$(cpu_ticks "$2")
  qps=$(echo "$out" | awk '/queries:/ { gsub(/\(/, "", $3); print $3 }')
  queries=$(echo "$out" | awk '/queries:/ { print $2 }')
  awk -v q="$qps" -v n="$queries" -v d=$((after - before)) -v t="$TICK" -v s="$SECONDS_PER_RUN" \
    'BEGIN { printf "%.0f %.2f %.2f\n", q, d * 1e6 / t / n, d / t / s }'
}
printf '\noltp_point_select, %s client threads, %s s per run, %s cores on this machine\n' "$CLIENTS" "$SECONDS_PER_RUN" "$CORES"
printf '%-6s %8s %10s %10s %8s\n' round threads QPS "µs/query" cores
: >"$work/runs"
for r in $(seq 1 "$ROUNDS"); do
  for t in $COUNTS; do
    read -r q c k <<<"$(measure "${port_of_count[$t]}" "${pid_of_count[$t]}")"
    printf '%-6s %8s %10s %10s %8s\n' "$r" "$t" "$q" "$c" "$k"
    echo "$t $q $c $k" >>"$work/runs"
  done
done
median() { sort -n | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
printf '%-6s %8s %10s %10s %8s\n' median threads QPS "µs/query" cores
for t in $COUNTS; do
  q=$(awk -v t="$t" '$1 == t { print $2 }' "$work/runs" | median)
  c=$(awk -v t="$t" '$1 == t { print $3 }' "$work/runs" | median)
  k=$(awk -v t="$t" '$1 == t { print $4 }' "$work/runs" | median)
  printf '%-6s %8s %10s %10s %8s\n' "" "$t" "$q" "$c" "$k"
done
