#!/usr/bin/env python3
"""Live-event ingest: sustained throughput and end-to-end lag of a pipe, beside the company's
streamer (seed 004: 228 MB/min, ~493 ms lag) and DuckDB loading the same files to Parquet.

    python3 bench/ingest.py [--files 300] [--lines 6500] [--rates 350,3500] [--seconds 60]

1. `streampulse datagen --live` writes `--files` event files of `--lines` lines (the company's
   files hold ~6,500) into a staging folder.
2. **Backlog**: all of them are put in the landing folder at once; a pipe (sql/ingest.sql's
   statement, into a table with music.plays' columns) loads them; throughput = bytes / time from
   the pipe's creation to the last file in system.copy_history, as stored (gzip) and raw.
3. **Sustained rate**: for each rate (files per minute), files are copied into a fresh landing
   folder at that rate for `--seconds` (each copy written aside and renamed: its mtime is its
   arrival); lag per file = loaded_at - last_modified from system.copy_history, i.e. arrival to
   visible; p50 / p95 / p99.
4. **Peer**: DuckDB `COPY (SELECT * FROM read_json(...)) TO 'x.parquet'` over the same files, in a
   subprocess (so its peak RSS is its own).

Peak RSS of the server is its VmHWM. Prints a Markdown table for bench/RESULTS.md.
"""

import argparse
import gzip
import json
import os
import platform
import resource
import shutil
import subprocess
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

TABLE = """CREATE TABLE music.plays (play_id BIGINT, user_id BIGINT, song_id BIGINT, artist_id BIGINT,
  played_at TIMESTAMP, ms_played INT, skipped BOOLEAN, source VARCHAR, device VARCHAR, country VARCHAR,
  session_id BIGINT, play_date DATE) PARTITIONED BY (play_date)"""


def pipe_sql(location):
    text = (ROOT / "sql" / "ingest.sql").read_text()
    body = "\n".join(line for line in text.splitlines() if not line.startswith("--"))
    return body.replace("${events}", location)


def one(conn, sql):
    with conn.cursor() as c:
        c.execute(sql)
        return c.fetchall()


