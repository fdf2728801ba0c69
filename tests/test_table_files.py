"""The Parquet files managed tables are written as (issue 15, point 1): every write path gives its
files a bloom filter on each integer and string column, so a key lookup on a table partitioned
by something else skips the row groups that cannot hold the key, and pages of 8,192 rows with
dictionaries of 64 KiB at most, so it then decodes one small page per column. Read back with
pyarrow, and checked in the scan's own metrics."""

import json
import re
from pathlib import Path

import pyarrow.parquet as pq

from conftest import Server, adbc_connect

def _run(cur, sql):
    cur.execute(sql)
    return cur.fetchall()


def _live_files(table_dir: Path):
    """The data files of the table's newest version, from its Delta log (adds minus removes)."""
    live = set()
    for commit in sorted((table_dir / "_delta_log").glob("*.json")):
        for line in commit.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                live.add(action["add"]["path"])
            elif "remove" in action:
                live.discard(action["remove"]["path"])
    return [table_dir / p.replace("%3D", "=") for p in live]


def _check_files(files, bloom, no_bloom):
    assert files
    for f in files:
        meta = pq.ParquetFile(f).metadata
        assert meta.created_by.startswith("streampulse "), (f, meta.created_by)
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            columns = {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}
            for name in bloom:
                assert columns[name].bloom_filter_offset is not None, (f, name)
            for name in no_bloom:
                assert columns[name].bloom_filter_offset is None, (f, name)


def _metric(plan_text, name):
    m = re.search(name + r"=(\d+) total → (\d+) matched", plan_text)
    assert m, plan_text
    return int(m.group(1)), int(m.group(2))


def test_every_write_path_writes_bloom_filters(tmp_path):
    wh = tmp_path / "wh"
    s = Server(str(wh), log_path=str(tmp_path / "server.log")).start()
    try:
        conn = adbc_connect(s.uri)
        cur = conn.cursor()
        _run(cur, "CREATE SCHEMA t")
        # 240,000 rows over 4 partitions: 60,000 per file, one row group each, within the 64 Ki
        # distinct values a filter is sized for; user_ids spread over every file, as in
        # bench/latency.py, so file statistics cannot skip any file for a key.
        _run(cur, """CREATE TABLE t.users PARTITIONED BY (country) AS
            SELECT value AS user_id, 'user-' || CAST(value AS VARCHAR) AS name,
                   arrow_cast(value * 0.5, 'Float64') AS balance,
                   arrow_cast(value * 1000000, 'Timestamp(Microsecond, None)') AS seen,
                   'C' || CAST(value % 4 AS VARCHAR) AS country
            FROM generate_series(1, 240000) ORDER BY user_id""")
        table_dir = next((wh / "t").glob("users-*"))
        _check_files(_live_files(table_dir), bloom=("user_id", "name"), no_bloom=("balance", "seen"))
        # Unique columns outgrow the 64 KiB dictionary and go on in plain pages, so a lookup
        # does not decode a dictionary of every value for one row.
        for f in _live_files(table_dir):
            group = pq.ParquetFile(f).metadata.row_group(0)
            for i in range(group.num_columns):
                column = group.column(i)
                if column.path_in_schema in ("user_id", "name"):
                    assert column.has_dictionary_page and "PLAIN" in column.encodings, (f, column)
                    dictionary = column.data_page_offset - column.dictionary_page_offset
                    assert dictionary <= 64 * 1024 + 64, (f, column.path_in_schema, dictionary)

        # The lookup opens all 4 files, and the statistics keep every row group (each spans the
        # whole user_id range); the bloom filters rule out all but the key's.
        plan = "\n".join(r[-1] for r in _run(cur, "EXPLAIN ANALYZE SELECT * FROM t.users WHERE user_id = 123457"))
        assert _metric(plan, "row_groups_pruned_statistics") == (4, 4), plan
        assert _metric(plan, "row_groups_pruned_bloom_filter") == (4, 1), plan
        # Pages of 8,192 rows: 8 in the file's 60,000 rows, of which the page index keeps one.
        assert _metric(plan, "page_index_pages_pruned") == (8, 1), plan
        assert _run(cur, "SELECT user_id, name FROM t.users WHERE user_id = 123457") == [(123457, "user-123457")]
        # A name that is not there, inside every file's min-max range: no row group is read. (A
        # filter has 5 % false positives in general; for this name and data none happens.)
        plan = "\n".join(r[-1] for r in _run(cur, "EXPLAIN ANALYZE SELECT * FROM t.users WHERE name = 'user-5x'"))
        _, candidates = _metric(plan, "row_groups_pruned_statistics")
        assert _metric(plan, "row_groups_pruned_bloom_filter") == (candidates, 0), plan
        assert _run(cur, "SELECT count(*) FROM t.users WHERE name = 'user-5x'") == [(0,)]

        # Every other write path: INSERT INTO, UPDATE, DELETE, MERGE, INSERT OVERWRITE.
        _run(cur, "INSERT INTO t.users SELECT value, 'new-' || CAST(value AS VARCHAR), 1.0, "
                  "arrow_cast(0, 'Timestamp(Microsecond, None)'), 'C9' FROM generate_series(240001, 240100)")
        _run(cur, "UPDATE t.users SET balance = balance + 1 WHERE user_id % 1000 = 0")
        _run(cur, "DELETE FROM t.users WHERE user_id % 1000 = 1")
        _run(cur, """MERGE INTO t.users AS u USING (SELECT 5 AS user_id, 'merged' AS name) AS s
            ON u.user_id = s.user_id WHEN MATCHED THEN UPDATE SET name = s.name""")
        _run(cur, "INSERT OVERWRITE t.users SELECT value, 'over', 2.0, "
                  "arrow_cast(0, 'Timestamp(Microsecond, None)'), 'C9' FROM generate_series(1, 10)")
        files = _live_files(table_dir)
        assert {f.parent.name for f in files} == {f"country=C{i}" for i in (0, 1, 2, 3, 9)}
        _check_files(files, bloom=("user_id", "name"), no_bloom=("balance", "seen"))
        got = _run(cur, "SELECT count(*), count(DISTINCT user_id), "
                        "max(name) FILTER (WHERE user_id = 5 AND country <> 'C9') FROM t.users")
        # 240,000 rows less the 240 deleted (user_id % 1000 = 1); C9's 100 replaced by 1..10, of
        # which only user_id 1 was not already there.
        assert got == [(240000 - 240 + 10, 240000 - 240 + 1, "merged")], got
        conn.close()
    finally:
        s.stop()
