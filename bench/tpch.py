#!/usr/bin/env python3
"""TPC-H, 22 queries, through Flight SQL against managed tables, beside DuckDB on the same files
in the same run, every answer checked against DuckDB's.

    python3 bench/tpch.py [--scale 1] [--runs 3] [--data DIR] [--queries 1,3,18]

1. `tpchgen-cli` (PyPI) writes the eight tables as Parquet under `--data`/sf<scale> (kept, so
   a rerun skips it).
2. A server (`streampulse serve`, the binary bench/recommend_quality.py finds) on a fresh
   warehouse; each table becomes a managed (Delta) table by `CREATE TABLE t AS SELECT * FROM`
   an external Parquet table over the generated file, timed.
3. Each query (bench/tpch/qNN.sql, the spec's text with its validation parameters; Q15's view is
   a CTE) runs `--runs` times through ADBC (execute and fetch all as Arrow) and `--runs` times
   in DuckDB (in its own process, over views of the same Parquet files); the best run of each
   is reported. Answers are compared row by row in order: strings, dates and integers exactly,
   numbers to 1e-9 relative or one unit of a DECIMAL's last digit (DataFusion averages a DECIMAL into
   a DECIMAL of scale 6, DuckDB into a DOUBLE).

Prints a Markdown table for bench/RESULTS.md with per-query ratios and both peak RSS.
"""

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
from recommend_quality import binary  # noqa: E402

os.environ.setdefault("STREAMPULSE_BIN", binary())
from conftest import Server, adbc_connect  # noqa: E402
from ingest import hwm  # noqa: E402  (one reader of /proc VmHWM)

TABLES = ["region", "nation", "supplier", "customer", "part", "partsupp", "orders", "lineitem"]
QUERIES = ROOT / "bench" / "tpch"


def generate(data: Path, scale: float) -> Path:
    out = data / f"sf{scale:g}"
    if all((out / f"{t}.parquet").exists() for t in TABLES):
        return out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    subprocess.run(["tpchgen-cli", "parquet", "-s", f"{scale:g}", f"--output-dir={out}"], check=True)
    print(f"tpchgen-cli SF {scale:g}: {time.time() - t0:.1f} s", file=sys.stderr)
    return out


def query_text(n: int) -> str:
    return (QUERIES / f"q{n:02d}.sql").read_text()


DUCKDB_CHILD = r"""
import duckdb, json, sys, time
files, runs, queries = sys.argv[1], int(sys.argv[2]), json.loads(sys.stdin.read())
con = duckdb.connect()
for t in %r:
    con.sql(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{files}/{t}.parquet')")
out = {}
for n, sql in queries.items():
    best, rows = None, None
    for _ in range(runs):
        t0 = time.perf_counter()
        rows = con.sql(sql).fetchall()
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    out[n] = {"seconds": best, "rows": [[str(v) if not isinstance(v, (int, float)) or isinstance(v, bool) else v
                                          for v in r] for r in rows]}
import resource
print(json.dumps({"queries": out, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
""" % (TABLES,)


