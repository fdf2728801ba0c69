"""The custom SQL functions, run through the real server on generated data, checked against
independent implementations: numpy (vectors), exact rational arithmetic (allocation),
hashlib (bucketing) and scipy.stats (tests), to 1e-9 or better."""

import hashlib
import math
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

RNG = np.random.default_rng(20261122)


def _ingest(conn, name, table):
    cur = conn.cursor()
    cur.execute("CREATE SCHEMA IF NOT EXISTS fn")
    cur.adbc_ingest(name, table, mode="replace", db_schema_name="fn")
    return cur


def test_cosine_similarity_matches_numpy(conn):
    a = RNG.normal(size=(500, 8))
    b = RNG.normal(size=(500, 8))
    t = pa.table({"id": np.arange(500), "a": list(a), "b": list(b)})
    cur = _ingest(conn, "vec", t)
    cur.execute("SELECT id, array_cosine_similarity(a, b), array_inner_product(a, b), array_distance(a, b) FROM fn.vec ORDER BY id")
    rows = cur.fetchall()
    expected_cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    got = np.array([r[1] for r in rows])
    np.testing.assert_allclose(got, expected_cos, rtol=0, atol=1e-12)
    np.testing.assert_allclose([r[2] for r in rows], (a * b).sum(1), rtol=1e-12)
    np.testing.assert_allclose([r[3] for r in rows], np.linalg.norm(a - b, axis=1), rtol=1e-12)
    cur.execute("SELECT array_cosine_similarity([1.0, 2.0], [0.0, 0.0]), array_cosine_similarity(NULL, [1.0])")
    assert cur.fetchone() == (None, None)
    with pytest.raises(Exception, match="different lengths"):
        cur.execute("SELECT array_cosine_similarity([1.0, 2.0], [1.0, 2.0, 3.0])")
        cur.fetchall()


def test_weighted_avg_vector_matches_numpy(conn):
    n = 3000
    groups = RNG.integers(0, 40, n)
    vecs = RNG.normal(size=(n, 6))
    weights = RNG.integers(0, 300_000, n).astype(float)  # ms played, some zero
    t = pa.table({"g": groups, "v": list(vecs), "w": weights})
    cur = _ingest(conn, "wavg", t)
    # EXPLAIN shows the partial and final aggregation, so state and merge are exercised.
    cur.execute("EXPLAIN SELECT g, weighted_avg_vector(v, w) FROM fn.wavg GROUP BY g")
    plan = "\n".join(str(r[1]) for r in cur.fetchall())
    assert "mode=Partial" in plan and "mode=Final" in plan, plan
    cur.execute("SELECT g, weighted_avg_vector(v, w) FROM fn.wavg GROUP BY g ORDER BY g")
    for g, got in cur.fetchall():
        mask = groups == g
        expected = (vecs[mask] * weights[mask, None]).sum(0) / weights[mask].sum()
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def _exact_largest_remainder(amount, weights):
    total = sum(weights)
    quotas = [Fraction(amount * w, total) for w in weights]
    shares = [math.floor(q) for q in quotas]
    left = amount - sum(shares)
    order = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - shares[i]), i))
    for i in order[:left]:
        shares[i] += 1
    return shares


def test_largest_remainder_is_exact_per_pool(conn):
    rows = []
    amounts = {}
    for pool in range(25):
        amount = int(RNG.integers(0, 10_000_000))
        amounts[pool] = amount
        for k in range(int(RNG.integers(1, 60))):
            rows.append((pool, k, amount, int(RNG.integers(0, 1000))))
    t = pa.table({"pool": [r[0] for r in rows], "k": [r[1] for r in rows],
                  "amount": [r[2] for r in rows], "w": [r[3] for r in rows]})
    cur = _ingest(conn, "alloc", t)
    cur.execute("SELECT pool, k, largest_remainder(amount, w) OVER (PARTITION BY pool ORDER BY k) AS share "
                "FROM fn.alloc ORDER BY pool, k")
    got = {}
    for pool, k, share in cur.fetchall():
        got.setdefault(pool, []).append(share)
    for pool, amount in amounts.items():
        weights = [r[3] for r in rows if r[0] == pool]
        if sum(weights) == 0:
            assert all(s is None for s in got[pool])
            continue
        assert sum(got[pool]) == amount
        assert got[pool] == _exact_largest_remainder(amount, weights)


