"""Pipeline E (A/B analytics) on generated data.

- Every number against an independent computation from the raw files (to 1e-9): pandas for the
  per-user sums, hashlib for assignment; for ratio metrics the delta method as a per-user
  linearisation fed to scipy's Welch t-test; CUPED as a statsmodels least-squares regression of
  the metric on variant and covariate; the conversion metric by statsmodels' proportions_ztest;
  sample ratio mismatch by scipy.stats.chisquare.
- Calibration, which an oracle sharing the code's formulas cannot give: A/A tests over many
  random salts must call ~5 % significant at alpha = 0.05 for every metric (within the binomial
  99 % band), where the old play-level test of skip rate calls far more.
- Power: the planted effect (treatment skips 20 % less in shuffle-v2) is found and its interval
  covers the truth; home-layout (no effect) shows none.
- A sample ratio mismatch (treatment users lost) flags the experiment; reruns do not duplicate.

STREAMPULSE_AA_SALTS (default 200) and STREAMPULSE_AA_SCALE (default 0.001) make the calibration
larger (bench/RESULTS.md records a 1,000-salt run).
"""

import hashlib
import math
import os
import shutil

import numpy as np
import pandas as pd
import pyarrow.csv as pacsv
import pytest
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.proportion import proportions_ztest

from conftest import ROOT, Server, adbc_connect, generate_and_load, run_cli

PIPELINE = ROOT / "sql" / "pipelines" / "e_ab_analytics.sql"
PRE_DAYS = 14
ENGAGED_MS = 30 * 60 * 1000
ALPHA = 0.05
AA_SALTS = int(os.environ.get("STREAMPULSE_AA_SALTS", "200"))
AA_SCALE = os.environ.get("STREAMPULSE_AA_SCALE", "0.001")
# metric -> (numerator, denominator) of the per-user sums; "one" is 1 per user (a mean)
RATIO_METRICS = {
    "skip_rate": ("skips", "plays"),
    "ms_per_play": ("ms", "plays"),
    "plays_per_user": ("plays", "one"),
    "ms_played_per_user": ("ms", "one"),
}
METRICS = sorted([*RATIO_METRICS, "engaged_user_rate"])


def _run_pipeline(wh, timeout=300):
    run_cli("sql", "--warehouse", str(wh), "-f", str(PIPELINE), timeout=timeout)


def _read_results(wh, base):
    s = Server(str(wh), log_path=str(base / "server.log")).start()
    try:
        conn = adbc_connect(s.uri)
        cur = conn.cursor()
        cur.execute("SELECT * FROM music.experiment_results")
        results = cur.fetch_arrow_table().to_pandas()
        conn.close()
    finally:
        s.stop()
    return results


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    base = tmp_path_factory.mktemp("pipeline_e")
    data, wh = generate_and_load(base, seed=7)
    return base, data, wh


@pytest.fixture(scope="module")
def pipeline_e(generated):
    base, data, wh = generated
    for _ in range(2):  # the rerun must replace, not duplicate
        _run_pipeline(wh)
    return data, _read_results(wh, base)


# ---- the independent computation -------------------------------------------------------------


def _plays(data):
    plays = pd.concat(pacsv.read_csv(p).to_pandas() for p in sorted((data / "plays").glob("*.csv")))
    plays["play_date"] = pd.to_datetime(plays["played_at"], utc=True).dt.tz_localize(None).dt.normalize()
    return plays


def _per_user(plays, start, end):
    """Per user who played in [start, end]: the sums there and over the PRE_DAYS days before."""
    pre_start = start - pd.Timedelta(days=PRE_DAYS)
    window = plays[(plays.play_date >= pre_start) & (plays.play_date <= end)]
    inside = window.play_date >= start
    sums = {}
    for prefix, part in (("", window[inside]), ("pre_", window[~inside])):
        g = part.groupby("user_id")
        sums[prefix] = pd.DataFrame({f"{prefix}plays": g.size(), f"{prefix}skips": g["skipped"].sum(),
                                     f"{prefix}ms": g["ms_played"].sum()})
    per_user = sums[""].join(sums["pre_"], how="left").fillna(0).astype(float)
    per_user["one"] = per_user["pre_one"] = 1.0
    return per_user


def _bucket(salt, user_id):
    return int.from_bytes(hashlib.sha256(f"{salt}:{user_id}".encode()).digest()[:8], "big") % 100


def _assign(per_user, salt, traffic_share, treatment_share):
    enrolled, control = round(100 * traffic_share), round(100 * traffic_share * (1 - treatment_share))
    buckets = np.array([_bucket(salt, u) for u in per_user.index])
    out = per_user[buckets < enrolled].copy()
    out["treatment"] = (buckets[buckets < enrolled] >= control).astype(float)
    return out, (enrolled - control) / enrolled


