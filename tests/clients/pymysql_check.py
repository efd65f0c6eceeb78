"""PyMySQL through rwproxy. Usage: pymysql_check.py PORT PRIMARY_PORT

Exits non-zero with a message on the first failed check; prints one line per check passed.
"""
import collections
import os
import sys
import tempfile

import pymysql

PORT, PRIMARY_PORT = int(sys.argv[1]), int(sys.argv[2])


def connect(port=PORT, **kw):
    return pymysql.connect(host="127.0.0.1", port=port, user="app", password="app",
                           database="appdb", **kw)


def check(name, cond, detail=""):
    if not cond:
        sys.exit(f"FAIL {name}: {detail}")
    print(f"ok {name}")


def server_ids(cur, n):
    seen = collections.Counter()
    for _ in range(n):
        cur.execute("SELECT @@server_id")
        seen[cur.fetchone()[0]] += 1
    return seen


conn = connect(autocommit=True)
cur = conn.cursor()
check("round robin with autocommit", server_ids(cur, 9) == {1: 3, 2: 3, 3: 3}, server_ids(cur, 9))

cur.execute("DROP TABLE IF EXISTS py_t")
cur.execute("CREATE TABLE py_t (id INT PRIMARY KEY, b BLOB, bits BIT(4), d DECIMAL(8,3), s VARCHAR(10))")
cur.execute("INSERT INTO py_t VALUES (1, %s, b'1010', 3.250, %s)", (b"\x00\xff\xfe", "ünï"))
cur.execute("SELECT b, bits, d, s FROM py_t /* rwproxy:primary */")
row = cur.fetchone()
check("binary columns stay binary", row[0] == b"\x00\xff\xfe" and row[1] == b"\x0a", repr(row))
check("decimal and utf8mb4", str(row[2]) == "3.250" and row[3] == "ünï", repr(row))

# PyMySQL defaults to autocommit off: a read of a table opens a transaction, which stays on one
# backend until it ends (table-less reads open none, and may go anywhere).
tx = connect()
tcur = tx.cursor()
tcur.execute("SELECT COUNT(*) FROM py_t /* rwproxy:primary */")
inside = server_ids(tcur, 6)
check("autocommit=0: the transaction stays on one backend", len(inside) == 1, inside)
tcur.execute("INSERT INTO py_t (id) VALUES (2)")
tx.rollback()
tcur.execute("SELECT COUNT(*) FROM py_t WHERE id = 2")
check("rollback undoes the insert", tcur.fetchone()[0] == 0)
tcur.executemany("INSERT INTO py_t (id, s) VALUES (%s, %s)", [(10, "a"), (11, "b"), (12, "c")])
tx.commit()
direct = connect(port=PRIMARY_PORT, autocommit=True)
dcur = direct.cursor()
dcur.execute("SELECT COUNT(*) FROM py_t WHERE id >= 10")
check("commit is visible on the primary", dcur.fetchone()[0] == 3)

with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
    for i in range(100, 1100):
        f.write(f"{i}\tx{i}\n")
    path = f.name
infile = connect(autocommit=True, local_infile=True)
icur = infile.cursor()
icur.execute(f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE py_t (id, s)")
check("LOAD DATA LOCAL INFILE", icur.rowcount == 1000, icur.rowcount)
os.unlink(path)
dcur.execute("SELECT COUNT(*) FROM py_t WHERE id >= 100")
check("loaded rows on the primary", dcur.fetchone()[0] == 1000)

try:
    cur.execute("SELECT * FROM no_such_table")
    check("error raised", False)
except pymysql.err.ProgrammingError as e:
    check("error code passes through", e.args[0] == 1146, e.args)
cur.execute("SELECT 1")
check("session survives an error", cur.fetchone() == (1,))
conn.ping()
check("ping", True)
print("pymysql: all checks passed")
