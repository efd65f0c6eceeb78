# Shared by the SQL benchmarks (sourced, not run): the tools (sysbench, MariaDB) and a release
# build, a work directory cleaned up on exit (with every process in $pids), a MariaDB primary
# and two replicas (examples/cluster) on $P, $R1, $R2 with their rwproxy config in $config,
# and helpers: free_port, rwproxy_config PORT FILE [EXTRA], haproxy_config PORT FILE,
# point_select PORT THREADS SECONDS …, cpu_ticks PID, user_ticks PID, wait_replicas.
# Loopback only.
bash scripts/install-deps.sh --bench
cargo build --release --quiet --bin rwproxy --example cluster
work=$(mktemp -d)
pids=()
cleanup() {
  if [ -n "${RWPID:-}" ] && ! kill -0 "$RWPID" 2>/dev/null; then
    echo "rwproxy exited during the run; its log:"; tail -40 "$work/rwproxy.log"
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"
}
trap cleanup EXIT

target/release/examples/cluster --cluster-only >"$work/cluster.out" 2>&1 &
pids+=($!)
for _ in $(seq 1 120); do grep -q '^ready' "$work/cluster.out" && break; sleep 0.5; done
grep -q '^ready' "$work/cluster.out" || { cat "$work/cluster.out"; exit 1; }
port_of() { awk -v n="$1" '$1 == n { split($2, a, ":"); print a[2] }' "$work/cluster.out"; }
P=$(port_of primary); R1=$(port_of replica1); R2=$(port_of replica2)
config=$(awk '/^config:/ { print $2 }' "$work/cluster.out")

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# The cluster's rwproxy config listening on PORT (the [admin] listener keeps a free port), with
# EXTRA appended. The cluster's servers offer TLS; rwproxy's default ("preferred") would take
# it, HAProxy's TCP relay does not encrypt: the comparison runs both in the clear
# (RWPROXY_BACKEND_TLS=preferred measures rwproxy with TLS to the backends).
rwproxy_config() {
  awk -v port="$1" -v tls="${RWPROXY_BACKEND_TLS:-disabled}" '/^\[/ { section = $0 } section == "[mysql]" && /^listen = / { $0 = "listen = \"127.0.0.1:" port "\"" } { print } /^\[\[mysql.backends\]\]/ { print "tls = \"" tls "\"" }' \
    "$config" >"$2"
  [ -n "${3:-}" ] && printf '\n%s\n' "$3" >>"$2"
  return 0
}
# HAProxy in TCP mode on PORT, round robin over the three servers, written to FILE.
haproxy_config() {
  cat >"$2" <<CFG
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 2s
    timeout client 1h
    timeout server 1h
listen mysql
    bind 127.0.0.1:$1
    balance roundrobin
    server primary 127.0.0.1:$P
    server replica1 127.0.0.1:$R1
    server replica2 127.0.0.1:$R2
CFG
}
# sysbench oltp_point_select (4 tables × 10,000 rows, prepared statements) on PORT with THREADS
# clients for SECONDS, then the command and any further options: point_select PORT THREADS
# SECONDS prepare|run …
point_select() {
  sysbench oltp_point_select --mysql-host=127.0.0.1 --mysql-port="$1" --mysql-user=app --mysql-password=app \
    --mysql-db=appdb --tables=4 --table-size=10000 --threads="$2" --time="$3" \
    --report-interval=0 --db-ps-mode=auto "${@:4}"
}
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
user_ticks() { awk '{ print $14 }' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
# Waits until both replicas have applied everything the primary has written.
wait_replicas() {
  local pos
  pos=$(mariadb --no-defaults -h127.0.0.1 -P"$P" -uapp -papp -N -e "SELECT @@gtid_binlog_pos")
  for r in "$R1" "$R2"; do
    mariadb --no-defaults -h127.0.0.1 -P"$r" -uapp -papp -N -e "SELECT MASTER_GTID_WAIT('$pos', 60)" >/dev/null
  done
}
