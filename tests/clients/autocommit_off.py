"""Transactions of autocommit=0 client stacks through rwproxy: PyMySQL's defaults and
SQLAlchemy's default engine. Usage: autocommit_off.py PORT PRIMARY_PORT

Exits non-zero with a message on the first failed check; prints one line per check passed.
"""
import sys
import time

import pymysql
import sqlalchemy
from sqlalchemy import text

PORT, PRIMARY_PORT = int(sys.argv[1]), int(sys.argv[2])


def connect(port=PORT):
    # PyMySQL's default is autocommit=False: every statement runs inside a transaction.
    return pymysql.connect(host="127.0.0.1", port=port, user="app", password="app",
                           database="appdb", ssl_disabled=True)


def check(name, cond, detail=""):
    if not cond:
        sys.exit(f"FAIL {name}: {detail}")
    print(f"ok {name}")


setup = connect()
with setup.cursor() as cur:
    cur.execute("CREATE TABLE IF NOT EXISTS opt_py (id INT PRIMARY KEY, v INT)")
    cur.execute("REPLACE INTO opt_py VALUES (1, 10), (2, 20)")
setup.commit()

def settle(conn):
    """With consistency = "user" a read needs the user's last write: replicas take the reads once
    they are known to have it (the monitor looks every 500 ms; a read waits 100 ms at most).
    Waits, bounded, until a read-only transaction lands on a replica."""
    for _ in range(50):
        with conn.cursor() as cur:
            cur.execute("SELECT @@server_id, COUNT(*) FROM opt_py")
            server, _ = cur.fetchone()
        conn.commit()
        if server != 1:
            return
        time.sleep(0.1)


conn = connect()
settle(conn)
on_replicas = 0
for _ in range(30):
    with conn.cursor() as cur:
        cur.execute("SELECT @@server_id, COUNT(*) FROM opt_py")
        server, count = cur.fetchone()
        cur.execute("SELECT v FROM opt_py WHERE id = 1")
        cur.fetchone()
    conn.commit()
    if count != 2:
        sys.exit(f"FAIL read-your-writes: count {count}")
    on_replicas += server != 1
check(f"pymysql: replicas answer read-only transactions ({on_replicas} of 30)", on_replicas * 2 >= 30)

with conn.cursor() as cur:
    cur.execute("SELECT v FROM opt_py WHERE id = 1")
    (v,) = cur.fetchone()
    cur.execute("UPDATE opt_py SET v = %s WHERE id = 1", (v + 1,))
    cur.execute("SELECT @@server_id")
    (server,) = cur.fetchone()
conn.commit()
check("pymysql: a read-then-write transaction ends on the primary", server == 1, f"server {server}")
direct = connect(PRIMARY_PORT)
with direct.cursor() as cur:
    cur.execute("SELECT v FROM opt_py WHERE id = 1")
    check("pymysql: the write committed", cur.fetchone()[0] == v + 1)
direct.close()

settle(conn)
engine = sqlalchemy.create_engine(f"mysql+pymysql://app:app@127.0.0.1:{PORT}/appdb",
                                  connect_args={"ssl_disabled": True}, pool_size=2)
on_replicas = 0
for _ in range(30):
    # Each `with` is one transaction (autobegin), rolled back when the connection goes back.
    with engine.connect() as c:
        server, count = c.execute(text("SELECT @@server_id, COUNT(*) FROM opt_py")).one()
        if count != 2:
            sys.exit(f"FAIL sqlalchemy read: count {count}")
        on_replicas += server != 1
check(f"sqlalchemy: replicas answer read-only transactions ({on_replicas} of 30)", on_replicas * 2 >= 30)
with engine.begin() as c:
    v = c.execute(text("SELECT v FROM opt_py WHERE id = 2")).scalar_one()
    c.execute(text("UPDATE opt_py SET v = :v WHERE id = 2"), {"v": v + 5})
with engine.connect() as c:
    after = c.execute(text("SELECT v FROM opt_py WHERE id = 2")).scalar_one()
check("sqlalchemy: read-then-write transaction commits and is read back", after == v + 5, f"{after}")
print("autocommit_off: all checks passed")
