#!/usr/bin/env bash
# Memory an idle keep-alive client connection costs each proxy: 3,000 connections each send one
# request and stay open; the proxy's resident set size before and after, per connection.
# rwproxy's balancer and HAProxy 2.6 over the same two web servers.
#
#   benches/http-idle-memory.sh [connections, default 3000]
#
# Needs haproxy (scripts/install-deps.sh --bench) and python3. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNECTIONS=${1:-3000}
ulimit -n 20000

source benches/http-setup.sh
start_proxies

cat >"$work/idle.py" <<'PY'
import socket, sys, time
name, pid, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
def one():
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
    assert s.recv(4096).startswith(b"HTTP/1.1 200"), name
    return s
warm = [one() for _ in range(50)]  # pools and buffers of a running proxy first
before = rss_kib()
idle = [one() for _ in range(count)]
time.sleep(0.5)
after = rss_kib()
print(f"{name:<9} {(after - before) / count:8.1f} KiB per idle connection (RSS {before} -> {after} KiB)")
PY
printf '\n%s idle keep-alive client connections\n' "$CONNECTIONS"
python3 "$work/idle.py" rwproxy "$RWPID" "$RW" "$CONNECTIONS"
python3 "$work/idle.py" haproxy "$HAPID" "$HA" "$CONNECTIONS"