def _ratio_oracle(users, num, den, cuped=True):
    """Delta method as a linearisation: per user L = (x - R y) / mean(y) around the group's ratio
    R, so that R + L has mean R and variance n Var(R); the Welch t-test of R + L between groups
    is the delta-method test. CUPED: least squares of R + L on [1, treatment, R' + L'] (the
    pre-period's linearisation) gives theta and the adjusted difference; the Welch test of
    R + L - theta (R' + L') gives its interval."""
    z, w = np.empty(len(users)), np.empty(len(users))
    for g in (0.0, 1.0):
        m = (users.treatment == g).to_numpy()
        d = users[m]
        for out, x, y in ((z, d[num], d[den]), (w, d["pre_" + num], d["pre_" + den])):
            ratio = x.sum() / y.sum() if y.sum() else 0.0
            out[m] = ratio + (x - ratio * y) / (y.mean() if y.sum() else 1.0)
    t = users.treatment.to_numpy() == 1.0
    theta = 0.0
    if cuped and np.var(w) > 0:
        fit = sm.OLS(z, np.column_stack([np.ones(len(z)), users.treatment.to_numpy(), w])).fit()
        theta = fit.params[2]
    adjusted = z - theta * w
    ref = stats.ttest_ind(adjusted[t], adjusted[~t], equal_var=False)
    raw = stats.ttest_ind(z[t], z[~t], equal_var=False)
    diff = adjusted[t].mean() - adjusted[~t].mean()
    if cuped and theta:
        assert diff == pytest.approx(fit.params[1], rel=1e-9, abs=1e-12)  # the regression's effect
    se_adj, se_raw = diff / ref.statistic, (z[t].mean() - z[~t].mean()) / raw.statistic
    control_value = users[~t][num].sum() / users[~t][den].sum()
    ci = ref.confidence_interval(1 - ALPHA)
    return dict(diff=diff, lift=diff / control_value, p_value=ref.pvalue, ci_low=ci.low, ci_high=ci.high,
                variance_reduction=1 - (se_adj / se_raw) ** 2)


def _experiments(data):
    return pacsv.read_csv(data / "experiments.csv").to_pandas()


# ---- against the independent computation -----------------------------------------------------


def test_pipeline_e_matches_an_independent_computation(pipeline_e):
    data, results = pipeline_e
    experiments = _experiments(data)
    assert len(results) == len(experiments) * 2 * len(METRICS)  # no duplicates after the rerun
    plays = _plays(data)
    for _, e in experiments.iterrows():
        per_user = _per_user(plays, pd.Timestamp(e.start_date), pd.Timestamp(e.end_date))
        users, share = _assign(per_user, e.salt, e.traffic_share, e.treatment_share)
        t, c = users[users.treatment == 1.0], users[users.treatment == 0.0]
        r = results[results.experiment_id == e.experiment_id].set_index(["variant", "metric"])
        srm = stats.chisquare([len(t), len(c)], [len(users) * share, len(users) * (1 - share)]).pvalue
        for metric in METRICS:
            treated, control = r.loc[("treatment", metric)], r.loc[("control", metric)]
            assert (treated.users, control.users) == (len(t), len(c))
            assert treated.srm_p_value == pytest.approx(srm, rel=1e-9)
            assert control.srm_p_value == pytest.approx(srm, rel=1e-9)
            assert pd.isna(treated.flag) and pd.isna(control.flag)
            assert pd.isna(control.p_value) and pd.isna(control.method)  # the baseline
            if metric == "engaged_user_rate":
                xt, xc = (t.ms >= ENGAGED_MS).sum(), (c.ms >= ENGAGED_MS).sum()
                _, p = proportions_ztest([xt, xc], [len(t), len(c)])
                pt, pc = xt / len(t), xc / len(c)
                se = math.sqrt(pt * (1 - pt) / len(t) + pc * (1 - pc) / len(c))
                crit = stats.norm.ppf(1 - ALPHA / 2)
                expected = dict(diff=pt - pc, lift=(pt - pc) / pc, p_value=p, ci_low=pt - pc - crit * se,
                                ci_high=pt - pc + crit * se)
                values = (pt, pc)
                assert treated.method == "two-proportion z-test, user as trial"
                assert pd.isna(treated.cuped_variance_reduction)
            else:
                num, den = RATIO_METRICS[metric]
                expected = _ratio_oracle(users, num, den)
                values = (t[num].sum() / t[den].sum(), c[num].sum() / c[den].sum())
                kind = "delta method, Welch t" if den != "one" else "Welch t"
                assert treated.method == kind + " + CUPED"
                assert treated.cuped_variance_reduction == pytest.approx(expected["variance_reduction"], rel=1e-9)
                assert 0 < treated.cuped_variance_reduction < 1
            assert (treated.value, control.value) == (pytest.approx(values[0], rel=1e-12),
                                                      pytest.approx(values[1], rel=1e-12))
            for column in ("diff", "lift", "ci_low", "ci_high"):
                assert treated[column] == pytest.approx(expected[column], rel=1e-9, abs=1e-12), (metric, column)
            assert treated.p_value == pytest.approx(expected["p_value"], rel=1e-9, abs=1e-300), metric


