#!/usr/bin/env bash
# The long run of the differential leak harness: SEQUENCES seeded random sequences (default
# 10000) of session-state and data statements, run by concurrent sessions through rwproxy with
# two backend connections per backend and directly, every answer compared; on MariaDB
# (tests/sharing.rs) and on the MySQL 9.7 profile (tests/mysql_sharing.rs).
#   scripts/leak-hunt.sh [SEQUENCES] [FIRST_SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
export RWPROXY_LEAK_SEQUENCES="${1:-10000}" RWPROXY_LEAK_SEED="${2:-1}"
for binary in sharing mysql_sharing; do
  cargo test --locked --test "$binary" differential -- --nocapture 2>&1 | grep -E "leak harness|mismatches|seed [0-9]+ step|direct:|rwproxy:|test result"
done
