#!/usr/bin/env python3
"""Pipelines A, B, D, E single-node and on a local Ballista cluster (1 scheduler + N executors on
this machine), on the same warehouse in the same run; prints a Markdown table for
bench/RESULTS.md: wall time of each, the executors' task counts (the work split), and peak RSS
of every process.

    streampulse datagen --scale 0.1 --format parquet --out /data/sf0.1
    python3 bench/cluster.py --data /data/sf0.1 --warehouse /data/wh-sf0.1 [--executors 2]
                             [--pipelines A,B,D,E] [--memory-limit 4GiB]

The warehouse is loaded once, by a single node, if it has no catalog yet. Each pipeline then runs
twice: `streampulse sql -f` alone, then with `--cluster`. The pipelines are idempotent, so the
second run replaces what the first wrote. Each executor gets `--vcores 1` and `--memory-limit`
(also the single node's cap). On a machine with few cores the cluster cannot be faster: the
executors share the cores that a single node uses alone, and add shuffle files and Flight
transfers. What this measures is the overhead, and how the work is split.
"""

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from pipelines import measure, our_command, script_for  # noqa: E402
from recommend_quality import binary  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def tasks(log):
    return Path(log).read_text(errors="replace").count("Execute task")


def pairs_scored(log):
    """User-item pairs top_k_nearest multiplied in this log (its `partition done` lines)."""
    text = Path(log).read_text(errors="replace")
    return sum(int(n) for n in re.findall(r"top_k_nearest partition done.*?pairs_scored=(\d+)", text))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--warehouse", required=True)
    ap.add_argument("--pipelines", default="A,B,D,E")
    ap.add_argument("--executors", type=int, default=2)
    ap.add_argument("--memory-limit", default="4GiB")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    manifest = json.loads((args.data / "manifest.json").read_text())
    import datetime as dt
    first, ndays = manifest["first_day"], manifest["counts"]["days"]
    days = [(dt.date.fromisoformat(first) + dt.timedelta(days=i)).isoformat() for i in range(ndays)]
    month = first[:7]
    if not (Path(args.warehouse) / "_catalog").exists():
        load = (ROOT / "sql" / "load_generated.sql").read_text()
        load = load.replace("${data}", str(args.data.resolve())).replace("${format}", manifest["format"])
        secs, rss, _, _ = measure(our_command(args, load, args.memory_limit))
        print(f"load (single node): {secs:.1f} s, {rss:.0f} MiB", file=sys.stderr)

    logs = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    port = free_port()
    env = {**os.environ, "STREAMPULSE_LOG": "info"}
    procs = [subprocess.Popen([binary(), "scheduler", "--listen", f"127.0.0.1:{port}", "--min-ready-executors",
                               str(args.executors), "--warehouse", args.warehouse],
                              stdout=subprocess.DEVNULL, stderr=open(logs / "scheduler.log", "wb"), env=env)]
    for i in range(args.executors):
        procs.append(subprocess.Popen(
            [binary(), "executor", "--scheduler", f"127.0.0.1:{port}", "--listen", f"127.0.0.1:{free_port()}",
             "--grpc-listen", f"127.0.0.1:{free_port()}", "--vcores", "1", "--memory-limit", args.memory_limit,
             "--work-dir", str(logs / f"executor-{i}"), "--warehouse", args.warehouse],
            stdout=subprocess.DEVNULL, stderr=open(logs / f"executor-{i}.log", "wb"), env=env))
    executor_logs = [logs / f"executor-{i}.log" for i in range(args.executors)]
    rows = []
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline or any(p.poll() is not None for p in procs):
                sys.exit(f"the cluster did not start; logs in {logs}")
            time.sleep(0.3)
        for p in args.pipelines.split(","):
            script = script_for(p, days, month)
            secs, rss, _, _ = measure(our_command(args, script, args.memory_limit))
            before = [(tasks(log), pairs_scored(log)) for log in executor_logs]
            cmd = our_command(args, script, args.memory_limit) + ["--cluster", f"df://127.0.0.1:{port}"]
            csecs, crss, _, _ = measure(cmd)
            split = [tasks(log) - b for log, (b, _) in zip(executor_logs, before)]
            scored = [pairs_scored(log) - b for log, (_, b) in zip(executor_logs, before)]
            rows.append({"pipeline": p, "single_s": secs, "single_rss": rss, "cluster_s": csecs,
                         "coordinator_rss": crss, "tasks": split, "pairs_scored": scored})
            print(f"{p}: single {secs:.1f} s ({rss:.0f} MiB); cluster {csecs:.1f} s "
                  f"(coordinator {crss:.0f} MiB), tasks per executor {split}, pairs scored {scored}",
                  file=sys.stderr)
        executor_rss = [peak_rss_mib(p.pid) for p in procs[1:]]
        scheduler_rss = peak_rss_mib(procs[0].pid)
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()

    print(f"\n{manifest['counts']['plays']:,} plays, SF {manifest['scale_factor']} ({manifest['format']}); "
          f"{platform.node()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}; 1 scheduler + "
          f"{args.executors} executors (--vcores 1, --memory-limit {args.memory_limit}) on this machine\n")
    print("| pipeline | single node s | cluster s | cluster / single | tasks per executor | "
          "top_k_nearest pairs scored per executor | peak RSS MiB single | peak RSS MiB coordinator |")
    print("|---|---:|---:|---:|---|---|---:|---:|")
    for r in rows:
        scored = " / ".join(f"{n:,}" for n in r["pairs_scored"]) if any(r["pairs_scored"]) else "-"
        print(f"| {r['pipeline']} | {r['single_s']:.1f} | {r['cluster_s']:.1f} | {r['cluster_s'] / r['single_s']:.2f}x | "
              f"{' / '.join(map(str, r['tasks']))} | {scored} | {r['single_rss']:.0f} | {r['coordinator_rss']:.0f} |")
    print(f"\nPeak RSS over the run: scheduler {scheduler_rss:.0f} MiB, executors "
          f"{' / '.join(f'{x:.0f}' for x in executor_rss)} MiB. Logs: {logs}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "executor_rss": executor_rss, "scheduler_rss": scheduler_rss}))


if __name__ == "__main__":
    main()
