#!/usr/bin/env bash
# User-space instructions per proxied HTTP request, counted by callgrind: repeatable to < 1 %
# whatever else the machine does, unlike requests/s on a shared machine. Measures rwproxy's
# balancer and HAProxy 2.6 (HTTP mode) over the same two web servers: 300 warm-up requests,
# then counters zeroed, then 2,000 GETs on one keep-alive connection.
#
#   benches/http-instructions.sh
#
# Needs valgrind, haproxy (scripts/install-deps.sh --bench) and python3. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { apt-get install -y valgrind >/dev/null; }

source benches/http-setup.sh
cat >"$work/client.py" <<'PY'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
for _ in range(int(sys.argv[2])):
    c.request("GET", "/")
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY

# measure NAME PORT COMMAND...: prints instructions per request.
measure() {
  local name=$1 port=$2; shift 2
  RUST_LOG=error valgrind --tool=callgrind --callgrind-out-file="$work/cg.$name" "$@" 2>"$work/vg.$name.log" &
  local vpid=$!
  for _ in $(seq 1 120); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null && break
    sleep 0.5
  done
  python3 "$work/client.py" "$port" 300
  callgrind_control -z "$vpid" >/dev/null 2>&1
  python3 "$work/client.py" "$port" 2000
  callgrind_control -d "$vpid" >/dev/null 2>&1
  sleep 1
  local total
  total=$(grep -h '^totals:' "$work"/cg."$name".* | awk '{print $2}' | sort -n | tail -1)
  printf '%-10s %12d\n' "$name" $((total / 2000))
  kill -TERM "$vpid" 2>/dev/null || true
  wait "$vpid" 2>/dev/null || true
}
printf '\n%-10s %12s\n' target "instr/request"
measure rwproxy "$RW" target/release/rwproxy --config "$work/rwproxy.toml"
measure haproxy "$HA" haproxy -f "$work/haproxy.cfg" -db
