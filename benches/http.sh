#!/usr/bin/env bash
# HTTP balancing on one machine, in one run: wrk against (a) one web server directly,
# (b) rwproxy's balancer over two web servers, (c) HAProxy in HTTP mode over the same two,
# with keep-alive. Rounds alternate rwproxy and HAProxy (which goes first alternates too), because
# run-to-run noise on a shared 2-core machine is larger than the difference being measured; the
# table gives every round and the medians. Besides requests/s and p99 latency it gives each
# proxy's own CPU time per request (user + system, from /proc), which the noise of the other
# processes on the machine affects much less.
#
#   benches/http.sh [seconds per run, default 10] [connections, default 64] [rounds, default 5]
#
# Installs wrk and haproxy (scripts/install-deps.sh --bench) when missing. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
CONNECTIONS=${2:-64}
ROUNDS=${3:-5}

source benches/http-setup.sh
start_proxies

# CPU ticks (user, system) a process has used.
ticks() { awk '{ print $14, $15 }' "/proc/$1/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))

printf '\n%-8s %-10s %12s %10s %14s %14s\n' round target "requests/s" "p99 ms" "user us/req" "system us/req"
# run ROUND NAME PORT [PID]: one wrk run; appends "rps p99" to $work/NAME.
run() {
  local out rps p99 n before after cpu=("-" "-")
  [ -n "${4:-}" ] && before=$(ticks "$4")
  out=$(wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency "http://127.0.0.1:$3/")
  rps=$(echo "$out" | awk '/Requests\/sec/ { print $2 }')
  n=$(echo "$out" | awk '/requests in/ { print $1 }')
  p99=$(echo "$out" | awk '$1 == "99%" { v = $2; if (v ~ /us$/) { sub(/us/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms/, "", v) } else if (v ~ /s$/) { sub(/s/, "", v); v *= 1000 } printf "%.2f", v }')
  if [ -n "${4:-}" ]; then
    after=$(ticks "$4")
    read -r u0 s0 <<<"$before"
    read -r u1 s1 <<<"$after"
    cpu=("$(( (u1 - u0) * TICK_US / n ))" "$(( (s1 - s0) * TICK_US / n ))")
  fi
  printf '%-8s %-10s %12s %10s %14s %14s\n' "$1" "$2" "$rps" "$p99" "${cpu[0]}" "${cpu[1]}"
  echo "$rps $p99" >>"$work/$2"
}
run - direct "$W1"
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then
    run "$round" rwproxy "$RW" "$RWPID"
    run "$round" haproxy "$HA" "$HAPID"
  else
    run "$round" haproxy "$HA" "$HAPID"
    run "$round" rwproxy "$RW" "$RWPID"
  fi
done
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
printf '\nmedian over %s rounds (%s s each, wrk -t2 -c%s):\n' "$ROUNDS" "$SECONDS_PER_RUN" "$CONNECTIONS"
for target in rwproxy haproxy; do
  printf '%-10s %12s req/s %8s ms p99\n' "$target" \
    "$(awk '{ print $1 }' "$work/$target" | median)" "$(awk '{ print $2 }' "$work/$target" | median)"
done
