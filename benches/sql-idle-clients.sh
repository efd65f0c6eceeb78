#!/usr/bin/env bash
# Many idle SQL clients through rwproxy with multiplexing: 10,000 clients (PyMySQL) each log
# in, run a read and a write, and stay connected. Prints rwproxy's resident set size before and
# after (per client), the connections each MariaDB server holds (Threads_connected), and how long
# a new client takes to log in and read while they sit there.
#
#   benches/sql-idle-clients.sh [clients, default 10000] [max_idle_connections, default 16]
#
# Installs MariaDB, sysbench and PyMySQL (scripts/install-deps.sh --bench --tests) when missing.
# Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${1:-10000}
MAX_IDLE=${2:-16}
ulimit -n "$(ulimit -Hn)"
bash scripts/install-deps.sh --tests >/dev/null
source benches/sql-setup.sh

RWPORT=$(free_port)
rwproxy_config "$RWPORT" "$work/rwproxy.toml"
# The limits for many clients go into [mysql], which the cluster's config opens first.
sed -i "0,/^\[mysql\]$/s//[mysql]\nmax_client_connections = $((CLIENTS + 100))\nmax_idle_connections = $MAX_IDLE/" "$work/rwproxy.toml"
RUST_LOG=warn target/release/rwproxy --config "$work/rwproxy.toml" 2>"$work/rwproxy.log" &
RWPID=$!; pids+=($RWPID)
sleep 1
mariadb --no-defaults -h127.0.0.1 -P"$P" -uapp -papp appdb \
  -e "CREATE TABLE IF NOT EXISTS idle_bench (id INT AUTO_INCREMENT PRIMARY KEY, v INT)"

cat >"$work/idle.py" <<'PY'
import sys, time, subprocess
import pymysql
pid, port, count = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
servers = [int(p) for p in sys.argv[4:]]
def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
def threads(port):
    c = pymysql.connect(host="127.0.0.1", port=port, user="app", password="app", database="appdb")
    with c.cursor() as cur:
        cur.execute("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
        n = int(cur.fetchone()[1])
    c.close()
    return n - 1  # this connection
def client(i):
    c = pymysql.connect(host="127.0.0.1", port=port, user="app", password="app", database="appdb", autocommit=True)
    with c.cursor() as cur:
        cur.execute("INSERT INTO idle_bench (v) VALUES (%s)", (i,))
        cur.execute("SELECT @@server_id")
        cur.fetchone()
    return c
warm = [client(i) for i in range(50)]
before_threads = [threads(p) for p in servers]
before = rss_kib()
started = time.time()
idle = [client(i) for i in range(count)]
took = time.time() - started
time.sleep(1)
after = rss_kib()
after_threads = [threads(p) for p in servers]
lat = []
for _ in range(20):
    t = time.time()
    c = client(0)
    lat.append((time.time() - t) * 1000)
    c.close()
lat.sort()
print(f"{count} idle clients logged in in {took:.1f} s")
print(f"rwproxy RSS {before} -> {after} KiB: {(after - before) / count:.1f} KiB per idle client, {after / 1024:.0f} MiB in all")
print("backend connections (Threads_connected, primary replica1 replica2): "
      f"before {before_threads}, with the idle clients {after_threads}")
print(f"a new client's login + write + read: median {lat[len(lat)//2]:.1f} ms, max {lat[-1]:.1f} ms")
PY
python3 "$work/idle.py" "$RWPID" "$RWPORT" "$CLIENTS" "$P" "$R1" "$R2"
