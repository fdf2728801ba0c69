"""Pipeline B (recommendations) on generated data: run over Flight SQL (`streampulse sql
--connect`), rerun embedded, and compared for every active user with an exact top-10 computed
independently with numpy from the raw files (bench/recommend_quality.py's oracle)."""

import sys

import pytest

from conftest import ROOT, generate_and_load, run_cli, run_over_flight

sys.path.insert(0, str(ROOT / "bench"))
import recommend_quality as rq  # noqa: E402

SCRIPT = str(ROOT / "sql" / "pipelines" / "b_recommendations.sql")
RUN_DATE = "2026-10-20"  # mid-month: plays after run_date must neither count nor be excluded


@pytest.fixture(scope="module")
def pipeline_b(tmp_path_factory):
    base = tmp_path_factory.mktemp("pipeline_b")
    data, wh = generate_and_load(base, seed=3)
    run_over_flight(wh, base, SCRIPT, f"run_date={RUN_DATE}")
    run_cli("sql", "--warehouse", str(wh), "-f", SCRIPT, "--param", f"run_date={RUN_DATE}")  # rerun, embedded
    return data, wh


def test_pipeline_b_matches_exact_numpy(pipeline_b):
    data, wh = pipeline_b
    active = rq.active_users(data, RUN_DATE)
    exact = rq.exact_top_k(data, RUN_DATE, active)
    ours = rq.ours(str(wh), RUN_DATE, active)
    assert len(exact) == len(active) > 500
    assert set(ours) == set(exact)  # every active user, no one else
    for user, expected in exact.items():
        got = ours[user]
        assert len(got) == 10
        assert [s for s, _ in got] == [s for s, _ in expected], f"user {user}"
        for (_, a), (_, b) in zip(got, expected):
            assert abs(a - b) < 1e-9


def test_rerun_does_not_duplicate(pipeline_b):
    _, wh = pipeline_b
    out = run_cli("sql", "--warehouse", str(wh), "--format", "csv", "-e",
                  "SELECT (SELECT count(*) FROM music.recommendations) AS n, "
                  "(SELECT count(*) FROM (SELECT DISTINCT user_id, rank FROM music.recommendations)) AS ranks, "
                  "(SELECT count(*) FROM (SELECT DISTINCT user_id, song_id FROM music.recommendations)) AS songs").stdout
    n, ranks, songs = out.strip().splitlines()[1].split(",")
    assert int(n) == int(ranks) == int(songs) > 5000


def test_cluster_hit_rate_beats_random(pipeline_b):
    data, wh = pipeline_b
    hits = rq.cluster_hit_rate(str(wh), data, RUN_DATE)
    assert hits["recommendations"] > 2 * hits["random_songs"]
