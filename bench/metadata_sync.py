#!/usr/bin/env python3
"""Pipeline C against the mock metadata API: ours beside the audit's sequential client and an
aiohttp client (the audit's own recommendation), same pages, same concurrency, same run.

    pip install aiohttp                                                              # the peer
    streampulse datagen --scale 1 --format parquet --event-days 0 --out /data/sf1   # 500 k songs
    python3 bench/metadata_sync.py --data /data/sf1 [--latency 50ms] [--page-size 1000]
                                   [--concurrency 32] [--faults 503:0.02,429:0.01] [--skip-sequential]

Each contender fetches every page of `GET /songs?page=N&page_size=P` from one mock
(`streampulse mock-api --latency L`) and keeps the songs; ours runs the whole pipeline
(`sql/pipelines/c_metadata_sync.sql`: fetch, check, MERGE into `music.songs`) twice, first into an
empty warehouse (every song inserted) and then with nothing changed (no commit): the second run
is the nightly case. The Python clients only fetch and parse (json.loads), so they do less.
The bound is max(bytes / bandwidth, ceil(pages / concurrency) * latency): what any client at this
concurrency must wait. Prints a Markdown table for bench/RESULTS.md with wall time, peak RSS,
requests and bytes from the mock's own counters.
"""

import argparse
import asyncio
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from recommend_quality import binary  # noqa: E402

PIPELINE = ROOT / "sql" / "pipelines" / "c_metadata_sync.sql"


def parse_ms(text):
    text = text.strip()
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    if text.endswith("s"):
        return float(text[:-1])
    return float(text)


class Mock:
    def __init__(self, args):
        cmd = [binary(), "mock-api", "--data", args.data, "--listen", "127.0.0.1:0", "--page-size", str(args.page_size),
               "--latency", args.latency]
        for f in filter(None, args.faults.split(",")):
            cmd += ["--fault", f]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        line = self.proc.stdout.readline().decode()
        if "listening on" not in line:
            sys.exit(f"mock-api did not start: {line}")
        self.url = line.strip().split(" on ")[1]

    def stats(self):
        with urllib.request.urlopen(self.url + "/_mock/stats", timeout=60) as r:
            return json.loads(r.read())

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def sequential(url, page_size):
    """The audit's client: one page after another."""
    songs, page = [], 1
    while True:
        with urllib.request.urlopen(f"{url}/songs?page={page}&page_size={page_size}", timeout=60) as r:
            body = json.loads(r.read())
        songs.extend(body["data"])
        if page >= body["meta"]["total_pages"] or not body["data"]:
            return len(songs)
        page += 1


def with_aiohttp(url, page_size, concurrency):
    """The audit's recommendation: aiohttp with a semaphore, first page for the count."""
    import aiohttp

    async def run():
        limit = asyncio.Semaphore(concurrency)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
            async def page(n):
                async with limit:
                    for attempt in range(8):
                        async with session.get(f"{url}/songs?page={n}&page_size={page_size}") as r:
                            if r.status == 200:
                                return json.loads(await r.read())
                        await asyncio.sleep(0.2 * 2 ** attempt)
                    raise RuntimeError(f"page {n} failed")
            first = await page(1)
            rest = await asyncio.gather(*(page(n) for n in range(2, first["meta"]["total_pages"] + 1)))
            return sum(len(p["data"]) for p in [first, *rest])

    return asyncio.run(run())


def timed_child(fn, *a):
    """Run `fn` in a forked child; return (seconds, peak RSS MiB, result)."""
    r, w = os.pipe()
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        result = fn(*a)
        os.write(w, json.dumps(result).encode())
        os._exit(0)
    os.close(w)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - started
    out = os.read(r, 1 << 16).decode()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit("a Python client failed")
    return seconds, usage.ru_maxrss / 1024, json.loads(out)


def ours(warehouse, url, page_size, concurrency):
    sql = PIPELINE.read_text().replace("page_size=1000", f"page_size={page_size}")
    sql = sql.replace("'concurrency' '32'", f"'concurrency' '{concurrency}'")
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(sql)
    cmd = [binary(), "sql", "--warehouse", warehouse, "--http-sources-allow", f"{url}/", "-f", f.name,
           "--param", f"songs_api={url}"]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "STREAMPULSE_LOG": "info"})
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    err = proc.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"pipeline C failed:\n{err[-3000:]}")
    fetched = next((line for line in err.splitlines() if "JSON_API fetched" in line), "")
    return seconds, usage.ru_maxrss / 1024, fetched


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--latency", default="50ms")
    p.add_argument("--page-size", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--faults", default="")
    p.add_argument("--skip-sequential", action="store_true")
    args = p.parse_args()
    latency = parse_ms(args.latency)
    rows = []
    mock = Mock(args)
    try:
        base = mock.stats()
        songs = base["songs"]
        pages = math.ceil(songs / args.page_size)

        def record(name, seconds, rss, note, before):
            after = mock.stats()
            rows.append((name, seconds, rss, after["requests"] - before["requests"],
                         (after["bytes"] - before["bytes"]) / 2**20, note))
            return after

        state = base
        with tempfile.TemporaryDirectory() as wh:
            s, rss, line = ours(wh, mock.url, args.page_size, args.concurrency)
            state = record("ours, first sync (fetch + check + MERGE inserting all)", s, rss, "", state)
            s, rss, line = ours(wh, mock.url, args.page_size, args.concurrency)
            fetch_ms = next((int(x.split("=")[1]) for x in line.split() if x.startswith("elapsed_ms=")), None)
            note = f"fetch {fetch_ms / 1000:.2f} s" if fetch_ms is not None else ""
            state = record("ours, nightly rerun (fetch + check + MERGE, no change)", s, rss, note, state)
        s, rss, n = timed_child(with_aiohttp, mock.url, args.page_size, args.concurrency)
        state = record(f"aiohttp, {args.concurrency} at once (fetch + json.loads)", s, rss, f"{n} songs", state)
        if not args.skip_sequential:
            s, rss, n = timed_child(sequential, mock.url, args.page_size)
            state = record("sequential Python (the audit's client)", s, rss, f"{n} songs", state)
        page_bytes = rows[-1][4] * 2**20 / max(rows[-1][3], 1)
    finally:
        mock.stop()

    bound = math.ceil(pages / args.concurrency) * latency
    print(f"## Pipeline C against the mock API — {time.strftime('%Y-%m-%d')}\n")
    print(f"{platform.node()}, {os.cpu_count()} cores; binary {binary()}; {songs:,} songs in {pages} pages of "
          f"{args.page_size} (~{page_bytes / 1024:.0f} KiB each), {args.latency} latency per request, "
          f"concurrency {args.concurrency}, faults: {args.faults or 'none'}. Lower bound "
          f"ceil(pages / concurrency) x latency = {bound:.2f} s (loopback bandwidth is not the limit); "
          f"sequential bound pages x latency = {pages * latency:.1f} s; the audit's production run: 25 min.\n")
    print("| client | wall s | peak RSS MiB | requests | MiB fetched | notes |")
    print("|---|---|---|---|---|---|")
    for name, s, rss, req, mib, note in rows:
        print(f"| {name} | {s:.2f} | {rss:.0f} | {req} | {mib:.1f} | {note} |")


if __name__ == "__main__":
    main()