def test_planted_effect_is_found_and_home_layout_shows_none(pipeline_e):
    _, results = pipeline_e
    r = results.set_index(["experiment_id", "variant", "metric"])
    shuffle = r.loc[(1, "treatment", "skip_rate")]
    control_rate = r.loc[(1, "control", "skip_rate")].value
    # the generator multiplies treatment's skip probability by 0.8 from the start date: lift -20 %
    assert shuffle.p_value < 1e-6
    assert shuffle.ci_low / control_rate < -0.2 < shuffle.ci_high / control_rate, shuffle
    # power: the chance a rerun on fresh users of this size finds the true effect at alpha 0.05
    se = (shuffle.ci_high - shuffle.ci_low) / (2 * stats.norm.ppf(1 - ALPHA / 2))
    power = stats.norm.sf(stats.norm.ppf(1 - ALPHA / 2) - 0.2 * control_rate / se)
    assert power > 0.99, power
    home = results[(results.experiment_id == 2) & (results.variant == "treatment")]
    assert (home.p_value > 0.01).all(), home[["metric", "lift", "p_value"]]


# ---- calibration: A/A tests over many salts --------------------------------------------------


@pytest.fixture(scope="module")
def aa_runs(generated, tmp_path_factory):
    """The real pipeline over AA_SALTS experiments that differ only by salt: no effect exists."""
    base, data, wh = generated
    if AA_SCALE != "0.001":
        base = tmp_path_factory.mktemp("pipeline_e_aa")
        data, wh = generate_and_load(base, seed=7, scale=AA_SCALE)
    aa_wh = base / "wh_aa"
    shutil.copytree(wh, aa_wh)
    run_cli("sql", "--warehouse", str(aa_wh), "-e",
            "CREATE OR REPLACE TABLE music.experiments AS "
            "SELECT 100 + g.value AS experiment_id, 'aa-' || g.value AS name, 'aa-salt-' || g.value AS salt, "
            "e.variants, e.traffic_share, e.treatment_share, e.start_date, e.end_date, e.assignment "
            f"FROM generate_series(1, {AA_SALTS}) AS g(value) "
            "CROSS JOIN (SELECT * FROM music.experiments WHERE experiment_id = 2) e")
    _run_pipeline(aa_wh, timeout=max(300, 3 * AA_SALTS))  # every salt joins every play: O(plays x salts)
    return data, _read_results(aa_wh, base)


def _binomial_band(n):
    low, high = stats.binom.interval(0.99, n, ALPHA)
    return low / n, high / n


def test_aa_false_positive_rate_is_calibrated_for_every_metric(aa_runs):
    data, results = aa_runs
    treated = results[results.variant == "treatment"]
    low, high = _binomial_band(AA_SALTS)
    rates = {m: (g.p_value < ALPHA).mean() for m, g in treated.groupby("metric")}
    assert sorted(rates) == METRICS and all(treated.groupby("metric").size() == AA_SALTS)
    assert all(low <= r <= high for r in rates.values()), (rates, (low, high))
    # the assignment itself: SRM p-values are uniform too, and almost nothing is flagged
    srm = treated.drop_duplicates("experiment_id").srm_p_value
    assert low <= (srm < ALPHA).mean() <= high
    assert (treated.flag.notna()).mean() <= high / 10


def test_play_level_test_of_skip_rate_is_not_calibrated(aa_runs):
    """The test above has teeth: on the same splits, the old pooled z-test over plays (each play
    an independent trial) calls far more than the 99 % band allows."""
    data, results = aa_runs
    e = _experiments(data).iloc[0]
    per_user = _per_user(_plays(data), pd.Timestamp(e.start_date), pd.Timestamp(e.end_date))
    significant = 0
    for i in range(1, AA_SALTS + 1):
        users, _ = _assign(per_user, f"aa-salt-{i}", e.traffic_share, e.treatment_share)
        t, c = users[users.treatment == 1.0], users[users.treatment == 0.0]
        _, p = proportions_ztest([t.skips.sum(), c.skips.sum()], [t.plays.sum(), c.plays.sum()])
        significant += p < ALPHA
        # the same splits as the pipeline's
        assert len(t) == results[(results.experiment_id == 100 + i) & (results.variant == "treatment")].users.iloc[0]
    assert significant / AA_SALTS > _binomial_band(AA_SALTS)[1], significant


# ---- sample ratio mismatch -------------------------------------------------------------------


def test_sample_ratio_mismatch_flags_the_experiment(generated, pipeline_e):
    """A tenth of home-layout's treatment users lose every play (a crash on the new layout):
    the split no longer matches the configured 50 %, and every row of that experiment says so."""
    base, _, wh = generated
    lossy = base / "wh_srm"
    shutil.copytree(wh, lossy)
    run_cli("sql", "--warehouse", str(lossy), "-e",
            "DELETE FROM music.plays WHERE ab_bucket(user_id, 'exp-home-layout', 100) >= 50 AND user_id % 10 = 0")
    _run_pipeline(lossy)
    results = _read_results(lossy, base)
    home = results[results.experiment_id == 2]
    assert (home.srm_p_value < 0.001).all()
    assert home.flag.str.startswith("sample ratio mismatch").all()
    shuffle = results[results.experiment_id == 1]
    assert (shuffle.srm_p_value > 0.001).all() and shuffle.flag.isna().all()
