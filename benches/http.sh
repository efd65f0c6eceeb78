#!/usr/bin/env bash
# HTTP balancing on one machine, in one run: wrk against (a) one web server directly,
# (b) rwproxy's balancer over two web servers, (c) HAProxy in HTTP mode over the same two,
# with keep-alive. Prints requests/s and p99 latency side by side.
#
#   benches/http.sh [seconds per run, default 10] [connections, default 64]
#
# Installs wrk and haproxy (scripts/install-deps.sh --bench) when missing. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
CONNECTIONS=${2:-64}
bash scripts/install-deps.sh --bench
cargo build --release --quiet --bin rwproxy --example web

source benches/http-setup.sh
RW1=$(free_port)
RUST_LOG=warn target/release/rwproxy --config "$work/rwproxy.toml" 2>"$work/rwproxy.log" & pids+=($!)
# The same with one worker thread (worker_threads = 1).
{ echo "worker_threads = 1"; sed "s/127.0.0.1:$RW/127.0.0.1:$RW1/" "$work/rwproxy.toml"; } >"$work/rwproxy1.toml"
RUST_LOG=warn target/release/rwproxy --config "$work/rwproxy1.toml" 2>"$work/rwproxy1.log" & pids+=($!)
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 & pids+=($!)
sleep 1

printf '\n%-10s %12s %10s\n' target "requests/s" "p99 ms"
run() {
  local out rps p99
  out=$(wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency "http://127.0.0.1:$2/")
  rps=$(echo "$out" | awk '/Requests\/sec/ { print $2 }')
  p99=$(echo "$out" | awk '$1 == "99%" { v = $2; if (v ~ /us$/) { sub(/us/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms/, "", v) } else if (v ~ /s$/) { sub(/s/, "", v); v *= 1000 } printf "%.2f", v }')
  printf '%-10s %12s %10s\n' "$1" "$rps" "$p99"
}
run direct "$W1"
# Two rounds, interleaved: run-to-run noise on a shared 2-core machine is large.
for _ in 1 2; do
  run rwproxy "$RW"
  run rwproxy-1t "$RW1"
  run haproxy "$HA"
done
