#!/bin/bash
# Runs once, on the primary's first start: the application database and the users rwproxy
# and the replicas need. Replicated to the replicas through GTID auto-positioning.
set -euo pipefail
docker_process_sql <<SQL
CREATE DATABASE IF NOT EXISTS appdb;
CREATE USER IF NOT EXISTS 'app'@'%' IDENTIFIED WITH mysql_native_password BY '${APP_PASSWORD}';
GRANT ALL ON appdb.* TO 'app'@'%';
CREATE USER IF NOT EXISTS 'monitor'@'%' IDENTIFIED WITH mysql_native_password BY '${MONITOR_PASSWORD}';
GRANT REPLICATION CLIENT, PROCESS ON *.* TO 'monitor'@'%';
GRANT CREATE, INSERT, UPDATE, SELECT ON rwproxy.* TO 'monitor'@'%';
CREATE USER IF NOT EXISTS 'repl'@'%' IDENTIFIED WITH mysql_native_password BY '${REPL_PASSWORD}';
GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%';
SQL
