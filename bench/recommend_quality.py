#!/usr/bin/env python3
"""Score pipeline B's recommendations: exactness against numpy and quality against the planted
taste clusters.

    python3 bench/recommend_quality.py --warehouse ./warehouse --data ./data --run-date 2026-10-30 [--sample 2000]

- recall@10 against an exact top-10 computed independently with numpy (DuckDB only reads and
  filters the raw files) for a random sample of active users, with the same definitions as
  sql/pipelines/b_recommendations.sql;
- cluster hit rate: share of recommended songs whose genre is one of the two genres of the
  user's planted taste cluster (truth/), beside two baselines: the same share among the songs
  the users actually played, and for songs drawn at random from the catalogue.

Reads the recommendations through `streampulse sql --format csv` ($STREAMPULSE_BIN or the cargo
target folder). Needs numpy, pandas and duckdb (tests/requirements.txt).
"""

import argparse
import io
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import FEATURES, source as _source  # noqa: E402  (one reader of generated folders)

K = 10


def binary() -> str:
    if os.environ.get("STREAMPULSE_BIN"):
        return os.environ["STREAMPULSE_BIN"]
    root = Path(__file__).resolve().parent.parent
    bases = [Path(os.environ["CARGO_TARGET_DIR"])] if os.environ.get("CARGO_TARGET_DIR") else []
    bases += [Path.home() / ".cache" / "streampulse-target", root / "target"]
    for base in bases:
        for profile in ("release", "debug"):
            if (base / profile / "streampulse").exists():
                return str(base / profile / "streampulse")
    sys.exit("streampulse binary not found: build it or set STREAMPULSE_BIN")


def query(warehouse: str, sql: str) -> pd.DataFrame:
    r = subprocess.run([binary(), "sql", "--warehouse", warehouse, "--format", "csv", "-e", sql],
                       capture_output=True, text=True, env={**os.environ, "STREAMPULSE_LOG": "warn"})
    if r.returncode != 0:
        sys.exit(f"streampulse sql failed:\n{r.stderr}")
    return pd.read_csv(io.StringIO(r.stdout)) if r.stdout.strip() else pd.DataFrame()


def song_vectors(data: Path):
    songs = duckdb.sql(f"SELECT song_id, {', '.join(FEATURES)}, genre FROM {_source(data, 'songs')} ORDER BY song_id").df()
    x = songs[FEATURES].to_numpy(dtype=np.float64)
    z = (x - x.mean(axis=0)) / x.std(axis=0)  # population std, as stddev_pop
    return songs["song_id"].to_numpy(), z, songs["genre"].to_numpy()


def active_users(data: Path, run_date: str) -> np.ndarray:
    return duckdb.sql(f"""
        SELECT DISTINCT user_id FROM {_source(data, 'plays')}
        WHERE CAST(timezone('UTC', CAST(played_at AS TIMESTAMPTZ)) AS DATE)
              BETWEEN DATE '{run_date}' - INTERVAL 29 DAY AND DATE '{run_date}'
          AND ms_played > 0
        ORDER BY user_id
    """).df()["user_id"].to_numpy()


def exact_top_k(data: Path, run_date: str, users: np.ndarray, k: int = K) -> dict:
    """{user_id: [(song_id, score), ...]} for `users`, best first, ties to the lower song id."""
    song_ids, vectors, _ = song_vectors(data)
    position = {s: i for i, s in enumerate(song_ids)}
    duckdb.register("wanted", pd.DataFrame({"user_id": users}))
    per_song = duckdb.sql(f"""
        WITH p AS (
            SELECT user_id, song_id, ms_played,
                   CAST(timezone('UTC', CAST(played_at AS TIMESTAMPTZ)) AS DATE) AS day
            FROM {_source(data, 'plays')}
            WHERE user_id IN (SELECT user_id FROM wanted)
        )
        SELECT user_id, song_id,
               sum(CASE WHEN day > DATE '{run_date}' - INTERVAL 30 DAY THEN ms_played ELSE 0 END) AS recent_ms
        FROM p WHERE day <= DATE '{run_date}'
        GROUP BY ALL ORDER BY user_id, song_id
    """).df()
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    out = {}
    for user, rows in per_song.groupby("user_id"):
        idx = np.array([position[s] for s in rows["song_id"]])
        w = rows["recent_ms"].to_numpy(dtype=np.float64)
        if w.sum() <= 0:
            continue
        taste = (w[:, None] * vectors[idx]).sum(axis=0) / w.sum()
        taste /= np.linalg.norm(taste)
        scores = unit @ taste
        scores[idx] = -np.inf  # already played
        order = np.lexsort((song_ids, -scores))[:k]
        out[int(user)] = [(int(song_ids[i]), float(scores[i])) for i in order if np.isfinite(scores[i])]
    return out


