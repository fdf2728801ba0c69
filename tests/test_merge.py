"""MERGE INTO against DuckDB's own MERGE INTO on generated tables.

Each statement runs on both engines from the same starting tables (NULL keys on both sides,
matched and unmatched keys, conditions on either side); the resulting tables and the reported
row counts must be equal. Then what DuckDB does not decide for us: duplicate source keys are
a clear error (DuckDB picks one silently), a merge that changes nothing makes no Delta commit, readers get
PERMISSION_DENIED, and external tables are refused.
"""

import glob
import os

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from adbc_driver_manager import AdbcStatusCode, Error

from conftest import adbc_connect, run_cli

CASES = {
    "update_and_insert": """
        MERGE INTO {t} AS t USING {s} AS s ON t.id = s.id
        WHEN MATCHED THEN UPDATE SET v = s.v, note = s.note
        WHEN NOT MATCHED THEN INSERT (id, grp, v, note) VALUES (s.id, s.grp, s.v, s.note)""",
    "conditions_delete_first_satisfied": """
        MERGE INTO {t} AS t USING {s} AS s ON t.id = s.id
        WHEN MATCHED AND s.v < 0 THEN DELETE
        WHEN MATCHED AND t.grp = 'a' THEN UPDATE SET v = t.v + s.v
        WHEN MATCHED THEN UPDATE SET note = concat(t.note, '+', s.note)
        WHEN NOT MATCHED AND s.v > 10 THEN INSERT VALUES (s.id, s.grp, s.v, s.note)""",
    "not_matched_by_source": """
        MERGE INTO {t} AS t USING {s} AS s ON t.id = s.id
        WHEN NOT MATCHED BY SOURCE AND t.v > 50 THEN DELETE
        WHEN NOT MATCHED BY SOURCE THEN UPDATE SET note = 'orphan'""",
    "every_kind": """
        MERGE INTO {t} AS t USING {s} AS s ON t.id = s.id
        WHEN MATCHED AND t.v = s.v THEN DELETE
        WHEN MATCHED THEN UPDATE SET v = s.v * 2
        WHEN NOT MATCHED THEN INSERT (id, v) VALUES (s.id, s.v)
        WHEN NOT MATCHED BY SOURCE AND t.grp = 'b' THEN DELETE""",
    "compound_on": """
        MERGE INTO {t} AS t USING {s} AS s ON t.id = s.id AND t.grp = s.grp
        WHEN MATCHED THEN UPDATE SET note = 'same group'
        WHEN NOT MATCHED THEN INSERT (id, grp, v, note) VALUES (s.id, s.grp, s.v, 'new')""",
    "subquery_source": """
        MERGE INTO {t} AS t USING (SELECT id, v * 10 AS v10 FROM {s} WHERE grp <> 'c') AS s ON t.id = s.id
        WHEN MATCHED THEN UPDATE SET v = s.v10
        WHEN NOT MATCHED THEN INSERT (id, v) VALUES (s.id, s.v10)""",
}


def tables(seed=3):
    rng = np.random.default_rng(seed)
    groups = np.array(["a", "b", "c"])

    def make(ids):
        n = len(ids)
        ids = pa.array(list(ids) + [None] * 5, pa.int64())
        return pa.table({
            "id": ids,
            "grp": pa.array(groups[rng.integers(0, 3, n + 5)]),
            "v": pa.array(rng.integers(-20, 100, n + 5), pa.int64()),
            "note": pa.array([f"n{i}" for i in range(n + 5)]),
        })

    target = make(range(1, 201))
    source = make(rng.permutation(np.arange(120, 271)).tolist())
    return target, source


def snapshot(rows):
    return sorted(rows, key=lambda r: tuple((x is None, x) for x in r))


@pytest.fixture(scope="module")
def loaded(server):
    target, source = tables()
    conn = adbc_connect(server.uri)
    cur = conn.cursor()
    cur.execute("CREATE SCHEMA IF NOT EXISTS m")
    cur.adbc_ingest("t0", target, mode="replace", db_schema_name="m")
    cur.adbc_ingest("s", source, mode="replace", db_schema_name="m")
    duck = duckdb.connect()
    duck.register("target_arrow", target)
    duck.register("source_arrow", source)
    duck.execute("CREATE TABLE t0 AS SELECT * FROM target_arrow")
    duck.execute("CREATE TABLE s AS SELECT * FROM source_arrow")
    yield conn, duck
    conn.close()


