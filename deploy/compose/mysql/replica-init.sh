#!/bin/bash
# Runs once, on a replica's first start: replicate from the primary with GTID
# auto-positioning (users and appdb arrive through replication).
set -euo pipefail
docker_process_sql <<SQL
CHANGE REPLICATION SOURCE TO
  SOURCE_HOST = 'primary', SOURCE_PORT = 3306,
  SOURCE_USER = 'repl', SOURCE_PASSWORD = '${REPL_PASSWORD}',
  SOURCE_AUTO_POSITION = 1, GET_SOURCE_PUBLIC_KEY = 1;
START REPLICA;
SET PERSIST read_only = ON;
SET PERSIST super_read_only = ON;
SQL
