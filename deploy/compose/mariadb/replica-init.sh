#!/bin/bash
# Runs once, on a replica's first start: replicate from the primary by GTID (users and
# appdb arrive through replication).
set -euo pipefail
docker_process_sql <<SQL
CHANGE MASTER TO
  MASTER_HOST = 'primary', MASTER_PORT = 3306,
  MASTER_USER = 'repl', MASTER_PASSWORD = '${REPL_PASSWORD}',
  MASTER_USE_GTID = slave_pos;
START SLAVE;
SQL