@pytest.mark.parametrize("case", sorted(CASES))
def test_merge_matches_duckdb(loaded, case):
    conn, duck = loaded
    cur = conn.cursor()
    cur.execute(f"CREATE OR REPLACE TABLE m.t_{case} AS SELECT * FROM m.t0")
    cur.execute(CASES[case].format(t=f"m.t_{case}", s="m.s"))
    ours_count = cur.fetchone()[0]
    cur.execute(f"SELECT id, grp, v, note FROM m.t_{case}")
    ours = snapshot(cur.fetchall())

    duck.execute(f"CREATE OR REPLACE TABLE t_{case} AS SELECT * FROM t0")
    duck_count = duck.execute(CASES[case].format(t=f"t_{case}", s="s")).fetchone()[0]
    theirs = snapshot(duck.execute(f"SELECT id, grp, v, note FROM t_{case}").fetchall())
    assert ours == theirs
    assert ours_count == duck_count


def test_duplicate_source_keys_are_an_error(loaded):
    conn, duck = loaded
    cur = conn.cursor()
    cur.execute("CREATE OR REPLACE TABLE m.dup_t AS SELECT * FROM m.t0")
    # Key 150 twice, matching a target row: which value wins would be arbitrary (DuckDB 2.0
    # applies one of them without a word); here it is refused, naming the key.
    dup = "(SELECT * FROM m.s UNION ALL SELECT * FROM m.s WHERE id = 150)"
    with pytest.raises(Error) as e:
        cur.execute(f"MERGE INTO m.dup_t AS t USING {dup} AS s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = s.v")
    assert e.value.status_code == AdbcStatusCode.INVALID_ARGUMENT, e.value
    assert "id = 150" in str(e.value) and "each key may appear once" in str(e.value)
    # A duplicate that matches nothing would be inserted twice (DuckDB does): refused here too.
    with pytest.raises(Error) as e:
        cur.execute("MERGE INTO m.dup_t AS t USING (SELECT * FROM m.s UNION ALL SELECT * FROM m.s WHERE id = 260) AS s "
                    "ON t.id = s.id WHEN NOT MATCHED THEN INSERT (id) VALUES (s.id)")
    assert "id = 260" in str(e.value)
    # NULL keys never match, so repeating them is fine: both engines insert every such row.
    cur.execute("MERGE INTO m.dup_t AS t USING (SELECT * FROM m.s WHERE id IS NULL UNION ALL "
                "SELECT * FROM m.s WHERE id IS NULL) AS s ON t.id = s.id "
                "WHEN NOT MATCHED THEN INSERT (id, note) VALUES (s.id, s.note)")
    assert cur.fetchone()[0] == 10
    cur.execute("SELECT count(*) FROM m.dup_t")
    duck.execute("CREATE OR REPLACE TABLE dup_t AS SELECT * FROM t0")
    duck.execute("MERGE INTO dup_t AS t USING (SELECT * FROM s WHERE id IS NULL UNION ALL SELECT * FROM s WHERE id IS NULL)"
                 " AS s ON t.id = s.id WHEN NOT MATCHED THEN INSERT (id, note) VALUES (s.id, s.note)")
    assert cur.fetchone()[0] == duck.execute("SELECT count(*) FROM dup_t").fetchone()[0] == 215


def test_a_merge_that_changes_nothing_makes_no_commit(server, loaded):
    conn, _ = loaded
    cur = conn.cursor()
    cur.execute("CREATE OR REPLACE TABLE m.quiet AS SELECT * FROM m.t0")
    logs = lambda: glob.glob(os.path.join(server.warehouse, "m", "quiet-*", "_delta_log", "0*.json"))  # noqa: E731
    before = len(logs())
    cur.execute("MERGE INTO m.quiet AS t USING m.s AS s ON t.id = s.id "
                "WHEN MATCHED AND t.v IS DISTINCT FROM t.v THEN UPDATE SET v = s.v")
    assert cur.fetchone()[0] == 0
    assert len(logs()) == before
    cur.execute("MERGE INTO m.quiet AS t USING m.s AS s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = s.v")
    assert cur.fetchone()[0] > 0
    assert len(logs()) == before + 1


def test_readers_and_external_tables_are_refused(server, loaded, tmp_path):
    conn, _ = loaded
    cur = conn.cursor()
    run_cli("user", "add", "merger", "--role", "reader", "--password", "merge-pw-1", "--warehouse", server.warehouse)
    reader = adbc_connect(server.uri, user="merger", password="merge-pw-1")
    with pytest.raises(Error) as e:
        reader.cursor().execute("MERGE INTO m.t0 AS t USING m.s AS s ON t.id = s.id WHEN MATCHED THEN DELETE")
    assert e.value.status_code == AdbcStatusCode.UNAUTHORIZED, e.value
    reader.close()
    (tmp_path / "ext.csv").write_text("id,v\n1,2\n")
    cur.execute(f"CREATE EXTERNAL TABLE m.ext STORED AS CSV LOCATION '{tmp_path / 'ext.csv'}' OPTIONS ('has_header' 'true')")
    with pytest.raises(Error) as e:
        cur.execute("MERGE INTO m.ext AS t USING m.s AS s ON t.id = s.id WHEN MATCHED THEN DELETE")
    assert "managed tables" in str(e.value), e.value
