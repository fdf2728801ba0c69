#!/usr/bin/env python3
"""Time pipelines A, B, D, E on our engine and on peers, on the same generated files, in the
same run; print a Markdown table (wall time, peak RSS, ratio to ours) for bench/RESULTS.md.

    streampulse datagen --scale 0.1 --format parquet --out /data/sf0.1
    python3 bench/pipelines.py --data /data/sf0.1 --warehouse /data/wh-sf0.1 [--pipelines A,B,D,E]
                               [--peers duckdb,polars,pandas,numpy] [--memory-limits none,1GiB,512MiB]

Ours: `streampulse sql -f sql/pipelines/<script>` (release build preferred: $STREAMPULSE_BIN or the
cargo target folder) against a warehouse loaded once with sql/load_generated.sql (the load is
timed too), once per memory cap asked for (`--memory-limit`; "none" = the default cap). A = all days of the month in one process (30 runs of the daily script, the audit's
monthly volume); B = run_date the last day; D = the month; E = whole table. Peers:
bench/peers.py, each in its own process. Peak RSS is the process's own high-water mark
(getrusage via wait4), so it includes everything the process allocated, pooled or not. For ours
the table also shows the memory pool's peak (largest over the script's statements) and the bytes
and files spilled (summed), from `streampulse sql --stats`. Peers run once, beside the first cap.
"""

import argparse
import json
import os
import re
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
    """Run `cmd`; return (seconds, peak RSS in MiB, stdout, stderr)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env={**os.environ, "STREAMPULSE_LOG": LOG, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"{' '.join(map(str, cmd))} failed:\n{err.read().decode()[-3000:]}")
        return seconds, usage.ru_maxrss / 1024, out.read().decode(), err.read().decode()


# top_k_nearest logs the pairs it could have scored and those it did, per partition.
LOG = "warn,streampulse_udfs::table::top_k_nearest=info"
PAIRS = re.compile(r"top_k_nearest partition done.*?pairs=(\d+) pairs_scored=(\d+)")


def pruning_stats(stderr):
    """(user x song pairs, pairs scored) summed over top_k_nearest's partitions, or None."""
    found = [tuple(map(int, m.groups())) for m in PAIRS.finditer(stderr)]
    if not found:
        return None
    return sum(f[0] for f in found), sum(f[1] for f in found)


STATS = re.compile(r"\[peak_memory=(\d+) spilled_bytes=(\d+) spill_count=(\d+)\]")


def spill_stats(stderr):
    """Pool peak (max over statements), spilled bytes and spill files (summed) from `--stats` lines."""
    found = [tuple(map(int, m.groups())) for m in STATS.finditer(stderr)]
    if not found:
        return {}
    return {"pool_peak_mib": max(f[0] for f in found) / 2**20, "spilled_mib": sum(f[1] for f in found) / 2**20,
            "spill_files": sum(f[2] for f in found)}


def our_command(args, script_text, cap=None):
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script_text)
    cmd = [binary(), "sql", "--warehouse", args.warehouse, "--stats", "-f", f.name]
    if cap:
        cmd += ["--memory-limit", cap]
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
    ap.add_argument("--memory-limits", default="none",
                    help="comma-separated caps to run our engine under (--memory-limit), 'none' = default, e.g. none,1GiB,512MiB")
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
        secs, rss, _, _ = measure(our_command(args, load))
        rows.append({"pipeline": "load", "engine": "streampulse", "seconds": secs, "rss_mib": rss})
        print(f"load: {secs:.1f} s, {rss:.0f} MiB", file=sys.stderr)
    peers = set(args.peers.split(",")) if args.peers else set()
    sys.path.insert(0, str(ROOT / "bench"))
    import peers as peer_module
    caps = [None if c == "none" else c for c in args.memory_limits.split(",")]
    for p in args.pipelines.split(","):
        for cap in caps:
            secs, rss, _, err = measure(our_command(args, script_for(p, days, month), cap))
            rows.append({"pipeline": p, "engine": "streampulse", "cap": cap or "default", "seconds": secs,
                         "rss_mib": rss, **spill_stats(err)})
            if pruned := pruning_stats(err):
                rows[-1].update(pairs=pruned[0], pairs_scored=pruned[1])
            print(f"{p} streampulse (cap {cap or 'default'}): {secs:.1f} s, {rss:.0f} MiB, {spill_stats(err)}", file=sys.stderr)
        for (peer, pipeline) in sorted(peer_module.PEERS):
            if pipeline != p or peer not in peers:
                continue
            cmd = [sys.executable, str(ROOT / "bench" / "peers.py"), peer, p, "--data", str(args.data),
                   "--run-date", days[-1], "--month", month]
            psecs, prss, out, _ = measure(cmd)
            rows.append({"pipeline": p, "engine": peer, "seconds": psecs, "rss_mib": prss, "output": out.strip()[:200]})
            print(f"{p} {peer}: {psecs:.1f} s, {prss:.0f} MiB -> {out.strip()[:120]}", file=sys.stderr)

    print(f"\n{manifest['counts']['plays']:,} plays, SF {manifest['scale_factor']} ({manifest['format']}); "
          f"{platform.node()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}\n")
    print("| pipeline | engine | memory cap | wall s | peak RSS MiB | pool peak MiB | spilled MiB (files) | wall vs streampulse |")
    print("|---|---|---|---|---|---|---|---|")
    ours = {}
    for r in rows:
        if r["engine"] == "streampulse":
            ours.setdefault(r["pipeline"], r["seconds"])
    for r in rows:
        ratio = r["seconds"] / ours[r["pipeline"]] if r["pipeline"] in ours else 1.0
        pool = f"{r['pool_peak_mib']:.0f}" if "pool_peak_mib" in r else ""
        spilled = f"{r['spilled_mib']:.0f} ({r['spill_files']})" if "spilled_mib" in r else ""
        print(f"| {r['pipeline']} | {r['engine']} | {r.get('cap', '')} | {r['seconds']:.1f} | {r['rss_mib']:.0f} | "
              f"{pool} | {spilled} | {ratio:.2f}x |")
    for r in rows:
        if "pairs" in r:
            print(f"\n{r['pipeline']} (cap {r['cap']}): {r['pairs']:,} user x song pairs, {r['pairs_scored']:,} scored "
                  f"({100 * (1 - r['pairs_scored'] / r['pairs']):.1f} % skipped); "
                  f"{r['pairs'] / r['seconds']:.3g} pairs/s answered, {r['pairs_scored'] / r['seconds']:.3g} scores/s computed")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
