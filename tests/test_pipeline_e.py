"""Pipeline E (A/B analytics) on generated data, checked against an independent computation
from the raw files: pandas for the per-user statistics, hashlib for assignment, scipy.stats for
the tests (to 1e-9). Also: the planted effect is found, the A/A test finds none, reruns do not
duplicate."""

import hashlib
import math

import numpy as np
import pandas as pd
import pyarrow.csv as pacsv
import pytest
from scipy import stats

from conftest import ROOT, Server, adbc_connect, generate_and_load, run_cli


@pytest.fixture(scope="module")
def pipeline_e(tmp_path_factory):
    base = tmp_path_factory.mktemp("pipeline_e")
    data, wh = generate_and_load(base, seed=7)
    for _ in range(2):  # the rerun must replace, not duplicate
        run_cli("sql", "--warehouse", str(wh), "-f", str(ROOT / "sql" / "pipelines" / "e_ab_analytics.sql"))
    s = Server(str(wh), log_path=str(base / "server.log")).start()
    conn = adbc_connect(s.uri)
    cur = conn.cursor()
    cur.execute("SELECT * FROM music.experiment_results")
    results = cur.fetch_arrow_table().to_pandas()
    conn.close()
    s.stop()
    return data, results


def _oracle(data):
    plays = pd.concat(pacsv.read_csv(p).to_pandas() for p in sorted((data / "plays").glob("*.csv")))
    plays["play_date"] = pd.to_datetime(plays["played_at"], utc=True).dt.strftime("%Y-%m-%d")
    users = pacsv.read_csv(data / "users.csv").to_pandas()
    experiments = pacsv.read_csv(data / "experiments.csv").to_pandas()
    out = {}
    for _, e in experiments.iterrows():
        start, end = str(e["start_date"])[:10], str(e["end_date"])[:10]
        bucket = {u: int.from_bytes(hashlib.sha256(f"{e['salt']}:{u}".encode()).digest()[:8], "big") % 100
                  for u in users["user_id"]}
        window = plays[(plays["play_date"] >= start) & (plays["play_date"] <= end)]
        per_user = window.groupby("user_id").agg(plays=("play_id", "size"), skips=("skipped", "sum"), ms=("ms_played", "sum"))
        per_user["variant"] = ["treatment" if bucket[u] >= 50 else "control" for u in per_user.index]
        out[int(e["experiment_id"])] = per_user
    return out


def test_pipeline_e_matches_pandas_and_scipy(pipeline_e):
    data, results = pipeline_e
    assert len(results) == 2 * 2 * 3  # experiments x variants x metrics: no duplicates after rerun
    oracle = _oracle(data)
    for exp_id, per_user in oracle.items():
        t, c = per_user[per_user.variant == "treatment"], per_user[per_user.variant == "control"]
        r = results[results.experiment_id == exp_id].set_index(["variant", "metric"])
        assert r.loc[("treatment", "skip_rate"), "users"] == len(t)
        assert r.loc[("control", "skip_rate"), "users"] == len(c)
        # skip rate: pooled two-proportion z-test
        xt, nt, xc, nc = t.skips.sum(), t.plays.sum(), c.skips.sum(), c.plays.sum()
        pt, pc = xt / nt, xc / nc
        pooled = (xt + xc) / (nt + nc)
        z = (pt - pc) / math.sqrt(pooled * (1 - pooled) * (1 / nt + 1 / nc))
        se = math.sqrt(pt * (1 - pt) / nt + pc * (1 - pc) / nc)
        row = r.loc[("treatment", "skip_rate")]
        assert row.value == pytest.approx(pt, rel=1e-12)
        assert r.loc[("control", "skip_rate"), "value"] == pytest.approx(pc, rel=1e-12)
        assert row.lift == pytest.approx((pt - pc) / pc, rel=1e-9)
        assert row.p_value == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-9, abs=1e-300)
        assert row.ci_low == pytest.approx(pt - pc - stats.norm.ppf(0.975) * se, abs=1e-9)
        assert row.ci_high == pytest.approx(pt - pc + stats.norm.ppf(0.975) * se, abs=1e-9)
        assert np.isnan(r.loc[("control", "skip_rate"), "p_value"])
        # per-user means: Welch t-test over the per-user values
        for metric, column in [("plays_per_user", "plays"), ("ms_played_per_user", "ms")]:
            a, b = t[column].to_numpy(float), c[column].to_numpy(float)
            ref = stats.ttest_ind(a, b, equal_var=False)
            ci = ref.confidence_interval(0.95)
            row = r.loc[("treatment", metric)]
            assert row.value == pytest.approx(a.mean(), rel=1e-12)
            assert row.lift == pytest.approx((a.mean() - b.mean()) / b.mean(), rel=1e-9)
            assert row.p_value == pytest.approx(ref.pvalue, rel=1e-9)
            assert row.ci_low == pytest.approx(ci.low, rel=1e-9, abs=1e-9)
            assert row.ci_high == pytest.approx(ci.high, rel=1e-9, abs=1e-9)


def test_planted_effect_found_and_aa_test_clean(pipeline_e):
    _, results = pipeline_e
    r = results.set_index(["experiment_id", "variant", "metric"])
    shuffle = r.loc[(1, "treatment", "skip_rate")]
    assert shuffle.p_value < 1e-6 and shuffle.lift < -0.1  # treatment skips ~20 % less
    aa = r.loc[(2, "treatment", "skip_rate")]
    assert aa.p_value > 0.001 and abs(aa.lift) < 0.05
