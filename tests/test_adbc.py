"""The ADBC Flight SQL driver (what analysts use from Python) against the real server."""

import threading
import time

import pyarrow as pa
import pytest
from adbc_driver_manager import AdbcStatusCode, DatabaseError, Error, ProgrammingError

from conftest import adbc_connect, run_cli


def _status(excinfo) -> AdbcStatusCode:
    return excinfo.value.status_code


def test_ddl_insert_parameters_and_executemany(conn):
    cur = conn.cursor()
    cur.execute("CREATE SCHEMA IF NOT EXISTS music")
    cur.execute("CREATE TABLE music.artists (artist_id BIGINT, name VARCHAR, country VARCHAR)")
    cur.execute("INSERT INTO music.artists VALUES ($1, $2, $3)", (1, "Nina", "FR"))
    rows = [(i, f"artist {i}", "SE" if i % 2 else "DE") for i in range(2, 102)]
    cur.executemany("INSERT INTO music.artists VALUES ($1, $2, $3)", rows)
    cur.execute("SELECT count(*) AS n, count(DISTINCT artist_id) AS d FROM music.artists")
    assert cur.fetchone() == (101, 101)
    cur.execute("SELECT name FROM music.artists WHERE artist_id = $1", (57,))
    assert cur.fetchall() == [("artist 57",)]
    cur.execute("SELECT country, count(*) FROM music.artists WHERE artist_id > $1 GROUP BY country ORDER BY country", (1,))
    assert cur.fetchall() == [("DE", 50), ("SE", 50)]
    cur.executemany("UPDATE music.artists SET country = $1 WHERE artist_id = $2", [("NO", 2), ("NO", 3)])
    assert cur.rowcount == 2
    cur.execute("DELETE FROM music.artists WHERE country = $1", ("DE",))
    cur.execute("SELECT country, count(*) FROM music.artists GROUP BY country ORDER BY country")
    assert cur.fetchall() == [("FR", 1), ("NO", 2), ("SE", 49)]
    cur.close()


def test_query_schema_matches_stream_and_strings_are_utf8(conn):
    cur = conn.cursor()
    cur.execute("SELECT 'x' AS s, arrow_cast('y', 'Utf8View') AS v, 1 AS i")
    table = cur.fetch_arrow_table()
    assert table.schema.field("s").type == pa.string()
    assert table.schema.field("v").type == pa.string()
    assert table.to_pylist() == [{"s": "x", "v": "y", "i": 1}]


def test_get_objects_lists_schemas_tables_columns(conn):
    cur = conn.cursor()
    cur.execute("CREATE SCHEMA IF NOT EXISTS meta")
    cur.execute("CREATE TABLE IF NOT EXISTS meta.songs (song_id BIGINT, title VARCHAR, release_date DATE)")
    cur.execute("CREATE OR REPLACE VIEW meta.recent AS SELECT * FROM meta.songs WHERE release_date > DATE '2020-01-01'")
    objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
    catalogs = {c["catalog_name"]: c for c in objects}
    assert "streampulse" in catalogs
    schemas = {s["db_schema_name"]: s for s in catalogs["streampulse"]["catalog_db_schemas"]}
    assert {"public", "meta", "information_schema"} <= set(schemas)
    tables = {t["table_name"]: t for t in schemas["meta"]["db_schema_tables"]}
    assert tables["songs"]["table_type"] == "TABLE"
    assert tables["recent"]["table_type"] == "VIEW"
    assert [c["column_name"] for c in tables["songs"]["table_columns"]] == ["song_id", "title", "release_date"]
    # Filters: only tables whose name matches.
    filtered = conn.adbc_get_objects(depth="tables", table_name_filter="rec%").read_all().to_pylist()
    names = {t["table_name"] for c in filtered for s in c["catalog_db_schemas"] or [] for t in s["db_schema_tables"] or []}
    assert names == {"recent"}


