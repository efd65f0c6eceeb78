# Shared by the HTTP benchmarks (sourced, not run): the tools (wrk, haproxy) and a release
# build, a work directory cleaned up on exit, two web servers (examples/web), and the rwproxy
# and HAProxy configs balancing over them: $work/rwproxy.toml (listening on $RW) and
# $work/haproxy.cfg (on $HA); `start_proxies` runs both ($RWPID, $HAPID). Loopback only.
bash scripts/install-deps.sh --bench
cargo build --release --quiet --bin rwproxy --example web
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
W1=$(free_port); W2=$(free_port); RW=$(free_port); HA=$(free_port); DEAD=$(free_port)

target/release/examples/web "127.0.0.1:$W1" web1 >/dev/null & pids+=($!)
target/release/examples/web "127.0.0.1:$W2" web2 >/dev/null & pids+=($!)
cat >"$work/rwproxy.toml" <<CFG
[mysql]
listen = "127.0.0.1:0"
[[mysql.users]]
name = "unused"
password = "unused"
[[mysql.backends]]
name = "unused"
address = "127.0.0.1:$DEAD"
role = "primary"
[monitor]
enabled = false
[http]
listen = "127.0.0.1:$RW"
[[http.servers]]
name = "web1"
address = "127.0.0.1:$W1"
[[http.servers]]
name = "web2"
address = "127.0.0.1:$W2"
CFG
cat >"$work/haproxy.cfg" <<CFG
global
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend web
    bind 127.0.0.1:$HA
    default_backend servers
backend servers
    balance roundrobin
    server web1 127.0.0.1:$W1
    server web2 127.0.0.1:$W2
CFG

start_proxies() {
  RUST_LOG=warn target/release/rwproxy --config "$work/rwproxy.toml" 2>"$work/rwproxy.log" & pids+=($!)
  RWPID=$!
  haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 & pids+=($!)
  HAPID=$!
  sleep 1
}
