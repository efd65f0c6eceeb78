#!/usr/bin/env bash
# The one-command local demo, no Docker: a MariaDB primary and two replicas as local
# processes, rwproxy in front (SQL 127.0.0.1:6033, HTTP 127.0.0.1:8080, admin 127.0.0.1:9090)
# and two demo web servers behind its HTTP balancer. Prints the URLs and the `mariadb` command
# line; Ctrl-C stops everything and removes the data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --bins --example cluster
exec target/release/examples/cluster
