#!/usr/bin/env python3
"""The integration scenarios of the reference topology, against a running stack.

Runs the same checks against the docker-compose stack (tests/compose/run.sh) and against the
local-process cluster harness (tests/scenarios.rs, in CI):

  read split          reads through rwproxy reach more than one server
  transaction pinning every statement of a transaction runs on the primary
  lag demotion        a replica whose SQL thread stops leaves the read pool, and comes back
  web failover        with web1 stopped, every page load through the balancer still succeeds,
                      and each page load writes and reads through rwproxy

Every address and the commands that differ between the two setups come from the environment:
  RW_SQL      host:port of rwproxy's SQL listener      RW_HTTP   host:port of the balancer
  RW_ADMIN    host:port of the admin listener          RW_USER / RW_PASSWORD / RW_DATABASE
  RW_REPLICA1_SQL    shell command that runs SQL from stdin as an admin on replica1
  RW_STOP_WEB1 / RW_START_WEB1    shell commands that stop / start web server web1
Needs PyMySQL. Exits non-zero on the first failed scenario.
"""

import json
import os
import subprocess
import sys
import time
import urllib.request

import pymysql


def env(name, default=None):
    value = os.environ.get(name, default)
    if value is None:
        sys.exit(f"{name} is not set")
    return value


def host_port(name):
    host, port = env(name).rsplit(":", 1)
    return host, int(port)


def connect():
    host, port = host_port("RW_SQL")
    return pymysql.connect(host=host, port=port, user=env("RW_USER", "app"),
                           password=env("RW_PASSWORD", "app"), database=env("RW_DATABASE", "appdb"),
                           autocommit=True, connect_timeout=5)


def get(name, path):
    host, port = host_port(name)
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def status():
    code, body = get("RW_ADMIN", "/status")
    assert code == 200, body
    return json.loads(body)


def sh(command, stdin=None):
    subprocess.run(command, shell=True, check=True, input=stdin, text=True, timeout=120)


def wait(what, probe, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if probe():
            return time.monotonic()
        time.sleep(0.2)
    raise AssertionError(f"timed out after {seconds}s waiting for: {what}")


def read_split():
    with connect() as conn, conn.cursor() as cur:
        seen = set()
        for _ in range(12):
            cur.execute("SELECT @@server_id")
            seen.add(cur.fetchone()[0])
    assert len(seen) >= 2, f"reads reached only {seen}"
    return f"12 reads reached server ids {sorted(seen)}"


def transaction_pinning():
    with connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS scenario_pinning (id INT AUTO_INCREMENT PRIMARY KEY)")
        cur.execute("BEGIN")
        cur.execute("INSERT INTO scenario_pinning VALUES ()")
        ids = set()
        for _ in range(6):
            cur.execute("SELECT @@server_id, @@read_only")
            server, read_only = cur.fetchone()
            assert read_only == 0, "a read inside a transaction left the primary"
            ids.add(server)
        cur.execute("SELECT COUNT(*) FROM scenario_pinning WHERE id = LAST_INSERT_ID()")
        assert cur.fetchone()[0] == 1, "the transaction's own write is not visible to its reads"
        cur.execute("COMMIT")
    assert len(ids) == 1, ids
    return f"6 reads in a transaction all on server id {ids.pop()} (the primary)"


def replica1():
    return next(b for b in status()["backends"] if b["name"] == "replica1")


def lag_demotion():
    assert replica1()["state"] == "up", replica1()
    started = time.monotonic()
    sh(env("RW_REPLICA1_SQL"), "STOP REPLICA SQL_THREAD;")
    try:
        out = wait("replica1 leaves the read pool", lambda: not replica1()["in_read_pool"], 30)
        state = replica1()
        assert state["state"] in ("lagging", "replication_stopped"), state
        demoted = out - started
    finally:
        sh(env("RW_REPLICA1_SQL"), "START REPLICA SQL_THREAD;")
    back_from = time.monotonic()
    out = wait("replica1 rejoins the read pool", lambda: replica1()["in_read_pool"], 30)
    return f"replica1 demoted after {demoted:.1f}s ({state['state']}: {state['reason']}), back {out - back_from:.1f}s after the restart"


def web_servers_up():
    return all(s["up"] for s in status()["http_servers"])


def web_failover():
    wait("both web servers in rotation", web_servers_up, 30)
    served = set()
    for _ in range(4):
        code, body = get("RW_HTTP", "/")
        assert code == 200 and "write on server_id" in body, body
        served.add(body.split("\n")[0])
    assert served == {"served by web1", "served by web2"}, served
    sh(env("RW_STOP_WEB1"))
    try:
        names = []
        for _ in range(20):
            code, body = get("RW_HTTP", "/")
            assert code == 200, f"page load failed with web1 down: {code} {body}"
            names.append(body.split("\n")[0])
        assert all(n == "served by web2" for n in names[-5:]), names
        wait("web1 marked down", lambda: not next(s for s in status()["http_servers"] if s["name"] == "web1")["up"], 30)
    finally:
        sh(env("RW_START_WEB1"))
    wait("web1 back in rotation", lambda: next(s for s in status()["http_servers"] if s["name"] == "web1")["up"], 60)
    served = {get("RW_HTTP", "/")[1].split("\n")[0] for _ in range(6)}
    assert served == {"served by web1", "served by web2"}, served
    return "20 page loads with web1 stopped: all 200; web1 rejoined after its restart"


SCENARIOS = [read_split, transaction_pinning, lag_demotion, web_failover]

if __name__ == "__main__":
    for scenario in SCENARIOS:
        print(f"{scenario.__name__}: {scenario()}", flush=True)
    print("all scenarios passed")
