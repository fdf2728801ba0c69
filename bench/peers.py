#!/usr/bin/env python3
"""The same pipelines computed by peer engines on the same generated files, one per process so
that bench/pipelines.py can measure each one's wall time and peak RSS.

    python3 bench/peers.py <peer> <pipeline> --data DIR [--run-date D] [--month YYYY-MM]

peer/pipeline pairs: duckdb A|D|E, polars A|D|E, pandas A|E, numpy B, spark A|D (local mode, pyspark). Definitions are those of
sql/pipelines/*.sql (see each script's header). Each prints one line: rows produced, and for D
the per-model totals, so a run can be checked against ours.
"""

import argparse
import os
import json
import sys
from pathlib import Path

import numpy as np


def source(data: Path, name: str) -> str:
    fmt = json.loads((data / "manifest.json").read_text())["format"]
    reader = "read_csv" if fmt == "csv" else "read_parquet"
    path = data / name
    return f"{reader}('{path}/*.{fmt}')" if path.is_dir() else f"{reader}('{path}.{fmt}')"


def plays_files(data: Path):
    fmt = json.loads((data / "manifest.json").read_text())["format"]
    return sorted((data / "plays").glob(f"*.{fmt}")), fmt


# ---------------------------------------------------------------- A: daily play counts, all days

DUCKDB_A = """
    SELECT CAST(timezone('UTC', CAST(played_at AS TIMESTAMPTZ)) AS DATE) AS play_date, song_id, artist_id,
           count(*) AS plays, count(DISTINCT user_id) AS listeners,
           CAST(sum(ms_played) AS BIGINT) AS ms_played, CAST(sum(CASE WHEN skipped THEN 1 ELSE 0 END) AS BIGINT) AS skips
    FROM {plays}
    GROUP BY ALL
"""


def duckdb_a(data: Path, **_):
    import duckdb
    return duckdb.sql(f"SELECT count(*) FROM ({DUCKDB_A.format(plays=source(data, 'plays'))})").fetchall()[0][0]


def polars_a(data: Path, **_):
    import polars as pl
    files, fmt = plays_files(data)
    scan = pl.scan_parquet(files) if fmt == "parquet" else pl.scan_csv(files, try_parse_dates=True)
    out = (
        scan.select("user_id", "song_id", "artist_id", "played_at", "ms_played", "skipped")
        .with_columns(pl.col("played_at").dt.replace_time_zone(None).dt.date().alias("play_date"))
        .group_by("play_date", "song_id", "artist_id")
        .agg(pl.len().alias("plays"), pl.col("user_id").n_unique().alias("listeners"),
             pl.col("ms_played").sum(), pl.col("skipped").cast(pl.Int64).sum().alias("skips"))
        .collect()
    )
    return out.height


def pandas_a(data: Path, **_):
    import pandas as pd
    files, fmt = plays_files(data)
    cols = ["user_id", "song_id", "artist_id", "played_at", "ms_played", "skipped"]
    read = (lambda f: pd.read_parquet(f, columns=cols)) if fmt == "parquet" else (lambda f: pd.read_csv(f, usecols=cols))
    plays = pd.concat((read(f) for f in files), ignore_index=True)
    plays["play_date"] = pd.to_datetime(plays["played_at"], utc=True).dt.date
    out = plays.groupby(["play_date", "song_id", "artist_id"]).agg(
        plays=("user_id", "size"), listeners=("user_id", "nunique"), ms_played=("ms_played", "sum"), skips=("skipped", "sum"))
    return len(out)


# ---------------------------------------------------------------- B: recommendations

FEATURES = ["tempo", "energy", "danceability", "valence", "acousticness", "instrumentalness", "speechiness", "liveness"]


