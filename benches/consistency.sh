#!/usr/bin/env bash
# What read consistency costs, same run, four rwproxy processes in front of one cluster that
# differ only in [mysql.routing] consistency = "eventual" | "session" | "user" | "global":
#   1. oltp_point_select (no writes): interleaved rounds, eventual vs session vs user, QPS and
#      proxy CPU microseconds per query (from /proc), medians;
#   2. oltp_read_write (a write-heavy mix) once per mode: QPS, and the share of row reads that the
#      replicas served (Com_select + Com_stmt_execute deltas on each server).
#
#   benches/consistency.sh [rounds, default 4] [seconds per run, default 8] [client threads, default 8]
#   START_ORDER="session eventual user global" benches/consistency.sh   # start the processes in another order
#
# Installs sysbench and MariaDB (scripts/install-deps.sh --bench) when missing. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-4}
SECONDS_PER_RUN=${2:-8}
THREADS=${3:-8}
source benches/sql-setup.sh

declare -A PORT PID
for mode in ${START_ORDER:-eventual session user global}; do
  PORT[$mode]=$(free_port)
  rwproxy_config "${PORT[$mode]}" "$work/$mode.toml" "$(printf '[mysql.routing]\nconsistency = "%s"' "$mode")"
  RUST_LOG=warn target/release/rwproxy --config "$work/$mode.toml" 2>"$work/$mode.log" &
  PID[$mode]=$!; pids+=($!)
done
sleep 1

sb() { sysbench "$1" --mysql-host=127.0.0.1 --mysql-port="$2" --mysql-user=app --mysql-password=app \
  --mysql-db=appdb --tables=4 --table-size=10000 --threads="$THREADS" --time="$SECONDS_PER_RUN" \
  --report-interval=0 --db-ps-mode=auto "${@:3}"; }
sb oltp_read_write "$P" prepare >/dev/null
wait_replicas

reads_on() { mariadb --no-defaults -h127.0.0.1 -P"$1" -uapp -papp -N -e \
  "SHOW GLOBAL STATUS WHERE Variable_name IN ('Com_select', 'Com_stmt_execute')" | awk '{ s += $2 } END { print s }'; }

# One run: prints "qps cpu_us_per_query".
measure() { # test, mode, extra sysbench options
  local before after out qps queries
  before=$(cpu_ticks "${PID[$2]}")
  out=$(sb "$1" "${PORT[$2]}" run "${@:3}")
  after=$(cpu_ticks "${PID[$2]}")
  qps=$(echo "$out" | awk '/queries:/ { gsub(/\(/, "", $3); print $3 }')
  queries=$(echo "$out" | awk '/queries:/ { print $2 }')
  awk -v q="$qps" -v d=$((after - before)) -v t="$TICK" -v n="$queries" 'BEGIN { printf "%s %.1f\n", q, d * 1e6 / t / n }'
}
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo
echo "oltp_point_select, $ROUNDS interleaved rounds of ${SECONDS_PER_RUN}s, $THREADS threads (who goes first alternates)"
printf '%-6s %-9s %10s %14s\n' round mode QPS "CPU µs/q"
: >"$work/eventual.runs"; : >"$work/session.runs"; : >"$work/user.runs"
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then order="eventual session user"; else order="user session eventual"; fi
  for mode in $order; do
    read -r qps cpu < <(measure oltp_point_select "$mode")
    echo "$qps $cpu" >>"$work/$mode.runs"
    printf '%-6s %-9s %10s %14s\n' "$round" "$mode" "$qps" "$cpu"
  done
done
for mode in eventual session user; do
  printf 'median %-9s %10s %14s\n' "$mode" "$(awk '{ print $1 }' "$work/$mode.runs" | median)" \
    "$(awk '{ print $2 }' "$work/$mode.runs" | median)"
done

echo
echo "oltp_read_write, ${SECONDS_PER_RUN}s, $THREADS threads: in BEGIN/COMMIT (sysbench's default), and as"
echo "autocommit statements (--skip-trx=on: every read follows the session's writes)"
printf '%-24s %-9s %10s %14s %18s\n' test mode QPS "CPU µs/q" "reads on replicas"
# Without transactions two threads may delete and re-insert the same row: sysbench must
# skip those duplicate-key errors (1062) rather than stop.
for variant in "" "--skip-trx=on --mysql-ignore-errors=1062"; do
  for mode in eventual session user global; do
    b0=$(reads_on "$P"); b1=$(reads_on "$R1"); b2=$(reads_on "$R2")
    # shellcheck disable=SC2086
    read -r qps cpu < <(measure oltp_read_write "$mode" $variant)
    a0=$(reads_on "$P"); a1=$(reads_on "$R1"); a2=$(reads_on "$R2")
    share=$(awk -v p=$((a0 - b0)) -v r=$((a1 - b1 + a2 - b2)) 'BEGIN { printf "%.1f %%", r * 100 / (p + r) }')
    printf '%-24s %-9s %10s %14s %18s\n' "oltp_read_write $variant" "$mode" "$qps" "$cpu" "$share"
  done
done
