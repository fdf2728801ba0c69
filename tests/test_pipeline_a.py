"""Pipeline A (daily play counts) on generated data, compared row for row with DuckDB computing
the same definition with its own SQL on the same raw CSV files; reruns replace the day."""

import duckdb
import pytest

from conftest import ROOT, Server, adbc_connect, generate_and_load, run_cli

DAYS = ["2026-10-03", "2026-10-04"]


@pytest.fixture(scope="module")
def pipeline_a(tmp_path_factory):
    base = tmp_path_factory.mktemp("pipeline_a")
    data, wh = generate_and_load(base, seed=11)
    script = str(ROOT / "sql" / "pipelines" / "a_daily_play_counts.sql")
    for day in DAYS + [DAYS[0]]:  # the first day twice: a rerun
        run_cli("sql", "--warehouse", str(wh), "-f", script, "--param", f"run_date={day}")
    return data, wh


def test_pipeline_a_matches_duckdb(pipeline_a):
    data, wh = pipeline_a
    s = Server(str(wh)).start()
    conn = adbc_connect(s.uri)
    cur = conn.cursor()
    cur.execute("SELECT CAST(play_date AS VARCHAR), song_id, artist_id, plays, listeners, ms_played, skips "
                "FROM music.daily_play_counts ORDER BY 1, 2, 3")
    ours = cur.fetchall()
    conn.close()
    s.stop()
    oracle = duckdb.sql(f"""
        WITH p AS (
            SELECT CAST(timezone('UTC', CAST(played_at AS TIMESTAMPTZ)) AS DATE) AS day, *
            FROM read_csv('{data}/plays/*.csv', header = true)
        )
        SELECT CAST(day AS VARCHAR), song_id, artist_id, count(*), count(DISTINCT user_id),
               CAST(sum(ms_played) AS BIGINT), CAST(sum(CASE WHEN skipped THEN 1 ELSE 0 END) AS BIGINT)
        FROM p
        WHERE day IN ({", ".join(f"DATE '{d}'" for d in DAYS)})
        GROUP BY 1, 2, 3
        ORDER BY 1, 2, 3
    """).fetchall()
    assert len(ours) == len(oracle) > 1000
    assert ours == [tuple(r) for r in oracle]


def test_rerun_replaces_only_its_day(pipeline_a):
    data, wh = pipeline_a
    out = run_cli("sql", "--warehouse", str(wh), "-e",
                  "SELECT count(*) AS n FROM music.daily_play_counts WHERE play_date = DATE '2026-10-04'").stdout
    before = out
    run_cli("sql", "--warehouse", str(wh), "-f", str(ROOT / "sql" / "pipelines" / "a_daily_play_counts.sql"),
            "--param", "run_date=2026-10-03")
    after = run_cli("sql", "--warehouse", str(wh), "-e",
                    "SELECT count(*) AS n FROM music.daily_play_counts WHERE play_date = DATE '2026-10-04'").stdout
    assert before == after
    totals = run_cli("sql", "--warehouse", str(wh), "-e",
                     "SELECT count(*) - count(DISTINCT (play_date, song_id, artist_id)) AS dup FROM music.daily_play_counts").stdout
    assert "| 0   |" in totals or "| 0 |" in totals
