"""One catalog scenario run against any warehouse root (local folder or S3), so local and S3
are held to exactly the same behaviour."""

import pyarrow as pa
import pytest
from adbc_driver_manager import Error

from conftest import Server, adbc_connect

CHECK_QUERIES = {
    "plays": "SELECT count(*), sum(song_id), count(DISTINCT play_date) FROM keep.plays",
    "per_day": "SELECT play_date, n FROM keep.per_day ORDER BY play_date",
    "raw": "SELECT id, name, year, month FROM keep.raw ORDER BY id",
    "copy": "SELECT count(*), max(play_id) FROM keep.plays_copy",
    "ingested": "SELECT count(*), sum(x) FROM keep.ingested",
    "tables": "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = 'keep' ORDER BY table_name",
}


def build(cur, raw_location: str, bad_location: str):
    cur.execute("CREATE SCHEMA keep")
    cur.execute("CREATE TABLE keep.plays (play_id BIGINT, song_id BIGINT, play_date DATE) PARTITIONED BY (play_date)")
    rows = [(i, i % 37, f"2026-11-0{1 + i % 3}") for i in range(300)]
    cur.executemany("INSERT INTO keep.plays VALUES ($1, $2, CAST($3 AS DATE))", rows)
    cur.execute(
        "CREATE EXTERNAL TABLE keep.raw (id INT, name VARCHAR) STORED AS CSV PARTITIONED BY (year INT, month INT) "
        f"LOCATION '{raw_location}' OPTIONS ('format.has_header' 'true')"
    )
    cur.execute("CREATE VIEW keep.per_day AS SELECT play_date, count(*) AS n FROM keep.plays GROUP BY play_date")
    cur.execute("CREATE TABLE keep.plays_copy AS SELECT * FROM keep.plays WHERE song_id < 10")
    cur.adbc_ingest("ingested", pa.table({"x": list(range(50))}), mode="create", db_schema_name="keep")
    cur.execute(
        f"CREATE EXTERNAL TABLE keep.bad (s VARCHAR) STORED AS CSV LOCATION '{bad_location}' OPTIONS ('format.has_header' 'true')"
    )
    cur.execute("CREATE TABLE keep.nums (n BIGINT)")
    cur.execute("INSERT INTO keep.nums VALUES (1), (2)")


def snapshot(cur):
    out = {}
    for name, q in CHECK_QUERIES.items():
        cur.execute(q)
        out[name] = cur.fetchall()
    return out


def failing_insert_changes_nothing(cur, delta_commits):
    """A statement that fails part-way (bad value in the last rows) leaves the table as it was."""
    cur.execute("SELECT count(*) FROM keep.nums")
    before = cur.fetchone()
    commits = delta_commits("nums")
    with pytest.raises(Error) as e:
        cur.execute("INSERT INTO keep.nums SELECT CAST(s AS BIGINT) FROM keep.bad")
    assert "oops" in str(e.value)
    cur.execute("SELECT count(*) FROM keep.nums")
    assert cur.fetchone() == before
    assert delta_commits("nums") == commits


def bad_csv() -> bytes:
    lines = ["s"] + [str(i) for i in range(100_000)] + ["oops"]
    return ("\n".join(lines) + "\n").encode()


def run_scenario(warehouse: str, raw_location: str, bad_location: str, delta_commits, log_path, env=None):
    s = Server(warehouse, log_path=log_path, env=env).start()
    conn = adbc_connect(s.uri)
    cur = conn.cursor()
    build(cur, raw_location, bad_location)
    before = snapshot(cur)
    assert before["plays"] == [(300, sum(i % 37 for i in range(300)), 3)]
    assert before["raw"] == [(1, "a", 2026, 1), (2, "b", 2026, 1), (3, "c", 2026, 2)]
    assert before["ingested"] == [(50, sum(range(50)))]
    failing_insert_changes_nothing(cur, delta_commits)
    conn.close()
    s.kill()

    s2 = Server(warehouse, log_path=log_path, env=env).start()
    conn = adbc_connect(s2.uri)
    cur = conn.cursor()
    assert snapshot(cur) == before
    cur.execute("SELECT count(*) FROM keep.nums")
    assert cur.fetchone() == (2,)
    # Writes keep working after the restart.
    cur.execute("INSERT INTO keep.plays VALUES (1000, 1, DATE '2026-11-04')")
    cur.execute("SELECT count(DISTINCT play_date) FROM keep.plays")
    assert cur.fetchone() == (4,)
    cur.execute("DROP VIEW keep.per_day")
    cur.execute("DROP TABLE keep.plays_copy")
    cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'keep' ORDER BY 1")
    assert [r[0] for r in cur.fetchall()] == ["bad", "ingested", "nums", "plays", "raw"]
    conn.close()
    s2.stop()
