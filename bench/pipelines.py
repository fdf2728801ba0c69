#!/usr/bin/env python3
"""Time pipelines A, B, D, E on our engine and on peers, on the same generated files, in the
same run; print a Markdown table (wall time, peak RSS, ratio to ours) for bench/RESULTS.md.

    streampulse datagen --scale 0.1 --format parquet --out /data/sf0.1
    python3 bench/pipelines.py --data /data/sf0.1 --warehouse /data/wh-sf0.1 [--pipelines A,B,D,E]
                               [--peers duckdb,polars,pandas,numpy] [--memory-limit 1GiB]

Ours: `streampulse sql -f sql/pipelines/<script>` (release build preferred: $STREAMPULSE_BIN or the
cargo target folder) against a warehouse loaded once with sql/load_generated.sql (the load is
timed too). A = all days of the month in one process (30 runs of the daily script, the audit's
monthly volume); B = run_date the last day; D = the month; E = whole table. Peers:
bench/peers.py, each in its own process. Peak RSS is the process's own high-water mark
(getrusage via wait4), so it includes everything the process allocated, pooled or not.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from recommend_quality import binary  # noqa: E402

SCRIPTS = {"A": "a_daily_play_counts.sql", "B": "b_recommendations.sql", "D": "d_royalties.sql", "E": "e_ab_analytics.sql"}


def measure(cmd, env=None):
    """Run `cmd`; return (seconds, peak RSS in MiB, stdout)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env={**os.environ, "STREAMPULSE_LOG": "warn", **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"{' '.join(map(str, cmd))} failed:\n{err.read().decode()[-3000:]}")
        return seconds, usage.ru_maxrss / 1024, out.read().decode()


def our_command(args, script_text):
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script_text)
    cmd = [binary(), "sql", "--warehouse", args.warehouse, "-f", f.name]
    if args.memory_limit:
        cmd += ["--memory-limit", args.memory_limit]
    return cmd


def script_for(pipeline, days, month):
    text = (ROOT / "sql" / "pipelines" / SCRIPTS[pipeline]).read_text()
    if pipeline == "A":
        return "\n".join(text.replace("${run_date}", d) for d in days)
    if pipeline == "B":
        return text.replace("${run_date}", days[-1])
    if pipeline == "D":
        return text.replace("${month}", month)
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--warehouse", required=True)
    ap.add_argument("--pipelines", default="A,B,D,E")
    ap.add_argument("--peers", default="duckdb,polars,pandas,numpy")
    ap.add_argument("--memory-limit", help="our engine's memory cap (--memory-limit), e.g. 1GiB")
    ap.add_argument("--json", type=Path, help="also write the measurements here")
    args = ap.parse_args()

    manifest = json.loads((args.data / "manifest.json").read_text())
    first = manifest["first_day"]
    ndays = manifest["counts"]["days"]
    import datetime as dt
    days = [(dt.date.fromisoformat(first) + dt.timedelta(days=i)).isoformat() for i in range(ndays)]
    month = first[:7]
    rows = []
    if not (Path(args.warehouse) / "_catalog").exists():
        load = (ROOT / "sql" / "load_generated.sql").read_text()
        load = load.replace("${data}", str(args.data.resolve())).replace("${format}", manifest["format"])
        secs, rss, _ = measure(our_command(args, load))
        rows.append({"pipeline": "load", "engine": "streampulse", "seconds": secs, "rss_mib": rss})
        print(f"load: {secs:.1f} s, {rss:.0f} MiB", file=sys.stderr)
    peers = set(args.peers.split(",")) if args.peers else set()
    sys.path.insert(0, str(ROOT / "bench"))
    import peers as peer_module
    for p in args.pipelines.split(","):
        secs, rss, _ = measure(our_command(args, script_for(p, days, month)))
        rows.append({"pipeline": p, "engine": "streampulse", "seconds": secs, "rss_mib": rss})
        print(f"{p} streampulse: {secs:.1f} s, {rss:.0f} MiB", file=sys.stderr)
        for (peer, pipeline) in sorted(peer_module.PEERS):
            if pipeline != p or peer not in peers:
                continue
            cmd = [sys.executable, str(ROOT / "bench" / "peers.py"), peer, p, "--data", str(args.data),
                   "--run-date", days[-1], "--month", month]
            psecs, prss, out = measure(cmd)
            rows.append({"pipeline": p, "engine": peer, "seconds": psecs, "rss_mib": prss, "output": out.strip()[:200]})
            print(f"{p} {peer}: {psecs:.1f} s, {prss:.0f} MiB -> {out.strip()[:120]}", file=sys.stderr)

    cap = f", memory cap {args.memory_limit}" if args.memory_limit else ""
    print(f"\n{manifest['counts']['plays']:,} plays, SF {manifest['scale_factor']} ({manifest['format']}); "
          f"{platform.node()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}{cap}\n")
    print("| pipeline | engine | wall s | peak RSS MiB | wall vs streampulse |")
    print("|---|---|---|---|---|")
    ours = {r["pipeline"]: r["seconds"] for r in rows if r["engine"] == "streampulse"}
    for r in rows:
        ratio = r["seconds"] / ours[r["pipeline"]] if r["pipeline"] in ours else 1.0
        print(f"| {r['pipeline']} | {r['engine']} | {r['seconds']:.1f} | {r['rss_mib']:.0f} | {ratio:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
