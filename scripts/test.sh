#!/usr/bin/env bash
# Runs rwproxy's whole test suite, installing MariaDB and PyMySQL first when missing. The tests
# start their own MariaDB primary and two replicas as local processes on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --tests
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# Both ends of thousands of connections live in one test process (tests/limits.rs).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo test --locked --no-fail-fast --lib --bins --tests "$@" 2>&1 | tee "$log" || status=$?
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) p += $(i-1); if ($(i) ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
