#!/usr/bin/env bash
# Runs rwproxy's whole test suite, installing MariaDB and PyMySQL first when missing. The tests
# start their own MariaDB primary and two replicas as local processes on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --python
cargo test --locked "$@"