def test_ab_bucket_matches_hashlib(conn):
    cur = conn.cursor()
    cur.execute("SELECT value, ab_bucket(value, 'exp-shuffle-v2', 100), ab_bucket(CAST(value AS VARCHAR), 'exp-shuffle-v2', 7) "
                "FROM generate_series(1, 2000) AS t(value) ORDER BY value")
    for uid, b100, b7 in cur.fetchall():
        h = int.from_bytes(hashlib.sha256(f"exp-shuffle-v2:{uid}".encode()).digest()[:8], "big")
        assert (b100, b7) == (h % 100, h % 7)
    with pytest.raises(Exception, match="buckets must be positive"):
        cur.execute("SELECT ab_bucket(1, 's', 0)")
        cur.fetchall()


def test_two_proportion_z_test_matches_scipy(conn):
    n_t = RNG.integers(50, 100_000, 200)
    n_c = RNG.integers(50, 100_000, 200)
    x_t = (n_t * RNG.uniform(0.05, 0.6, 200)).astype(int)
    x_c = (n_c * RNG.uniform(0.05, 0.6, 200)).astype(int)
    t = pa.table({"i": np.arange(200), "xt": x_t, "nt": n_t, "xc": x_c, "nc": n_c})
    cur = _ingest(conn, "props", t)
    cur.execute("SELECT i, two_proportion_z_test(xt, nt, xc, nc, 0.9) FROM fn.props ORDER BY i")
    for i, r in cur.fetchall():
        pt, pc = x_t[i] / n_t[i], x_c[i] / n_c[i]
        pooled = (x_t[i] + x_c[i]) / (n_t[i] + n_c[i])
        z = (pt - pc) / math.sqrt(pooled * (1 - pooled) * (1 / n_t[i] + 1 / n_c[i]))
        se = math.sqrt(pt * (1 - pt) / n_t[i] + pc * (1 - pc) / n_c[i])
        crit = stats.norm.ppf(0.95)
        assert r["z"] == pytest.approx(z, rel=1e-12, abs=1e-12)
        assert r["p_value"] == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-9, abs=1e-12)
        assert r["ci_low"] == pytest.approx(pt - pc - crit * se, abs=1e-9)
        assert r["ci_high"] == pytest.approx(pt - pc + crit * se, abs=1e-9)
        assert r["lift"] == pytest.approx((pt - pc) / pc, rel=1e-12)


def test_welch_t_test_matches_scipy(conn):
    rows = []
    samples = []
    for i in range(60):
        a = RNG.gamma(2.0, float(RNG.uniform(1, 50)), int(RNG.integers(3, 400)))
        b = RNG.gamma(2.0, float(RNG.uniform(1, 50)), int(RNG.integers(3, 400)))
        samples.append((a, b))
        rows.append((i, a.mean(), a.var(ddof=1), len(a), b.mean(), b.var(ddof=1), len(b)))
    cols = list(zip(*rows))
    t = pa.table({"i": cols[0], "mt": cols[1], "vt": cols[2], "nt": cols[3], "mc": cols[4], "vc": cols[5], "nc": cols[6]})
    cur = _ingest(conn, "welch", t)
    cur.execute("SELECT i, welch_t_test(mt, vt, nt, mc, vc, nc) FROM fn.welch ORDER BY i")
    for i, r in cur.fetchall():
        a, b = samples[i]
        ref = stats.ttest_ind(a, b, equal_var=False)
        assert r["t"] == pytest.approx(ref.statistic, rel=1e-9)
        assert r["p_value"] == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-15)
        assert r["df"] == pytest.approx(ref.df, rel=1e-9)
        ci = ref.confidence_interval(0.95)
        assert r["ci_low"] == pytest.approx(ci.low, rel=1e-9, abs=1e-9)
        assert r["ci_high"] == pytest.approx(ci.high, rel=1e-9, abs=1e-9)


