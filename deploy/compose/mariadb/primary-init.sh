#!/bin/bash
# Runs once, on the primary's first start: the application database and the users rwproxy
# and the replicas need. Replicated to the replicas through GTID positioning.
set -euo pipefail
docker_process_sql <<SQL
CREATE DATABASE IF NOT EXISTS appdb;
CREATE USER IF NOT EXISTS 'app'@'%' IDENTIFIED BY '${APP_PASSWORD}';
GRANT ALL ON appdb.* TO 'app'@'%';
CREATE USER IF NOT EXISTS 'monitor'@'%' IDENTIFIED BY '${MONITOR_PASSWORD}';
GRANT SLAVE MONITOR, PROCESS ON *.* TO 'monitor'@'%';
GRANT CREATE, INSERT, UPDATE, SELECT ON rwproxy.* TO 'monitor'@'%';
CREATE USER IF NOT EXISTS 'repl'@'%' IDENTIFIED BY '${REPL_PASSWORD}';
GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%';
SQL
