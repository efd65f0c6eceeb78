#!/usr/bin/env bash
# What one query costs each proxy, counted rather than timed (repeatable on a shared machine):
# user-space instructions per statement under callgrind, and system calls per statement under
# strace -c, for HAProxy 2.6 in TCP mode (round robin over the three servers) and rwproxy with
# its defaults (multiplexing on, consistency = "session", one SQL worker per core). The load is
# 2,000 point selects on one connection (PyMySQL, text protocol), after 300 warm-up ones.
#
#   benches/sql-instructions.sh [statements, default 2000]
#
# With PREPARED=1 the load is sysbench's oltp_point_select on one thread instead (prepared
# statements: COM_STMT_EXECUTE, binary protocol), N executions after 300 warm-up ones.
#
# rwproxy's line also gives its SQL worker threads alone: the repeatable part (the monitor's
# share depends on how long the run took).
# With KEEP_PROFILE=DIR set, the callgrind profiles are copied to DIR (callgrind_annotate reads
# them: where the instructions go).
#
# Needs valgrind, strace, haproxy, sysbench and MariaDB (scripts/install-deps.sh --bench) and
# PyMySQL. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000}
command -v valgrind >/dev/null || apt-get install -y valgrind >/dev/null
command -v strace >/dev/null || apt-get install -y strace >/dev/null
python3 -c "import pymysql" 2>/dev/null || bash scripts/install-deps.sh --tests >/dev/null
source benches/sql-setup.sh

mariadb --no-defaults -h127.0.0.1 -P"$P" -uapp -papp appdb -e \
  "CREATE TABLE IF NOT EXISTS si_t (id INT AUTO_INCREMENT PRIMARY KEY, v INT); INSERT INTO si_t (v) SELECT seq FROM seq_1_to_1000"
wait_replicas
cat >"$work/client.py" <<'PY'
import sys, pymysql
port, n = int(sys.argv[1]), int(sys.argv[2])
c = pymysql.connect(host="127.0.0.1", port=port, user="app", password="app", database="appdb",
                    autocommit=True, ssl_disabled=True)
cur = c.cursor()
for i in range(n):
    cur.execute("SELECT v FROM si_t WHERE id = %s", (i % 1000 + 1,))
    cur.fetchone()
PY
load() { # port count
  if [ "${PREPARED:-0}" = 1 ]; then
    point_select "$1" 1 0 run --events="$2" >/dev/null
  else
    python3 "$work/client.py" "$1" "$2"
  fi
}
[ "${PREPARED:-0}" = 1 ] && point_select "$P" 1 0 prepare >/dev/null && wait_replicas
wait_port() {
  for _ in $(seq 1 120); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 1)" 2>/dev/null && return 0
    sleep 0.5
  done
}
start() { # name port [wrapper...] -> pid in $started
  local name=$1 port=$2; shift 2
  if [ "$name" = haproxy ]; then
    haproxy_config "$port" "$work/haproxy.cfg"
    "$@" haproxy -f "$work/haproxy.cfg" -db >"$work/$name.log" 2>&1 &
  else
    rwproxy_config "$port" "$work/rwproxy.toml"
    RUST_LOG=error "$@" target/release/rwproxy --config "$work/rwproxy.toml" >"$work/$name.log" 2>&1 &
  fi
  started=$!; pids+=("$started")
  wait_port "$port"
  sleep 2  # rwproxy's monitor: backends up, positions known
}
instructions() { # name
  local port total workers
  port=$(free_port)
  start "$1" "$port" valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$work/cg.$1"
  load "$port" 300
  callgrind_control -z "$started" >/dev/null 2>&1
  load "$port" "$N"
  callgrind_control -d "$started" >/dev/null 2>&1
  sleep 1
  total=$(grep -h '^totals:' "$work"/cg."$1".* | awk '{ s += $2 } END { print s }')
  # rwproxy's SQL worker threads alone (its monitor runs elsewhere, on a timer, so its share
  # of a run depends on how long the run took under valgrind).
  workers=$(grep -l 'run_worker' "$work"/cg."$1".* 2>/dev/null | xargs -r grep -h '^totals:' | awk '{ s += $2 } END { print s + 0 }')
  if [ -n "${KEEP_PROFILE:-}" ]; then mkdir -p "$KEEP_PROFILE"; cp "$work"/cg."$1".* "$KEEP_PROFILE"/; fi
  kill -TERM "$started" 2>/dev/null || true; wait "$started" 2>/dev/null || true
  rm -f "$work"/cg."$1".*
  if [ "$workers" -gt 0 ]; then echo "$((total / N)) ($((workers / N)) SQL workers)"; else echo $((total / N)); fi
}
syscalls() { # name
  local port tracer calls
  port=$(free_port)
  start "$1" "$port"
  load "$port" 300
  strace -f -c -p "$started" -o "$work/strace.$1" 2>/dev/null &
  tracer=$!
  sleep 1
  load "$port" "$N"
  kill -INT "$tracer"; wait "$tracer" 2>/dev/null || true
  calls=$(awk '/^100.00/ { print $4 }' "$work/strace.$1")
  kill -TERM "$started" 2>/dev/null || true; wait "$started" 2>/dev/null || true
  awk -v c="$calls" -v n="$N" 'BEGIN { printf "%.2f", c / n }'
  echo " ($(awk 'NR > 2 && $NF != "total" && $4 > 0 { printf "%s %s  ", $NF, $4 }' "$work/strace.$1"))"
}
printf '\n%s point selects on one connection (%s)\n' "$N" "$([ "${PREPARED:-0}" = 1 ] && echo "sysbench, prepared" || echo "PyMySQL, text protocol")"
printf '%-8s %34s   %s\n' proxy "user instr/statement" "system calls/statement"
for name in haproxy rwproxy; do
  printf '%-8s %34s   %s\n' "$name" "$(instructions "$name")" "$(syscalls "$name")"
done
