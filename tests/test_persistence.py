"""The local warehouse: everything survives SIGKILL; failed writes leave no trace; two servers
sharing a root do not lose each other's changes."""

from pathlib import Path

from catalog_checks import bad_csv, run_scenario
from conftest import Server, adbc_connect


def _hive_csv(root: Path):
    (root / "year=2026" / "month=1").mkdir(parents=True)
    (root / "year=2026" / "month=2").mkdir(parents=True)
    (root / "year=2026" / "month=1" / "a.csv").write_text("id,name\n1,a\n2,b\n")
    (root / "year=2026" / "month=2" / "b.csv").write_text("id,name\n3,c\n")


def test_catalog_survives_sigkill_and_failed_insert_leaves_no_trace(tmp_path):
    wh = tmp_path / "wh"
    raw = tmp_path / "raw"
    _hive_csv(raw)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "bad.csv").write_bytes(bad_csv())

    def delta_commits(table):
        (table_dir,) = list((wh / "keep").glob(f"{table}-*"))
        return sorted(p.name for p in (table_dir / "_delta_log").glob("*.json"))

    run_scenario(str(wh), f"{raw}/", f"{tmp_path / 'bad'}/", delta_commits, str(tmp_path / "server.log"))
    # Partitioned managed table is laid out Hive-style under the warehouse root.
    (plays_dir,) = list((wh / "keep").glob("plays-*"))
    assert sorted(p.name for p in plays_dir.glob("play_date=*")) == [
        "play_date=2026-11-01", "play_date=2026-11-02", "play_date=2026-11-03", "play_date=2026-11-04"]
    # The dropped table's files are gone.
    assert list((wh / "keep").glob("plays_copy-*")) == []


def test_two_servers_on_one_root_keep_both_changes(tmp_path):
    wh = str(tmp_path / "wh")
    log = str(tmp_path / "server.log")
    a = Server(wh, log_path=log).start()
    b = Server(wh, log_path=log).start()
    ca, cb = adbc_connect(a.uri), adbc_connect(b.uri)
    ca.cursor().execute("CREATE SCHEMA from_a")
    cb.cursor().execute("CREATE SCHEMA from_b")
    ca.cursor().execute("CREATE TABLE from_a.t AS SELECT 1 AS x")
    cb.cursor().execute("CREATE TABLE from_b.t AS SELECT 2 AS x")
    for c in (ca, cb):
        cur = c.cursor()
        cur.execute("SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'from_%' ORDER BY 1")
        assert cur.fetchall() == [("from_a",), ("from_b",)]
        cur.execute("SELECT (SELECT x FROM from_a.t) + (SELECT x FROM from_b.t)")
        assert cur.fetchone() == (3,)
    # A table one server has read, then written or replaced by the other: the first sees the
    # change at once (it keeps tables open and checks for a newer Delta version on each lookup).
    cur = ca.cursor()
    cur.execute("SELECT sum(x) FROM from_b.t")
    assert cur.fetchone() == (2,)
    cb.cursor().execute("INSERT INTO from_b.t VALUES (5)")
    cur.execute("SELECT sum(x) FROM from_b.t")
    assert cur.fetchone() == (7,)
    cb.cursor().execute("DROP TABLE from_b.t")
    cb.cursor().execute("CREATE TABLE from_b.t AS SELECT 40 AS x")
    cur.execute("SELECT sum(x) FROM from_b.t")
    assert cur.fetchone() == (40,)
    # The same name created on both: exactly one wins, the other gets a clear error.
    ca.cursor().execute("CREATE SCHEMA contested")
    try:
        cb.cursor().execute("CREATE SCHEMA contested")
        raise AssertionError("second CREATE SCHEMA should fail")
    except Exception as e:  # noqa: BLE001
        assert "already exists" in str(e)
    ca.close()
    cb.close()
    a.stop()
    b.stop()