def test_ratio_moments_and_ratio_test_match_a_linearisation_and_least_squares(conn):
    """The delta method and CUPED from SQL against numpy/statsmodels: per-unit linearisation, a
    least-squares theta, scipy's Welch test of the adjusted values."""
    import statsmodels.api as sm
    rows = []
    for g in range(12):
        for variant in (0, 1):
            n = int(RNG.integers(30, 800))
            activity = RNG.pareto(1.5, n) + 1
            den = RNG.poisson(activity * 5) + 1
            num = RNG.binomial(den, RNG.beta(2, 6, n))
            pre_den = RNG.poisson(activity * 4)
            pre_num = RNG.binomial(pre_den, 0.25)
            rows += [(g, variant, *v) for v in zip(num, den, pre_num, pre_den)]
    cols = list(zip(*rows))
    t = pa.table({"g": cols[0], "variant": cols[1], "num": cols[2], "den": cols[3], "pre_num": cols[4],
                  "pre_den": cols[5]})
    cur = _ingest(conn, "units", t)
    cur.execute("EXPLAIN SELECT g, ratio_moments(num, den) FROM fn.units GROUP BY g")
    plan = "\n".join(str(r[1]) for r in cur.fetchall())
    assert "mode=Partial" in plan and "mode=Final" in plan, plan
    cur.execute("""
        WITH m AS (SELECT g, variant, ratio_moments(num, den, pre_num, pre_den) AS m FROM fn.units GROUP BY g, variant)
        SELECT t.g, ratio_test(t.m, c.m) AS plain, ratio_test(t.m, c.m, true, 0.9) AS cuped
        FROM m t JOIN m c ON t.g = c.g AND t.variant = 1 AND c.variant = 0 ORDER BY t.g""")
    data = np.array(rows, dtype=float)
    for g, plain, cuped in cur.fetchall():
        d = data[data[:, 0] == g]
        treat = d[:, 1] == 1
        z, w = np.empty(len(d)), np.empty(len(d))
        for m in (treat, ~treat):
            for out, x, y in ((z, d[m, 2], d[m, 3]), (w, d[m, 4], d[m, 5])):
                r = x.sum() / y.sum()
                out[m] = r + (x - r * y) / y.mean()
        ref = stats.ttest_ind(z[treat], z[~treat], equal_var=False)
        assert plain["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
        assert plain["df"] == pytest.approx(ref.df, rel=1e-9)
        assert plain["theta"] is None and plain["variance_reduction"] is None
        theta = sm.OLS(z, np.column_stack([np.ones(len(z)), treat, w])).fit().params[2]
        adjusted = z - theta * w
        ref_cuped = stats.ttest_ind(adjusted[treat], adjusted[~treat], equal_var=False)
        ci = ref_cuped.confidence_interval(0.9)
        assert cuped["theta"] == pytest.approx(theta, rel=1e-9)
        assert cuped["p_value"] == pytest.approx(ref_cuped.pvalue, rel=1e-9)
        assert cuped["ci_low"] == pytest.approx(ci.low, rel=1e-9, abs=1e-12)
        assert cuped["ci_high"] == pytest.approx(ci.high, rel=1e-9, abs=1e-12)
        se_raw = (z[treat].mean() - z[~treat].mean()) / ref.statistic
        se_adj = (adjusted[treat].mean() - adjusted[~treat].mean()) / ref_cuped.statistic
        assert cuped["variance_reduction"] == pytest.approx(1 - (se_adj / se_raw) ** 2, rel=1e-9, abs=1e-12)
    with pytest.raises(Exception, match="must be the result of ratio_moments"):
        cur.execute("SELECT ratio_test(1.0, 2.0)")
        cur.fetchall()
    with pytest.raises(Exception, match="ratio_moments takes"):
        cur.execute("SELECT ratio_moments(num) FROM fn.units")
        cur.fetchall()


def test_srm_p_value_matches_scipy_chisquare(conn):
    n_t = RNG.integers(0, 200_000, 100)
    n_c = RNG.integers(1, 200_000, 100)
    share = RNG.uniform(0.05, 0.95, 100)
    cur = _ingest(conn, "srm", pa.table({"i": np.arange(100), "t": n_t, "c": n_c, "s": share}))
    cur.execute("SELECT i, srm_p_value(t, c, s) FROM fn.srm ORDER BY i")
    for i, p in cur.fetchall():
        n = n_t[i] + n_c[i]
        ref = stats.chisquare([n_t[i], n_c[i]], [n * share[i], n * (1 - share[i])]).pvalue
        assert p == pytest.approx(ref, rel=1e-9, abs=1e-300), (n_t[i], n_c[i], share[i])
    with pytest.raises(Exception, match="treatment_share must be in"):
        cur.execute("SELECT srm_p_value(10, 10, 1.5)")
        cur.fetchall()


def test_functions_are_documented(conn):
    cur = conn.cursor()
    cur.execute("SELECT routine_name FROM information_schema.routines WHERE routine_name IN "
                "('array_cosine_similarity', 'weighted_avg_vector', 'largest_remainder', 'ab_bucket', "
                "'two_proportion_z_test', 'welch_t_test', 'ratio_moments', 'ratio_test', 'srm_p_value') ORDER BY 1")
    assert [r[0] for r in cur.fetchall()] == ["ab_bucket", "array_cosine_similarity", "largest_remainder",
                                              "ratio_moments", "ratio_test", "srm_p_value",
                                              "two_proportion_z_test", "weighted_avg_vector", "welch_t_test"]