def test_get_table_schema_without_catalog(conn):
    cur = conn.cursor()
    cur.execute("CREATE SCHEMA IF NOT EXISTS meta")
    cur.execute("CREATE TABLE IF NOT EXISTS meta.songs (song_id BIGINT, title VARCHAR, release_date DATE)")
    schema = conn.adbc_get_table_schema("songs", db_schema_filter="meta")
    assert schema.names == ["song_id", "title", "release_date"]
    assert schema.field("song_id").type == pa.int64()
    assert schema.field("title").type == pa.string()
    assert schema.field("release_date").type == pa.date32()


def test_get_info(conn):
    info = conn.adbc_get_info()
    assert info["vendor_name"] == "StreamPulse Warehouse"
    assert info["vendor_version"]
    assert info["vendor_arrow_version"] == "59.3.0"
    assert sorted(conn.adbc_get_table_types()) == ["TABLE", "VIEW"]


def test_ingest_create_append_replace(conn):
    cur = conn.cursor()
    cur.execute("CREATE SCHEMA IF NOT EXISTS landing")
    data = pa.table({
        "user_id": pa.array(range(1000), pa.int64()),
        "plan": pa.array(["free", "premium"] * 500),
        "amount": pa.array([i * 0.5 for i in range(1000)], pa.float64()),
        "seen_at": pa.array([1_700_000_000_000_000_000 + i for i in range(1000)], pa.timestamp("ns", tz="UTC")),
        "small": pa.array(range(1000), pa.uint16()),
    })
    assert cur.adbc_ingest("subs", data, mode="create", db_schema_name="landing") == 1000
    with pytest.raises(Error) as e:
        cur.adbc_ingest("subs", data, mode="create", db_schema_name="landing")
    assert _status(e) == AdbcStatusCode.ALREADY_EXISTS
    assert cur.adbc_ingest("subs", data.slice(0, 10), mode="append", db_schema_name="landing") == 10
    cur.execute("SELECT count(*), sum(amount), min(plan) FROM landing.subs")
    assert cur.fetchone() == (1010, sum(i * 0.5 for i in range(1000)) + sum(i * 0.5 for i in range(10)), "free")
    assert cur.adbc_ingest("subs", data.slice(0, 3), mode="replace", db_schema_name="landing") == 3
    cur.execute("SELECT count(*) FROM landing.subs")
    assert cur.fetchone() == (3,)
    assert cur.adbc_ingest("subs2", data.slice(0, 5), mode="create_append", db_schema_name="landing") == 5
    assert cur.adbc_ingest("subs2", data.slice(0, 5), mode="create_append", db_schema_name="landing") == 5
    cur.execute("SELECT count(*) FROM landing.subs2")
    assert cur.fetchone() == (10,)
    # Appending matches the table's columns by position and casts to their types.
    narrow = pa.table({"u": pa.array([7], pa.int32()), "p": ["x"], "a": pa.array([1], pa.int32()),
                       "s": data["seen_at"].slice(0, 1), "n": pa.array([1], pa.uint16())})
    assert cur.adbc_ingest("subs2", narrow, mode="append", db_schema_name="landing") == 1
    cur.execute("SELECT user_id, amount FROM landing.subs2 WHERE plan = 'x'")
    assert cur.fetchall() == [(7, 1.0)]
    with pytest.raises(Error) as e:
        cur.adbc_ingest("subs2", data.select(["user_id", "plan"]), mode="append", db_schema_name="landing")
    assert "ingested data has 2 columns, landing.subs2 has 5" in str(e.value)
    cur.execute("SELECT count(*) FROM landing.subs2")
    assert cur.fetchone() == (11,)
    with pytest.raises(Error) as e:
        cur.adbc_ingest("missing", data, mode="append", db_schema_name="landing")
    assert _status(e) == AdbcStatusCode.NOT_FOUND