def ours(warehouse: str, run_date: str, users) -> dict:
    ids = ", ".join(str(int(u)) for u in users)
    df = query(warehouse, f"SELECT user_id, rank, song_id, score FROM music.recommendations "
                          f"WHERE run_date = DATE '{run_date}' AND user_id IN ({ids}) ORDER BY user_id, rank")
    return {int(u): list(zip(g["song_id"].astype(int), g["score"].astype(float))) for u, g in df.groupby("user_id")}


def recall_at_k(got: dict, exact: dict) -> float:
    hits = sum(len({s for s, _ in got.get(u, [])} & {s for s, _ in e}) for u, e in exact.items())
    return hits / max(1, sum(len(e) for e in exact.values()))


def cluster_hit_rate(warehouse: str, data: Path, run_date: str) -> dict:
    recs = query(warehouse, f"SELECT user_id, song_id FROM music.recommendations WHERE run_date = DATE '{run_date}'")
    _, _, genres = song_vectors(data)
    song_ids = duckdb.sql(f"SELECT song_id FROM {_source(data, 'songs')} ORDER BY song_id").df()["song_id"].to_numpy()
    genre_of = dict(zip(song_ids, genres))
    users = duckdb.sql(f"SELECT * FROM {_source(data, 'truth/user_clusters')}").df()
    clusters = duckdb.sql(f"SELECT * FROM {_source(data, 'truth/clusters')}").df().set_index("cluster")
    wanted = {c: {r.genre_1, r.genre_2} for c, r in clusters.iterrows()}
    cluster_of = dict(zip(users["user_id"], users["cluster"]))
    hit = np.mean([genre_of[s] in wanted[cluster_of[u]] for u, s in zip(recs["user_id"], recs["song_id"])])
    played = duckdb.sql(f"""
        SELECT avg(CASE WHEN s.genre IN (c.genre_1, c.genre_2) THEN 1.0 ELSE 0.0 END) AS share
        FROM {_source(data, 'plays')} p
        JOIN {_source(data, 'truth/user_clusters')} u USING (user_id)
        JOIN {_source(data, 'truth/clusters')} c USING (cluster)
        JOIN {_source(data, 'songs')} s ON s.song_id = p.song_id
    """).fetchall()[0][0]
    share = pd.Series(genres).value_counts(normalize=True)
    random = np.mean([share.get(g1, 0) + share.get(g2, 0) for g1, g2 in (sorted(wanted[cluster_of[u]]) for u in recs["user_id"])])
    return {"recommendations": float(hit), "users_own_plays": float(played), "random_songs": float(random),
            "users": int(recs["user_id"].nunique()), "rows": int(len(recs))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warehouse", required=True)
    ap.add_argument("--data", required=True, type=Path, help="the folder `streampulse datagen` wrote")
    ap.add_argument("--run-date", required=True)
    ap.add_argument("--sample", type=int, default=2000, help="active users checked against the exact numpy top-10")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    active = active_users(args.data, args.run_date)
    rng = np.random.default_rng(args.seed)
    sample = np.sort(rng.choice(active, size=min(args.sample, len(active)), replace=False))
    exact = exact_top_k(args.data, args.run_date, sample)
    got = ours(args.warehouse, args.run_date, sample)
    recall = recall_at_k(got, exact)
    worst = max((abs(a[1] - b[1]) for u, e in exact.items() for a, b in zip(got.get(u, []), e)), default=0.0)
    print(f"recall@{K} against exact numpy top-{K}: {recall:.4f} over {len(exact)} sampled active users "
          f"(largest score difference {worst:.2e})")
    hits = cluster_hit_rate(args.warehouse, args.data, args.run_date)
    print(f"cluster hit rate: {hits['recommendations']:.3f} of {hits['rows']} recommendations to {hits['users']} users "
          f"are in the user's planted taste genres; baselines: users' own plays {hits['users_own_plays']:.3f}, "
          f"random songs {hits['random_songs']:.3f}")


if __name__ == "__main__":
    main()