def numpy_b(data: Path, run_date: str, **_):
    """Exact top-10 for every active user with batched BLAS matrix products (numpy), the way a
    careful pandas user would vectorise the audit's loop. DuckDB reads and aggregates the plays."""
    import duckdb
    songs = duckdb.sql(f"SELECT song_id, {', '.join(FEATURES)} FROM {source(data, 'songs')} ORDER BY song_id").df()
    x = songs[FEATURES].to_numpy(dtype=np.float64)
    vectors = (x - x.mean(axis=0)) / x.std(axis=0)
    unit = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    position = {s: i for i, s in enumerate(songs["song_id"].to_numpy())}
    per_song = duckdb.sql(f"""
        WITH p AS (SELECT user_id, song_id, ms_played, CAST(timezone('UTC', CAST(played_at AS TIMESTAMPTZ)) AS DATE) AS day
                   FROM {source(data, 'plays')})
        SELECT user_id, song_id,
               sum(CASE WHEN day > DATE '{run_date}' - INTERVAL 30 DAY THEN ms_played ELSE 0 END) AS recent_ms
        FROM p WHERE day <= DATE '{run_date}' GROUP BY ALL ORDER BY user_id
    """).df()
    users = per_song["user_id"].to_numpy()
    idx = np.fromiter((position[s] for s in per_song["song_id"].to_numpy()), dtype=np.int64, count=len(per_song))
    w = per_song["recent_ms"].to_numpy(dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    sums = np.add.reduceat(w[:, None] * vectors[idx], starts, axis=0)
    weights = np.add.reduceat(w, starts)
    active = weights > 0
    taste = sums[active] / weights[active, None]
    taste = (taste / np.linalg.norm(taste, axis=1, keepdims=True)).astype(np.float32)
    starts, ends = starts[active], ends[active]
    rows = 0
    for b in range(0, len(taste), 1024):
        scores = taste[b:b + 1024] @ unit.T
        for r in range(scores.shape[0]):
            scores[r, idx[starts[b + r]:ends[b + r]]] = -np.inf
        top = np.argpartition(-scores, 10, axis=1)[:, :10]
        rows += top.size
    return rows


# ---------------------------------------------------------------- D: royalties

# Hamilton's method in plain SQL: floor share, one more cent to the largest remainders (ties to
# the lower artist); HUGEINT keeps amount * weight exact.
_SPLIT = """
    SELECT pool, artist_id, amount, weight,
           (CAST(amount AS HUGEINT) * weight) // total
           + CASE WHEN row_number() OVER (PARTITION BY pool ORDER BY (CAST(amount AS HUGEINT) * weight) % total DESC, artist_id)
                       <= amount - sum((CAST(amount AS HUGEINT) * weight) // total) OVER (PARTITION BY pool)
                  THEN 1 ELSE 0 END AS share
    FROM (SELECT *, sum(weight) OVER (PARTITION BY pool) AS total FROM {src})
"""


def duckdb_royalties_sql(plays: str, subs: str, ads: str, month: str) -> str:
    """Pipeline D's definitions in DuckDB's own SQL; returns (month, model, artist_id, amount_cents, streams)."""
    first = f"DATE '{month}-01'"
    return f"""
        WITH q AS (
            SELECT user_id, artist_id, country, ms_played FROM {plays}
            WHERE ms_played >= 30000
              AND CAST(timezone('UTC', CAST(played_at AS TIMESTAMPTZ)) AS DATE) >= {first}
              AND CAST(timezone('UTC', CAST(played_at AS TIMESTAMPTZ)) AS DATE) < {first} + INTERVAL 1 MONTH
        ),
        sub AS (SELECT user_id, country, sum(amount_cents) AS amount FROM {subs} WHERE month = {first} GROUP BY ALL),
        ad AS (SELECT country, sum(amount_cents) AS amount FROM {ads}
               WHERE day >= {first} AND day < {first} + INTERVAL 1 MONTH GROUP BY ALL),
        pool AS (SELECT country, sum(amount) AS amount FROM (FROM sub SELECT country, amount UNION ALL FROM ad) GROUP BY ALL),
        ca AS (SELECT country, artist_id, count(*) AS streams FROM q GROUP BY ALL),
        ua AS (SELECT user_id, artist_id, sum(ms_played) AS ms FROM q GROUP BY ALL),
        pr_in AS (SELECT p.country AS pool, ca.artist_id, p.amount, ca.streams AS weight FROM pool p JOIN ca USING (country)),
        ad_in AS (SELECT a.country AS pool, ca.artist_id, a.amount, ca.streams AS weight FROM ad a JOIN ca USING (country)),
        uc_in AS (SELECT s.user_id AS pool, ua.artist_id, s.amount, ua.ms AS weight FROM sub s JOIN ua USING (user_id)),
        alloc AS (
            SELECT 'pro_rata' AS model, artist_id, share FROM ({_SPLIT.format(src="pr_in")})
            UNION ALL SELECT 'user_centric', artist_id, share FROM ({_SPLIT.format(src="ad_in")})
            UNION ALL SELECT 'user_centric', artist_id, share FROM ({_SPLIT.format(src="uc_in")})
            -- nothing to split by: the whole pool, unallocated
            UNION ALL SELECT 'pro_rata', NULL, amount FROM pool WHERE country NOT IN (SELECT country FROM ca)
            UNION ALL SELECT 'user_centric', NULL, amount FROM ad WHERE country NOT IN (SELECT country FROM ca)
            UNION ALL SELECT 'user_centric', NULL, amount FROM sub WHERE user_id NOT IN (SELECT user_id FROM ua)
        ),
        streams AS (SELECT artist_id, count(*) AS n FROM q GROUP BY ALL)
        SELECT CAST({first} AS VARCHAR) AS month, model, a.artist_id, CAST(sum(share) AS BIGINT) AS amount_cents,
               coalesce(max(s.n), 0) AS streams
        FROM alloc a LEFT JOIN streams s USING (artist_id)
        GROUP BY model, a.artist_id
        ORDER BY model, a.artist_id NULLS FIRST
    """


def duckdb_d(data: Path, month: str, **_):
    import duckdb
    sql = duckdb_royalties_sql(source(data, "plays"), source(data, "subscriptions"), source(data, "ad_revenue"), month)
    return duckdb.sql(f"SELECT model, count(*), sum(amount_cents) FROM ({sql}) GROUP BY model ORDER BY model").fetchall()


def _polars_split(inputs):
    """Hamilton's method on (pool, artist_id, amount, weight): the floor of amount * weight / total,
    then one more cent to the largest remainders of each pool (ties to the lower artist), in
    Int128 so amount * weight is exact; as _SPLIT."""
    import polars as pl
    exact = pl.col("amount").cast(pl.Int128) * pl.col("weight").cast(pl.Int128)
    total = pl.col("weight").sum().over("pool").cast(pl.Int128)
    return (
        inputs.with_columns((exact // total).alias("floor"), (exact % total).alias("rem"))
        .sort(["pool", "rem", "artist_id"], descending=[False, True, False])
        .with_columns((pl.int_range(1, pl.len() + 1).over("pool")).alias("rank"),
                      (pl.col("amount") - pl.col("floor").sum().over("pool")).alias("left"))
        .select("artist_id", (pl.col("floor") + (pl.col("rank") <= pl.col("left")).cast(pl.Int128)).alias("share"))
    )


def polars_d(data: Path, month: str, **_):
    """Pipeline D (pro-rata and user-centric royalties) in Polars' lazy API, as duckdb_royalties_sql."""
    import datetime as dt

    import polars as pl
    files, fmt = plays_files(data)
    if fmt != "parquet":
        sys.exit("the Polars peer of D reads Parquet (datagen --format parquet)")
    first = dt.date.fromisoformat(f"{month}-01")
    nxt = (first + dt.timedelta(days=32)).replace(day=1)
    day = pl.col("played_at").dt.convert_time_zone("UTC").dt.replace_time_zone(None).dt.date()
    q = (pl.scan_parquet(files).select("user_id", "artist_id", "country", "ms_played", "played_at")
         .filter((pl.col("ms_played") >= 30000) & (day >= first) & (day < nxt)).drop("played_at"))
    sub = (pl.scan_parquet(data / "subscriptions.parquet").filter(pl.col("month").cast(pl.Date) == first)
           .group_by("user_id", "country").agg(pl.col("amount_cents").sum().alias("amount")))
    ad = (pl.scan_parquet(data / "ad_revenue.parquet")
          .filter((pl.col("day").cast(pl.Date) >= first) & (pl.col("day").cast(pl.Date) < nxt))
          .group_by("country").agg(pl.col("amount_cents").sum().alias("amount")))
    pool = pl.concat([sub.select("country", "amount"), ad]).group_by("country").agg(pl.col("amount").sum())
    q = q.cache()
    ca = q.group_by("country", "artist_id").agg(pl.len().cast(pl.Int64).alias("weight"))
    ua = q.group_by("user_id", "artist_id").agg(pl.col("ms_played").cast(pl.Int64).sum().alias("weight"))
    pr_in = pool.join(ca, on="country").rename({"country": "pool"})
    ad_in = ad.join(ca, on="country").rename({"country": "pool"})
    uc_in = sub.select("user_id", "amount").join(ua, on="user_id").rename({"user_id": "pool"})

    def unsplit(frame, key, against):
        """A pool nothing can be split by: the whole amount, unallocated (no artist)."""
        return (frame.join(against.select(key).unique(), on=key, how="anti")
                .select(pl.lit(None, pl.Int64).alias("artist_id"), pl.col("amount").cast(pl.Int128).alias("share")))

    alloc = pl.concat([
        _polars_split(pr_in).with_columns(pl.lit("pro_rata").alias("model")),
        _polars_split(ad_in).with_columns(pl.lit("user_centric").alias("model")),
        _polars_split(uc_in).with_columns(pl.lit("user_centric").alias("model")),
        unsplit(pool, "country", ca).with_columns(pl.lit("pro_rata").alias("model")),
        unsplit(ad, "country", ca).with_columns(pl.lit("user_centric").alias("model")),
        unsplit(sub, "user_id", ua).with_columns(pl.lit("user_centric").alias("model")),
    ])
    streams = q.group_by("artist_id").agg(pl.len().alias("n"))
    royalties = (alloc.join(streams, on="artist_id", how="left")
                 .group_by("model", "artist_id")
                 .agg(pl.col("share").sum().cast(pl.Int64).alias("amount_cents"), pl.col("n").max().fill_null(0)))
    out = (royalties.group_by("model").agg(pl.len(), pl.col("amount_cents").sum()).sort("model").collect())
    return [tuple(r) for r in out.iter_rows()]


# ---------------------------------------------------------------- E: A/B analytics

DUCKDB_E_PER_USER = """
    WITH per_user AS (
        SELECT e.experiment_id, e.traffic_share, e.treatment_share, p.user_id,
               CAST(('0x' || left(sha256(e.salt || ':' || CAST(p.user_id AS VARCHAR)), 16)) AS UBIGINT) % 100 AS bucket,
               count(*) FILTER (WHERE d >= e.start_date) AS plays,
               count(*) FILTER (WHERE d >= e.start_date AND p.skipped) AS skips,
               coalesce(sum(p.ms_played) FILTER (WHERE d >= e.start_date), 0) AS ms,
               count(*) FILTER (WHERE d < e.start_date) AS pre_plays,
               count(*) FILTER (WHERE d < e.start_date AND p.skipped) AS pre_skips,
               coalesce(sum(p.ms_played) FILTER (WHERE d < e.start_date), 0) AS pre_ms
        FROM (SELECT *, CAST(timezone('UTC', CAST(played_at AS TIMESTAMPTZ)) AS DATE) AS d FROM {plays}) p, {experiments} e
        WHERE p.d BETWEEN e.start_date - INTERVAL 14 DAY AND e.end_date
        GROUP BY ALL
        HAVING count(*) FILTER (WHERE d >= e.start_date) > 0
    )
    SELECT experiment_id, user_id, plays, skips, ms, pre_plays, pre_skips, pre_ms,
           CASE WHEN bucket >= round(100 * traffic_share * (1 - treatment_share)) THEN 'treatment' ELSE 'control' END AS variant
    FROM per_user WHERE bucket < round(100 * traffic_share)
"""


def duckdb_e(data: Path, **_):
    import duckdb
    per_user = duckdb.sql(DUCKDB_E_PER_USER.format(plays=source(data, "plays"), experiments=source(data, "experiments"))).df()
    return _e_tests(per_user)


def pandas_e(data: Path, **_):
    import hashlib

    import pandas as pd
    files, fmt = plays_files(data)
    cols = ["user_id", "played_at", "ms_played", "skipped"]
    read = (lambda f: pd.read_parquet(f, columns=cols)) if fmt == "parquet" else (lambda f: pd.read_csv(f, usecols=cols))
    plays = pd.concat((read(f) for f in files), ignore_index=True)
    plays["day"] = pd.to_datetime(plays["played_at"], utc=True).dt.strftime("%Y-%m-%d")
    reader = pd.read_parquet if fmt == "parquet" else pd.read_csv
    experiments = reader(data / f"experiments.{fmt}")
    frames = []
    for _, e in experiments.iterrows():
        start, end = pd.Timestamp(e["start_date"]), str(e["end_date"])[:10]
        pre_start = (start - pd.Timedelta(days=14)).strftime("%Y-%m-%d")
        window = plays[(plays["day"] >= pre_start) & (plays["day"] <= end)]
        inside = window["day"] >= start.strftime("%Y-%m-%d")
        sums = []
        for prefix, part in (("", window[inside]), ("pre_", window[~inside])):
            g = part.groupby("user_id")
            sums.append(pd.DataFrame({f"{prefix}plays": g.size(), f"{prefix}skips": g["skipped"].sum(),
                                      f"{prefix}ms": g["ms_played"].sum()}))
        per_user = sums[0].join(sums[1], how="left").fillna(0).reset_index()
        salt = e["salt"]
        buckets = [int.from_bytes(hashlib.sha256(f"{salt}:{u}".encode()).digest()[:8], "big") % 100
                   for u in per_user["user_id"]]
        per_user["bucket"] = buckets
        per_user = per_user[per_user.bucket < round(100 * e["traffic_share"])]
        cut = round(100 * e["traffic_share"] * (1 - e["treatment_share"]))
        per_user["variant"] = ["treatment" if b >= cut else "control" for b in per_user["bucket"]]
        per_user["experiment_id"] = e["experiment_id"]
        frames.append(per_user)
    return _e_tests(pd.concat(frames))


def polars_e(data: Path, **_):
    """Pipeline E's per-user sums in Polars (sha256 buckets by the polars-hash plugin), then the
    same statistics as the other peers (_e_tests)."""
    import datetime as dt
    import math

    import polars as pl
    import polars_hash  # noqa: F401  (registers the .chash namespace)
    files, fmt = plays_files(data)
    if fmt != "parquet":
        sys.exit("the Polars peer of E reads Parquet (datagen --format parquet)")
    day = pl.col("played_at").dt.convert_time_zone("UTC").dt.replace_time_zone(None).dt.date()
    plays = (pl.scan_parquet(files).select("user_id", "played_at", "ms_played", "skipped")
             .with_columns(day.alias("d")).drop("played_at"))
    experiments = pl.read_parquet(data / "experiments.parquet")
    frames = []
    for e in experiments.iter_rows(named=True):
        start, end = e["start_date"], e["end_date"]
        pre_start = start - dt.timedelta(days=14)
        post = pl.col("d") >= start
        per_user = (
            plays.filter((pl.col("d") >= pre_start) & (pl.col("d") <= end))
            .group_by("user_id")
            .agg(post.sum().cast(pl.Int64).alias("plays"), (post & pl.col("skipped")).sum().cast(pl.Int64).alias("skips"),
                 pl.col("ms_played").filter(post).cast(pl.Int64).sum().alias("ms"),
                 (~post).sum().cast(pl.Int64).alias("pre_plays"),
                 (~post & pl.col("skipped")).sum().cast(pl.Int64).alias("pre_skips"),
                 pl.col("ms_played").filter(~post).cast(pl.Int64).sum().alias("pre_ms"))
            .filter(pl.col("plays") > 0)
        )
        # bucket = first 8 bytes of sha256('salt:user_id') as an unsigned big-endian integer,
        # mod 100, from its two 32-bit halves (2^32 mod 100 = 96) so nothing overflows.
        digest = (pl.lit(f"{e['salt']}:") + pl.col("user_id").cast(pl.Utf8)).chash.sha2_256()
        high = digest.str.slice(0, 8).str.to_integer(base=16).cast(pl.Int64)
        low = digest.str.slice(8, 8).str.to_integer(base=16).cast(pl.Int64)
        bucket = ((high % 100) * 96 + low % 100) % 100
        enrolled = math.floor(100 * e["traffic_share"] + 0.5)
        cut = math.floor(100 * e["traffic_share"] * (1 - e["treatment_share"]) + 0.5)
        per_user = (per_user.with_columns(bucket.alias("bucket")).filter(pl.col("bucket") < enrolled)
                    .with_columns(pl.when(pl.col("bucket") >= cut).then(pl.lit("treatment")).otherwise(pl.lit("control"))
                                  .alias("variant"), pl.lit(e["experiment_id"]).alias("experiment_id")))
        frames.append(per_user.collect())
    return _e_tests(pl.concat(frames).to_pandas())


def _e_tests(per_user):
    """Pipeline E's statistics from the per-user sums: delta method + CUPED for the four ratio and
    mean metrics (per-user linearisation, least squares for theta, Welch t), the pooled z-test of
    the engaged-user rate, and the SRM chi-square. Returns (tests run, per-user rows), the
    second to check peers against each other."""
    import numpy as np
    from scipy import stats
    out = 0
    per_user = per_user.assign(one=1.0, pre_one=1.0)
    for _, g in per_user.groupby("experiment_id"):
        treat = (g.variant == "treatment").to_numpy()
        stats.chisquare([treat.sum(), (~treat).sum()])
        for num, den in (("skips", "plays"), ("ms", "plays"), ("plays", "one"), ("ms", "one")):
            z, w = np.empty(len(g)), np.empty(len(g))
            for m in (treat, ~treat):
                for arr, x, y in ((z, g[num], g[den]), (w, g["pre_" + num], g["pre_" + den])):
                    x, y = x.to_numpy(float)[m], y.to_numpy(float)[m]
                    r = x.sum() / y.sum() if y.sum() else 0.0
                    arr[m] = r + (x - r * y) / (y.mean() if y.sum() else 1.0)
            design = np.column_stack([np.ones(len(g)), treat, w])
            theta = np.linalg.lstsq(design, z, rcond=None)[0][2]
            adjusted = z - theta * w
            stats.ttest_ind(adjusted[treat], adjusted[~treat], equal_var=False)
            out += 2
        engaged = (g.ms >= 30 * 60 * 1000).to_numpy()
        x, n = np.array([engaged[treat].sum(), engaged[~treat].sum()]), np.array([treat.sum(), (~treat).sum()])
        pooled = x.sum() / n.sum()
        stats.norm.sf(abs(x[0] / n[0] - x[1] / n[1]) / np.sqrt(pooled * (1 - pooled) * (1 / n[0] + 1 / n[1])))
        out += 2
    return out, len(per_user)


# ---------------------------------------------------------------- Spark local (the audit's pick)

def _spark():
    """A local Spark session on every core, dates in UTC (as ours), with room to work: the driver
    JVM is the whole of local mode."""
    from pyspark.sql import SparkSession
    return (SparkSession.builder.master(f"local[{os.cpu_count()}]").appName("streampulse-peer")
            .config("spark.driver.memory", os.environ.get("SPARK_DRIVER_MEMORY", "8g"))
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.shuffle.partitions", str(4 * (os.cpu_count() or 1)))
            .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false").getOrCreate())


def _spark_stop(spark):
    """Stop Spark and wait for its JVM, so that the JVM's peak RSS counts as this process's
    (wait4 reports a child's waited-for descendants)."""
    from pyspark import SparkContext
    gateway = SparkContext._gateway
    spark.stop()
    proc = getattr(gateway, "proc", None)
    gateway.shutdown()
    if proc is not None:
        proc.stdin.close()
        proc.wait(120)


def _spark_view(spark, data: Path, name: str):
    fmt = json.loads((data / "manifest.json").read_text())["format"]
    path = data / name
    target = str(path) if path.is_dir() else f"{path}.{fmt}"
    df = spark.read.parquet(target) if fmt == "parquet" else spark.read.csv(target, header=True, inferSchema=True)
    df.createOrReplaceTempView(name)


def spark_a(data: Path, **_):
    spark = _spark()
    _spark_view(spark, data, "plays")
    n = spark.sql("""
        SELECT count(*) FROM (
          SELECT CAST(played_at AS DATE) AS play_date, song_id, artist_id, count(*) AS plays,
                 count(DISTINCT user_id) AS listeners, sum(ms_played) AS ms_played,
                 sum(CASE WHEN skipped THEN 1 ELSE 0 END) AS skips
          FROM plays GROUP BY 1, 2, 3)""").collect()[0][0]
    _spark_stop(spark)
    return n


# Pipeline D in Spark SQL: the same definitions as duckdb_royalties_sql (DECIMAL(38,0) for the
# exact amount * weight, `div` for integer division).
_SPARK_SPLIT = """
    SELECT pool, artist_id, amount, weight,
           CAST(div(CAST(amount AS DECIMAL(38,0)) * weight, total) AS BIGINT)
           + CASE WHEN row_number() OVER (PARTITION BY pool ORDER BY (CAST(amount AS DECIMAL(38,0)) * weight) % total DESC, artist_id)
                       <= amount - sum(div(CAST(amount AS DECIMAL(38,0)) * weight, total)) OVER (PARTITION BY pool)
                  THEN 1 ELSE 0 END AS share
    FROM (SELECT *, sum(weight) OVER (PARTITION BY pool) AS total FROM {src})
"""


def spark_d(data: Path, month: str, **_):
    spark = _spark()
    for name in ("plays", "subscriptions", "ad_revenue"):
        _spark_view(spark, data, name)
    first = f"DATE '{month}-01'"
    split = _SPARK_SPLIT.format
    rows = spark.sql(f"""
        WITH q AS (
            SELECT user_id, artist_id, country, ms_played FROM plays
            WHERE ms_played >= 30000 AND CAST(played_at AS DATE) >= {first}
              AND CAST(played_at AS DATE) < add_months({first}, 1)),
        sub AS (SELECT user_id, country, sum(amount_cents) AS amount FROM subscriptions
                WHERE CAST(month AS DATE) = {first} GROUP BY user_id, country),
        ad AS (SELECT country, sum(amount_cents) AS amount FROM ad_revenue
               WHERE CAST(day AS DATE) >= {first} AND CAST(day AS DATE) < add_months({first}, 1) GROUP BY country),
        pool AS (SELECT country, sum(amount) AS amount
                 FROM (SELECT country, amount FROM sub UNION ALL SELECT country, amount FROM ad) GROUP BY country),
        ca AS (SELECT country, artist_id, count(*) AS streams FROM q GROUP BY country, artist_id),
        ua AS (SELECT user_id, artist_id, sum(ms_played) AS ms FROM q GROUP BY user_id, artist_id),
        pr_in AS (SELECT p.country AS pool, ca.artist_id, p.amount, ca.streams AS weight FROM pool p JOIN ca ON p.country = ca.country),
        ad_in AS (SELECT a.country AS pool, ca.artist_id, a.amount, ca.streams AS weight FROM ad a JOIN ca ON a.country = ca.country),
        uc_in AS (SELECT s.user_id AS pool, ua.artist_id, s.amount, ua.ms AS weight FROM sub s JOIN ua ON s.user_id = ua.user_id),
        alloc AS (
            SELECT 'pro_rata' AS model, artist_id, share FROM ({split(src="pr_in")})
            UNION ALL SELECT 'user_centric', artist_id, share FROM ({split(src="ad_in")})
            UNION ALL SELECT 'user_centric', artist_id, share FROM ({split(src="uc_in")})
            UNION ALL SELECT 'pro_rata', NULL, amount FROM pool WHERE country NOT IN (SELECT country FROM ca)
            UNION ALL SELECT 'user_centric', NULL, amount FROM ad WHERE country NOT IN (SELECT country FROM ca)
            UNION ALL SELECT 'user_centric', NULL, amount FROM sub WHERE user_id NOT IN (SELECT user_id FROM ua)),
        streams AS (SELECT artist_id, count(*) AS n FROM q GROUP BY artist_id),
        royalties AS (
            SELECT model, a.artist_id, CAST(sum(share) AS BIGINT) AS amount_cents, coalesce(max(s.n), 0) AS streams
            FROM alloc a LEFT JOIN streams s ON a.artist_id = s.artist_id
            GROUP BY model, a.artist_id)
        SELECT model, count(*), sum(amount_cents) FROM royalties GROUP BY model ORDER BY model""").collect()
    _spark_stop(spark)
    return [tuple(r) for r in rows]


PEERS = {
    ("duckdb", "A"): duckdb_a, ("polars", "A"): polars_a, ("pandas", "A"): pandas_a, ("spark", "A"): spark_a,
    ("numpy", "B"): numpy_b,
    ("duckdb", "D"): duckdb_d, ("polars", "D"): polars_d, ("spark", "D"): spark_d,
    ("duckdb", "E"): duckdb_e, ("polars", "E"): polars_e, ("pandas", "E"): pandas_e,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("peer")
    ap.add_argument("pipeline")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--run-date", default="2026-10-30")
    ap.add_argument("--month", default="2026-10")
    args = ap.parse_args()
    f = PEERS.get((args.peer, args.pipeline))
    if f is None:
        sys.exit(f"no peer {args.peer} for pipeline {args.pipeline}; have {sorted(PEERS)}")
    print(f(args.data, run_date=args.run_date, month=args.month))


if __name__ == "__main__":
    main()