def run_duckdb(files: Path, runs: int, queries: dict):
    """DuckDB in its own process: its peak RSS is its own."""
    proc = subprocess.Popen([sys.executable, "-c", DUCKDB_CHILD, str(files), str(runs)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(json.dumps(queries))
    if proc.returncode:
        sys.exit("DuckDB run failed")
    return json.loads(out)


def same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (float, Decimal)) or isinstance(b, float):
        fa, fb = float(a), float(b)
        # A DECIMAL answer is exact to its last digit (DataFusion's avg of DECIMAL(15,2) is
        # DECIMAL(19,6), DuckDB's a DOUBLE): equal within one unit of that digit.
        unit = 10.0 ** a.as_tuple().exponent if isinstance(a, Decimal) else 0.0
        return math.isclose(fa, fb, rel_tol=1e-9, abs_tol=max(unit, 1e-9))
    if isinstance(b, str) and not isinstance(a, str):
        if isinstance(a, (int,)) and not isinstance(a, bool):
            try:
                return math.isclose(float(a), float(b), rel_tol=1e-9)
            except ValueError:
                return False
        return str(a) == b
    if isinstance(a, str) and isinstance(b, str):
        try:
            return str(a) == b or math.isclose(float(a), float(b), rel_tol=1e-9)
        except ValueError:
            return False
    return a == b


def compare(n, ours, theirs) -> str | None:
    if len(ours) != len(theirs):
        return f"Q{n}: {len(ours)} rows, DuckDB {len(theirs)}"
    for i, (ra, rb) in enumerate(zip(ours, theirs)):
        if len(ra) != len(rb) or not all(same(x, y) for x, y in zip(ra, rb)):
            return f"Q{n} row {i}: {ra} vs DuckDB {rb}"
    return None



def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--data", default=str(Path.home() / ".cache" / "streampulse-tpch"))
    ap.add_argument("--queries", default=",".join(str(i) for i in range(1, 23)))
    ap.add_argument("--memory-limit", default="4GiB")
    ap.add_argument("--server-args", default="", help="extra `streampulse serve` arguments, space-separated")
    args = ap.parse_args()
    numbers = [int(x) for x in args.queries.split(",")]
    files = generate(Path(args.data), args.scale)
    base = Path(tempfile.mkdtemp(prefix="tpch-bench-"))
    extra = ["--memory-limit", args.memory_limit, *args.server_args.split()]
    server = Server(str(base / "wh"), extra_args=extra, log_path=str(base / "server.log"),
                    env={"STREAMPULSE_LOG": "warn"}).start()
    failures = []
    try:
        conn = adbc_connect(server.uri)
        cur = conn.cursor()
        t0 = time.time()
        for t in TABLES:
            cur.execute(f"CREATE EXTERNAL TABLE {t}_file STORED AS PARQUET LOCATION '{files}/{t}.parquet'")
            cur.fetchall()
            cur.execute(f"CREATE TABLE {t} AS SELECT * FROM {t}_file")
            cur.fetchall()
        load = time.time() - t0
        print(f"loaded 8 managed tables by CTAS in {load:.1f} s", file=sys.stderr)
        ours = {}
        for n in numbers:
            sql = query_text(n)
            best, rows = None, None
            for _ in range(args.runs):
                t1 = time.perf_counter()
                cur.execute(sql)
                table = cur.fetch_arrow_table()
                dt = time.perf_counter() - t1
                best = dt if best is None else min(best, dt)
                rows = [tuple(r.values()) for r in table.to_pylist()]
            ours[n] = (best, rows)
            print(f"Q{n:02d}: {best:.3f} s, {len(rows)} rows", file=sys.stderr)
        our_rss = hwm(server.proc.pid)
        cur.close()
        conn.close()
    finally:
        server.stop()
    t2 = time.time()
    answer = run_duckdb(files, args.runs, {str(n): query_text(n) for n in numbers})
    duck, duck_rss = answer["queries"], answer["peak_rss"]
    duck_wall = time.time() - t2
    print(f"DuckDB: {duck_wall:.1f} s in all", file=sys.stderr)
    total_ours = sum(ours[n][0] for n in numbers)
    total_duck = sum(duck[str(n)]["seconds"] for n in numbers)
    print(f"\n{time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} cores, SF {args.scale:g}, "
          f"best of {args.runs}; CTAS load {load:.1f} s; peak RSS ours {our_rss / 2**20:.0f} MiB, "
          f"DuckDB {duck_rss / 2**20:.0f} MiB\n")
    print("| query | ours s | DuckDB s | ratio | answer |")
    print("|---|---:|---:|---:|---|")
    for n in numbers:
        err = compare(n, ours[n][1], duck[str(n)]["rows"])
        if err:
            failures.append(err)
        d = duck[str(n)]["seconds"]
        print(f"| Q{n:02d} | {ours[n][0]:.3f} | {d:.3f} | {ours[n][0] / d:.2f} | {'equal' if not err else 'DIFFERS'} |")
    print(f"| **total** | **{total_ours:.2f}** | **{total_duck:.2f}** | **{total_ours / total_duck:.2f}** | |")
    for f in failures:
        print(f"MISMATCH {f}", file=sys.stderr)
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
