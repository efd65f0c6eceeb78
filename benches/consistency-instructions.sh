#!/usr/bin/env bash
# User-space instructions per query, counted by callgrind (repeatable where QPS on a shared
# machine is not): rwproxy with consistency = "eventual" and = "session", on the same cluster,
#   reads:  2,000 point selects on one connection (no writes: what session consistency costs a
#           read-only workload),
#   pairs:  1,000 INSERT-then-SELECT pairs (each read must see the write before it; the stale
#           reads are counted).
# Each after 300 warm-up statements, counters zeroed. The monitor runs as in production.
#
#   benches/consistency-instructions.sh
#
# Needs valgrind, sysbench and MariaDB (scripts/install-deps.sh --bench) and PyMySQL. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { apt-get install -y valgrind >/dev/null; }
source benches/sql-setup.sh

mariadb --no-defaults -h127.0.0.1 -P"$P" -uapp -papp appdb -e \
  "CREATE TABLE IF NOT EXISTS ci_t (id INT AUTO_INCREMENT PRIMARY KEY, v INT); INSERT INTO ci_t (v) SELECT seq FROM seq_1_to_1000"
wait_replicas
cat >"$work/client.py" <<'PY'
import sys, pymysql
port, workload, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
c = pymysql.connect(host="127.0.0.1", port=port, user="app", password="app", database="appdb",
                    autocommit=True, ssl_disabled=True)
cur = c.cursor()
stale = 0
for i in range(n):
    if workload == "pairs":
        cur.execute("INSERT INTO ci_t (v) VALUES (%s)", (i,))
        cur.execute("SELECT v FROM ci_t WHERE id = %s", (cur.lastrowid,))
        stale += cur.fetchone() != (i,)
    else:
        cur.execute("SELECT v FROM ci_t WHERE id = %s", (i % 1000 + 1,))
        cur.fetchone()
print(stale)
PY

# measure MODE WORKLOAD N: prints instructions per statement.
measure() {
  local mode=$1 workload=$2 n=$3 port
  port=$(free_port)
  rwproxy_config "$port" "$work/$mode.toml" "$(printf '[mysql.routing]\nconsistency = "%s"' "$mode")"
  RUST_LOG=error valgrind --tool=callgrind --callgrind-out-file="$work/cg.$mode.$workload" \
    target/release/rwproxy --config "$work/$mode.toml" 2>"$work/vg.$mode.log" &
  local vpid=$!
  pids+=("$vpid")
  for _ in $(seq 1 120); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null && break
    sleep 0.5
  done
  sleep 2  # the monitor's first checks: backends up, positions known
  python3 "$work/client.py" "$port" "$workload" 300 >/dev/null
  callgrind_control -z "$vpid" >/dev/null 2>&1
  local stale
  stale=$(python3 "$work/client.py" "$port" "$workload" "$n")
  callgrind_control -d "$vpid" >/dev/null 2>&1
  sleep 1
  local total statements
  total=$(grep -h '^totals:' "$work"/cg."$mode.$workload".* | awk '{print $2}' | sort -n | tail -1)
  statements=$n; [ "$workload" = pairs ] && statements=$((2 * n))
  printf '%-9s %-6s %16d %12s\n' "$mode" "$workload" $((total / statements)) "$stale"
  kill -TERM "$vpid" 2>/dev/null || true
  wait "$vpid" 2>/dev/null || true
  rm -f "$work"/cg."$mode.$workload".*
}
printf '\n%-9s %-6s %16s %12s\n' mode load "instr/statement" "stale reads"
for workload in reads pairs; do
  n=2000; [ "$workload" = pairs ] && n=1000
  measure eventual "$workload" "$n"
  measure session "$workload" "$n"
done