def hwm(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def start(base, name):
    wh = base / f"wh-{name}"
    s = Server(str(wh), log_path=str(base / f"{name}.log"), env={"STREAMPULSE_LOG": "warn"}).start()
    conn = adbc_connect(s.uri)
    one(conn, "CREATE SCHEMA music")
    one(conn, TABLE)
    return s, conn


def wait_for(conn, files, timeout):
    deadline = time.time() + timeout
    while True:
        n = one(conn, "SELECT count(*) FROM system.copy_history")[0][0]
        if n >= files:
            return
        if time.time() > deadline:
            sys.exit(f"only {n} of {files} files loaded in {timeout} s")
        time.sleep(0.05)


def percentile(values, q):
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=300)
    ap.add_argument("--lines", type=int, default=6500)
    ap.add_argument("--rates", default="350,3500", help="files per minute for the lag runs")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    stage = base / "stage"
    subprocess.run([binary(), "datagen", "--live", "--out", str(stage), "--scale", "0.01", "--files-per-minute", "1000000",
                    "--lines-per-file", str(args.lines), "--max-files", str(args.files), "--quiet"], check=True,
                   stdout=subprocess.DEVNULL)
    files = sorted((stage / "events").rglob("*.gz"))
    gz_bytes = sum(f.stat().st_size for f in files)
    raw_bytes = sum(len(gzip.decompress(f.read_bytes())) for f in files)
    rows = args.files * args.lines
    results = {"machine": f"{platform.node()} {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
               "files": args.files, "lines_per_file": args.lines, "gz_mb": gz_bytes / 1e6, "raw_mb": raw_bytes / 1e6}
    print(f"{args.files} files, {rows} lines, {gz_bytes / 1e6:.1f} MB gzip, {raw_bytes / 1e6:.1f} MB raw", flush=True)

    # Backlog: everything at once.
    s, conn = start(base, "backlog")
    land = base / "land-backlog" / "events"
    shutil.copytree(stage / "events", land)
    started = time.time()
    one(conn, pipe_sql(f"{land}/"))
    wait_for(conn, len(files), 3600)
    took = time.time() - started
    assert one(conn, "SELECT count(*) FROM music.plays")[0][0] == rows
    results["backlog"] = {"seconds": took, "gz_mb_per_min": gz_bytes / 1e6 / took * 60,
                          "raw_mb_per_min": raw_bytes / 1e6 / took * 60, "rows_per_s": rows / took,
                          "peak_rss_mb": hwm(s.proc.pid) / 2**20}
    print("backlog", json.dumps(results["backlog"]), flush=True)
    conn.close()
    s.stop()

    # Sustained rates: arrival to visible.
    results["lag"] = []
    for rate in [float(r) for r in args.rates.split(",") if r]:
        s, conn = start(base, f"rate{int(rate)}")
        land = base / f"land-{int(rate)}" / "events"
        land.mkdir(parents=True)
        one(conn, pipe_sql(f"{land}/"))
        interval = 60.0 / rate
        t0 = time.time()
        dropped = 0
        while time.time() - t0 < args.seconds:
            src = files[dropped % len(files)]
            rel = src.relative_to(stage / "events")
            dst = land / rel.parent / f"{dropped}_{rel.name}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.parent / f".{dst.name}.tmp"
            shutil.copyfile(src, tmp)
            os.rename(tmp, dst)
            dropped += 1
            next_at = t0 + dropped * interval
            if next_at > time.time():
                time.sleep(next_at - time.time())
        offered = time.time() - t0
        wait_for(conn, dropped, 600)
        lags = [r[0] / 1e6 for r in one(conn, "SELECT CAST(loaded_at AS BIGINT) - CAST(last_modified AS BIGINT) "
                                              "FROM system.copy_history")]
        r = {"files_per_min": rate, "files": dropped, "gz_mb_per_min": dropped * gz_bytes / len(files) / 1e6 / offered * 60,
             "p50_s": percentile(lags, 50), "p95_s": percentile(lags, 95), "p99_s": percentile(lags, 99),
             "max_s": max(lags), "peak_rss_mb": hwm(s.proc.pid) / 2**20}
        results["lag"].append(r)
        print("lag", json.dumps(r), flush=True)
        conn.close()
        s.stop()

    # Peer: DuckDB reads the same files into one Parquet file.
    code = (f"import duckdb, time; t=time.time(); duckdb.connect().execute(\"COPY (SELECT * FROM read_json('{stage}/events/**/*.gz', "
            f"format='newline_delimited', compression='gzip')) TO '{base}/duck.parquet' (FORMAT parquet)\"); "
            f"import resource; print(time.time()-t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    duck, peak = (float(v) for v in out.stdout.split())
    results["duckdb"] = {"seconds": duck, "gz_mb_per_min": gz_bytes / 1e6 / duck * 60,
                         "raw_mb_per_min": raw_bytes / 1e6 / duck * 60, "rows_per_s": rows / duck,
                         "peak_rss_mb": peak / 1024}
    print("duckdb", json.dumps(results["duckdb"]), flush=True)

    b, d = results["backlog"], results["duckdb"]
    print()
    print(f"| {results['date']}, {results['machine']}, release | files | MB/min (gzip) | MB/min (raw) | rows/s | peak RSS |")
    print("|---|---|---|---|---|---|")
    print(f"| seed 004 streamer (cited) | – | 228 | – | – | – |")
    print(f"| ours, pipe draining a backlog | {args.files} | {b['gz_mb_per_min']:.0f} | {b['raw_mb_per_min']:.0f} | "
          f"{b['rows_per_s']:,.0f} | {b['peak_rss_mb']:.0f} MiB |")
    print(f"| DuckDB read_json → Parquet | {args.files} | {d['gz_mb_per_min']:.0f} | {d['raw_mb_per_min']:.0f} | "
          f"{d['rows_per_s']:,.0f} | {d['peak_rss_mb']:.0f} MiB |")
    print()
    print("| arrival rate (files/min) | MB/min offered (gzip) | files | lag p50 | p95 | p99 | max | peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    print("| seed 004 streamer (cited) | 228 | – | – | – | – | ~0.493 s (\"end-to-end\") | – |")
    for r in results["lag"]:
        print(f"| {r['files_per_min']:.0f} | {r['gz_mb_per_min']:.0f} | {r['files']} | {r['p50_s']:.2f} s | "
              f"{r['p95_s']:.2f} s | {r['p99_s']:.2f} s | {r['max_s']:.2f} s | {r['peak_rss_mb']:.0f} MiB |")
    (base / "results.json").write_text(json.dumps(results, indent=2))
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
