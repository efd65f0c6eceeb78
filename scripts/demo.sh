#!/usr/bin/env bash
# A local demo without Docker: a MariaDB primary and two replicas as local processes, with
# rwproxy in front on 127.0.0.1:6033. Ctrl-C stops everything and removes the data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
exec cargo run --release --example cluster
