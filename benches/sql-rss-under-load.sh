#!/usr/bin/env bash
# rwproxy's resident set size under sustained load, with and without a Prometheus scraper:
# sysbench oltp_point_select through rwproxy for SECONDS, RSS sampled every 30 s; in the
# "scraped" run /metrics is fetched every 10 s. After the first minute (pools, buffers and the
# metrics registry are warm) RSS must stay flat: the recorder's histograms are drained by
# rwproxy's own upkeep task every 5 s, scraped or not.
#
#   benches/sql-rss-under-load.sh [seconds per run, default 600] [client threads, default 8]
#
# Installs sysbench and MariaDB (scripts/install-deps.sh --bench) when missing. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-600}
THREADS=${2:-8}
source benches/sql-setup.sh

sb() { point_select "$1" "$THREADS" "$2" "${@:3}"; }
sb "$P" 1 prepare >/dev/null
wait_replicas

rss() { awk '/VmRSS/ { print $2 }' "/proc/$1/status"; }
one_run() { # scraped: yes|no
  local port admin pid samples=() scraper=
  port=$(free_port); admin=$(free_port)
  rwproxy_config "$port" "$work/rwproxy-$1.toml"
  sed -i "0,/^listen = \"127.0.0.1:[0-9]*\"$/s//listen = \"127.0.0.1:$admin\"/" "$work/rwproxy-$1.toml"
  RUST_LOG=warn target/release/rwproxy --config "$work/rwproxy-$1.toml" 2>"$work/rwproxy-$1.log" &
  pid=$!; pids+=($pid)
  sleep 1
  if [ "$1" = yes ]; then
    ( for _ in $(seq 1 $((SECONDS_PER_RUN / 10 + 2))); do
        curl -s "http://127.0.0.1:$admin/metrics" >/dev/null || true; sleep 10; done ) &
    scraper=$!; pids+=($scraper)
  fi
  sb "$port" "$SECONDS_PER_RUN" run >"$work/sysbench-$1.out" &
  local load=$!
  for _ in $(seq 1 $((SECONDS_PER_RUN / 30))); do
    sleep 30; samples+=("$(rss "$pid")")
  done
  wait "$load"
  [ -n "$scraper" ] && kill "$scraper" 2>/dev/null || true
  kill "$pid"
  local qps
  qps=$(awk '/queries:/ { gsub(/\(/, "", $3); print $3 }' "$work/sysbench-$1.out")
  printf 'scraper %-3s  %s QPS  RSS every 30 s (KiB): %s\n' "$1" "$qps" "${samples[*]}"
  printf '%s\n' "${samples[@]:2}" | sort -n | awk -v s="$1" 'NR == 1 { lo = $1 } { hi = $1 }
    END { printf "scraper %-3s  after the first minute: min %d KiB, max %d KiB, spread %.2f MiB\n", s, lo, hi, (hi - lo) / 1024 }'
}
printf 'oltp_point_select through rwproxy, %s threads, %s s per run\n' "$THREADS" "$SECONDS_PER_RUN"
one_run no
one_run yes
