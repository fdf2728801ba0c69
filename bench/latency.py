#!/usr/bin/env python3
"""Interactive latency over Flight SQL: per-call percentiles and throughput with 1, 8 and 32
concurrent ADBC clients, each its own process with its own connection (a BI dashboard's pool).

    python3 bench/latency.py [--rows 1000000] [--seconds 10] [--clients 1,8,32] [--warehouse DIR]

1. A server (`streampulse serve`, the binary bench/recommend_quality.py finds) on a fresh
   warehouse; `lat.users` is a partitioned managed table made by CTAS: `--rows` users, one
   partition per country (20), written in user_id order as CTAS writes it.
2. For each statement and client count, every client runs the statement in a loop for
   `--seconds` (after a warm-up of 20 calls) and records each call's wall time from `execute` to
   the last row fetched:
   - `SELECT 1`;
   - lookup: `SELECT * FROM lat.users WHERE user_id = <k>` with a random existing k, as literal
     SQL (what a BI tool sends);
   - prepared lookup: the same with `$1` bound by ADBC (prepare, bind, execute, close).
   Every lookup's answer is checked: exactly one row, the asked user_id.
3. Throughput = all calls / the window; p50 / p99 over all calls of all clients.

Prints a Markdown table for bench/RESULTS.md; peak RSS of the server is its VmHWM.
"""

import argparse
import multiprocessing as mp
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
from recommend_quality import binary  # noqa: E402

os.environ.setdefault("STREAMPULSE_BIN", binary())
from conftest import Server, adbc_connect  # noqa: E402
from ingest import hwm, percentile  # noqa: E402  (one reader of /proc VmHWM)

COUNTRIES = 20
TABLE = """CREATE TABLE lat.users PARTITIONED BY (country) AS
SELECT value AS user_id, 'user-' || CAST(value AS VARCHAR) AS name, CAST(value % 97 AS INT) AS age_days,
       arrow_cast(value * 0.5, 'Float64') AS balance, 'C' || CAST(value % {n} AS VARCHAR) AS country
FROM generate_series(1, {rows}) ORDER BY user_id"""

STATEMENTS = ("select1", "lookup", "prepared")


def call(cur, kind, rows, rng):
    if kind == "select1":
        cur.execute("SELECT 1")
        got = cur.fetchall()
        if got != [(1,)]:
            raise SystemExit(f"SELECT 1 answered {got}")
        return
    k = rng.randint(1, rows)
    if kind == "lookup":
        cur.execute(f"SELECT * FROM lat.users WHERE user_id = {k}")
    else:
        cur.execute("SELECT * FROM lat.users WHERE user_id = $1", (k,))
    got = cur.fetchall()
    if len(got) != 1 or got[0][0] != k:
        raise SystemExit(f"lookup of {k} answered {got}")


def client(uri, kind, rows, seconds, ready, seed, out):
    rng = random.Random(seed)
    conn = adbc_connect(uri)
    cur = conn.cursor()
    for _ in range(20):
        call(cur, kind, rows, rng)
    # Every client has connected and warmed up before any is timed: with many client processes
    # on few cores, starting and warming up takes longer than a fixed head start.
    ready.wait()
    times = []
    end = time.time() + seconds
    while True:
        t0 = time.perf_counter()
        call(cur, kind, rows, rng)
        times.append(time.perf_counter() - t0)
        if time.time() >= end:
            break
    cur.close()
    conn.close()
    out.put(times)



def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--statements", default=",".join(STATEMENTS))
    ap.add_argument("--warehouse", help="a folder for the warehouse (default: a fresh temporary one)")
    args = ap.parse_args()
    base = Path(args.warehouse or tempfile.mkdtemp(prefix="latency-bench-"))
    server = Server(str(base / "wh"), log_path=str(base / "server.log"), env={"STREAMPULSE_LOG": "warn"}).start()
    try:
        conn = adbc_connect(server.uri)
        with conn.cursor() as c:
            c.execute("CREATE SCHEMA IF NOT EXISTS lat")
            c.fetchall()
            t0 = time.time()
            c.execute(TABLE.format(rows=args.rows, n=COUNTRIES))
            c.fetchall()
            print(f"lat.users: {args.rows:,} rows in {COUNTRIES} partitions, CTAS {time.time() - t0:.1f} s",
                  file=sys.stderr)
        conn.close()
        ctx = mp.get_context("spawn")
        results = []
        for kind in args.statements.split(","):
            for n in (int(x) for x in args.clients.split(",")):
                out = ctx.Queue()
                ready = ctx.Barrier(n)
                procs = [ctx.Process(target=client, args=(server.uri, kind, args.rows, args.seconds, ready, i, out))
                         for i in range(n)]
                for p in procs:
                    p.start()
                times = [t for _ in procs for t in out.get(timeout=120 + args.seconds)]
                for p in procs:
                    p.join()
                    if p.exitcode != 0:
                        raise SystemExit(f"a client failed ({kind}, {n} clients)")
                row = (kind, n, len(times), len(times) / args.seconds, percentile(times, 50) * 1e3,
                       percentile(times, 99) * 1e3, max(times) * 1e3)
                results.append(row)
                print("%-9s %2d clients: %7d calls, %8.0f/s, p50 %.2f ms, p99 %.2f ms, max %.1f ms" % row,
                      file=sys.stderr)
        print(f"\n{time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} cores, "
              f"{args.rows:,}-row table, {args.seconds:.0f} s per cell, server peak RSS "
              f"{hwm(server.proc.pid) / 2**20:.0f} MiB\n")
        print("| statement | clients | calls | calls/s | p50 ms | p99 ms | max ms |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for kind, n, calls, rate, p50, p99, worst in results:
            print(f"| {kind} | {n} | {calls:,} | {rate:,.0f} | {p50:.2f} | {p99:.2f} | {worst:.1f} |")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