def test_syntax_error_is_invalid_argument(conn):
    cur = conn.cursor()
    with pytest.raises(Error) as e:
        cur.execute("SELEC 1")
    assert _status(e) == AdbcStatusCode.INVALID_ARGUMENT
    assert "SELEC" in str(e.value)
    with pytest.raises(Error) as e:
        cur.execute("SELECT no_such_column FROM (SELECT 1 AS a)")
    assert _status(e) == AdbcStatusCode.INVALID_ARGUMENT
    assert "no_such_column" in str(e.value)
    with pytest.raises(Error) as e:
        cur.execute("SELECT * FROM no_such_table")
    assert _status(e) == AdbcStatusCode.NOT_FOUND
    assert "no_such_table" in str(e.value)


def test_wrong_password_is_unauthenticated(server):
    with pytest.raises(Error) as e:
        c = adbc_connect(server.uri, password="wrong-password")
        c.cursor().execute("SELECT 1")
    assert _status(e) == AdbcStatusCode.UNAUTHENTICATED


def test_reader_may_query_but_not_write(server, conn):
    run_cli("user", "add", "analyst", "--role", "reader", "--password", "reader-pass-1", "--warehouse", server.warehouse)
    cur = conn.cursor()
    cur.execute("CREATE SCHEMA IF NOT EXISTS shared")
    cur.execute("CREATE TABLE IF NOT EXISTS shared.t AS SELECT 1 AS a")
    reader = adbc_connect(server.uri, user="analyst", password="reader-pass-1")
    rc = reader.cursor()
    rc.execute("SELECT count(*) FROM shared.t")
    assert rc.fetchone() == (1,)
    with pytest.raises(Error) as e:
        rc.execute("INSERT INTO shared.t VALUES (2)")
    assert _status(e) == AdbcStatusCode.UNAUTHORIZED, e.value
    assert "PERMISSION_DENIED" in str(e.value) or "may not" in str(e.value)
    # EXPLAIN ANALYZE executes what it explains: still a write.
    with pytest.raises(Error) as e:
        rc.execute("EXPLAIN ANALYZE INSERT INTO shared.t VALUES (3)")
    assert _status(e) == AdbcStatusCode.UNAUTHORIZED
    with pytest.raises(Error) as e:
        rc.execute("COPY (SELECT 1) TO '/tmp/streampulse-should-not-exist.csv'")
    assert _status(e) == AdbcStatusCode.UNAUTHORIZED
    # No reading arbitrary files through SQL.
    with pytest.raises(Error):
        rc.execute("SELECT * FROM '/etc/passwd'")
    with pytest.raises(Error) as e:
        rc.execute("DROP TABLE shared.t")
    assert _status(e) == AdbcStatusCode.UNAUTHORIZED
    with pytest.raises(Error) as e:
        rc.adbc_ingest("t2", pa.table({"a": [1]}), mode="create", db_schema_name="shared")
    assert _status(e) == AdbcStatusCode.UNAUTHORIZED
    cur.execute("SELECT count(*) FROM shared.t")
    assert cur.fetchone() == (1,)
    reader.close()


def test_large_result_streams_and_cancel_mid_stream(server, conn):
    cur = conn.cursor()
    cur.execute("SELECT value AS v, value * 2 AS w FROM generate_series(1, 20000000) AS t(value)")
    reader = cur.fetch_record_batch()
    got = 0
    for batch in reader:
        got += batch.num_rows
        if got >= 100_000:
            break
    assert got >= 100_000
    cur.adbc_cancel()
    with pytest.raises(Exception):
        for batch in reader:
            got += batch.num_rows
    assert got < 20_000_000
    # The server saw the stream end early (and dropped the query with it).
    deadline = time.time() + 10
    while not any("query finished" in line and 'state="cancelled"' in line and "generate_series(1, 20000000)" in line
                  for line in open(server.log_path)):
        assert time.time() < deadline, "server did not stop the cancelled query"
        time.sleep(0.2)
    # The server keeps serving after the cancelled stream.
    cur2 = conn.cursor()
    cur2.execute("SELECT 42")
    assert cur2.fetchone() == (42,)
