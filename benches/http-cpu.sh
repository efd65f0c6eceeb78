#!/usr/bin/env bash
# CPU time each proxy spends per proxied request under load, split into user space and kernel,
# sampled by perf (cpu-clock at 2 kHz, on the proxy's threads only) while wrk drives it:
# rwproxy's balancer and HAProxy 2.6 (HTTP mode) over the same two web servers, rounds
# interleaved. On a 2-core machine shared with wrk and the web servers, requests/s swing by 20 %
# from run to run; what each proxy costs per request is the steadier measure.
#
#   benches/http-cpu.sh [rounds, default 3] [connections, default 64]
#
# Needs perf (linux-perf), wrk and haproxy (scripts/install-deps.sh --bench). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
CONNECTIONS=${2:-64}
command -v perf >/dev/null || { apt-get install -y linux-perf >/dev/null; }

source benches/http-setup.sh
start_proxies

printf '\n%-6s %-9s %11s %14s %14s %14s\n' round target requests/s "user us/req" "kernel us/req" "total us/req"
# sample ROUND NAME PORT PID: wrk for 6 s, perf on PID for the 4 s in the middle.
sample() {
  wrk -t2 -c"$CONNECTIONS" -d6s "http://127.0.0.1:$3/" >"$work/wrk" &
  local wrk_pid=$!
  sleep 1
  perf record -q -e cpu-clock -F 2000 -p "$4" -o "$work/perf.data" -- sleep 4 >/dev/null 2>&1
  wait "$wrk_pid"
  local rps
  rps=$(awk '/Requests\/sec/ { print $2 }' "$work/wrk")
  # Samples per privilege level: [k] kernel, anything else user space; 2 kHz = 500 us each.
  perf report -i "$work/perf.data" --no-children --sort sym 2>/dev/null | awk -v rps="$rps" -v r="$1" -v n="$2" '
    /^# Samples/ { s = $3; if (s ~ /K$/) { sub(/K/, "", s); s *= 1000 } }
    /^ +[0-9.]+%/ { p = $1; sub(/%/, "", p); if ($2 == "[k]") k += p; else u += p }
    END {
      per = s * 500 / (rps * 4) / 100
      printf "%-6s %-9s %11.0f %14.1f %14.1f %14.1f\n", r, n, rps, u * per, k * per, (u + k) * per
    }'
}
for round in $(seq 1 "$ROUNDS"); do
  sample "$round" rwproxy "$RW" "$RWPID"
  sample "$round" haproxy "$HA" "$HAPID"
done
