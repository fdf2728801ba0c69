"""Memory: a query that cannot fit fails alone with RESOURCE_EXHAUSTED, and the server stays up."""

import threading
import time

import pytest
from adbc_driver_manager import Error

from conftest import Server, adbc_connect, run_cli


@pytest.mark.parametrize("caps, setting", [
    (["--memory-limit", "32MiB"], "--memory-limit"),  # the server-wide pool
    (["--memory-limit", "2GiB", "--query-memory-limit", "32MiB"], "--query-memory-limit"),  # one query's share
])
def test_query_over_a_memory_cap_fails_alone_and_names_the_setting(tmp_path, caps, setting):
    s = Server(str(tmp_path / "wh"), extra_args=caps, log_path=str(tmp_path / "server.log")).start()
    try:
        conn = adbc_connect(s.uri)
        cur = conn.cursor()
        # array_agg keeps every value of its group in memory and cannot spill.
        with pytest.raises(Error) as e:
            cur.execute("SELECT array_agg(value) FROM generate_series(1, 50000000) AS t(value)")
            cur.fetchall()
        # ADBC has no status of its own for this; the driver names the gRPC code it received.
        assert "(ResourceExhausted;" in str(e.value), str(e.value)
        assert "Resources exhausted" in str(e.value)
        assert "pool_size" in str(e.value)  # says which limit was hit
        assert setting in str(e.value)  # and the setting to change
        cur2 = conn.cursor()
        cur2.execute("SELECT count(*) FROM generate_series(1, 1000) AS t(value)")
        assert cur2.fetchone() == (1000,)
        conn.close()
        assert s.proc.poll() is None
    finally:
        s.stop()
    log = (tmp_path / "server.log").read_text()
    assert "peak_memory=" in log and "spilled_bytes=" in log  # every statement's cost is logged

# A GROUP BY with millions of groups: its hash table spills (sorted runs) when the pool is short.
MANY_GROUPS = ("SELECT count(*), sum(c) FROM (SELECT value % 3000000 AS k, count(*) AS c "
               "FROM generate_series(1, 12000000) AS t(value) GROUP BY value % 3000000) AS g")


def _spill_files(folder):
    return [p for p in folder.rglob("*") if p.is_file()]


def test_bad_memory_settings_are_refused_clearly(tmp_path):
    wh = str(tmp_path / "wh")
    r = run_cli("sql", "--warehouse", wh, "--memory-limit", "1GiB", "--query-memory-limit", "2GiB", "-e", "SELECT 1", check=False)
    assert r.returncode != 0 and "query memory limit 2GiB is above the memory limit 1GiB" in r.stderr
    r = run_cli("sql", "--warehouse", wh, "--spill-compression", "brotli", "-e", "SELECT 1", check=False)
    assert r.returncode != 0 and "uncompressed, lz4_frame or zstd" in r.stderr
    r = run_cli("sql", "--warehouse", wh, "--spill-max-size", "10%", "-e", "SELECT 1", check=False)
    assert r.returncode != 0 and "give bytes" in r.stderr


def test_spilling_query_reports_its_spills_and_leaves_no_files(tmp_path):
    spill = tmp_path / "spill"
    r = run_cli("sql", "--warehouse", str(tmp_path / "wh"), "--memory-limit", "48MiB", "--spill-dir", str(spill),
                "--stats", "-e", MANY_GROUPS)
    assert "| 3000000  | 12000000 |" in r.stdout, r.stdout
    stats = [line for line in r.stderr.splitlines() if line.startswith("-- statement 1:")]
    assert stats, r.stderr
    files = int(stats[0].split(" in ")[-1].split(" ")[0])
    assert files > 0 and "spilled 0 B" not in stats[0], stats[0]  # it did spill, and says how much
    assert _spill_files(spill) == []  # removed at the end of the query


def test_query_over_the_spill_disk_cap_fails_clearly_and_cleans_up(tmp_path):
    spill = tmp_path / "spill"
    r = run_cli("sql", "--warehouse", str(tmp_path / "wh"), "--memory-limit", "48MiB", "--spill-dir", str(spill),
                "--spill-max-size", "2MiB", "-e", MANY_GROUPS, check=False)
    assert r.returncode != 0
    assert "--spill-max-size (STREAMPULSE_SPILL_MAX_SIZE)" in r.stderr, r.stderr
    assert _spill_files(spill) == []


def test_insert_overwrite_stages_its_rows_on_disk_under_the_spill_cap(tmp_path):
    # INSERT OVERWRITE writes its new rows to a staging file in the spill folder (not memory)
    # before the Delta commit: the file counts against --spill-max-size and is removed after.
    spill, wh = tmp_path / "spill", str(tmp_path / "wh")
    setup = ("CREATE TABLE t (day DATE, k BIGINT, pad VARCHAR) PARTITIONED BY (day); "
             "INSERT INTO t VALUES (DATE '2026-10-01', 0, 'old'), (DATE '2026-10-02', 0, 'kept')")
    run_cli("sql", "--warehouse", wh, "-e", setup)
    overwrite = ("INSERT OVERWRITE t SELECT DATE '2026-10-01', value, repeat('x', 100) "
                 "FROM generate_series(1, 300000) AS g(value)")
    r = run_cli("sql", "--warehouse", wh, "--spill-dir", str(spill), "--spill-max-size", "1MiB", "-e", overwrite, check=False)
    assert r.returncode != 0 and "--spill-max-size" in r.stderr, r.stderr
    assert _spill_files(spill) == []
    run_cli("sql", "--warehouse", wh, "--spill-dir", str(spill), "--memory-limit", "64MiB", "-e", overwrite)
    assert _spill_files(spill) == []
    r = run_cli("sql", "--warehouse", wh, "--format", "csv", "-e",
                "SELECT day, count(*) AS n, min(pad) AS pad FROM t GROUP BY day ORDER BY day")
    assert r.stdout.split() == ["day,n,pad", "2026-10-01,300000," + "x" * 100, "2026-10-02,1,kept"], r.stdout


def test_admission_queue_times_out_then_admits(tmp_path):
    s = Server(str(tmp_path / "wh"), extra_args=["--max-concurrent-queries", "1", "--queue-timeout", "1s"],
               log_path=str(tmp_path / "server.log")).start()
    try:
        first = adbc_connect(s.uri)
        cur = first.cursor()
        cur.execute("SELECT value FROM generate_series(1, 100000000) AS t(value)")
        reader = cur.fetch_record_batch()
        reader.read_next_batch()  # the stream is open: it holds the only slot
        second = adbc_connect(s.uri)
        with pytest.raises(Error) as e:
            c2 = second.cursor()
            c2.execute("SELECT 1")
            c2.fetchall()
        assert "server busy" in str(e.value) and "--max-concurrent-queries" in str(e.value), str(e.value)
        reader.close()
        cur.close()
        first.close()
        deadline = time.time() + 30
        while True:  # the slot frees when the server sees the stream closed
            try:
                c3 = second.cursor()
                c3.execute("SELECT 1")
                assert c3.fetchone() == (1,)
                break
            except Error:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        second.close()
    finally:
        s.stop()


def test_eight_heavy_queries_under_a_small_cap(tmp_path):
    s = Server(str(tmp_path / "wh"), extra_args=["--memory-limit", "256MiB", "--max-concurrent-queries", "12",
                                                 "--spill-dir", str(tmp_path / "spill")],
               log_path=str(tmp_path / "server.log")).start()
    outcomes = []
    peak = [0]

    def heavy(i):
        conn = adbc_connect(s.uri)
        try:
            cur = conn.cursor()
            # half spill (GROUP BY), half cannot (array_agg of 20 M values)
            sql = MANY_GROUPS if i % 2 == 0 else "SELECT cardinality(array_agg(value)) FROM generate_series(1, 20000000) AS t(value)"
            cur.execute(sql)
            cur.fetchall()
            outcomes.append("ok")
        except Error as e:
            outcomes.append("exhausted" if "(ResourceExhausted;" in str(e) else f"other: {e}")
        finally:
            conn.close()

    try:
        threads = [threading.Thread(target=heavy, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        simple = adbc_connect(s.uri)
        while any(t.is_alive() for t in threads):
            peak[0] = max(peak[0], s.rss_bytes())
            c = simple.cursor()
            c.execute("SELECT 1 + 1")
            assert c.fetchone() == (2,)  # a simple query is served meanwhile
            time.sleep(0.2)
        for t in threads:
            t.join()
        simple.close()
        assert s.proc.poll() is None  # never killed
        assert len(outcomes) == 8 and all(o in ("ok", "exhausted") for o in outcomes), outcomes
        assert "ok" in outcomes
        assert _spill_files(tmp_path / "spill") == []
    finally:
        s.stop()


def test_sql_output_formats(tmp_path):
    wh = str(tmp_path / "wh")
    q = "SELECT 1 AS a, 'x,y' AS b UNION ALL SELECT 2, NULL ORDER BY a"
    csv = run_cli("sql", "--warehouse", wh, "--format", "csv", "-e", q).stdout
    assert csv.splitlines() == ["a,b", '1,"x,y"', "2,"]
    js = run_cli("sql", "--warehouse", wh, "--format", "json", "-e", q).stdout
    assert js.splitlines() == ['{"a":1,"b":"x,y"}', '{"a":2}']
    bad = run_cli("sql", "--warehouse", wh, "--format", "xml", "-e", q, check=False)
    assert bad.returncode != 0 and "possible values" in bad.stderr


def test_bulk_ingest_stages_on_disk_not_in_memory(tmp_path):
    # Bulk ingest hands the uploaded batches to a staging file in the spill folder as they
    # arrive: an upload over --spill-max-size fails clearly, creates nothing and leaves no
    # files; one that fits is committed whole without the server holding the upload in memory.
    import numpy as np
    import pyarrow as pa

    n = 8_000_000  # 4 columns of 8 bytes: 256 MB
    ids = np.arange(n, dtype=np.int64)
    table = pa.table({"id": ids, "k": ids % 1000, "x": np.random.default_rng(7).random(n), "y": ids * 0.5})
    table = pa.Table.from_batches(table.to_batches(max_chunksize=131072))
    spill = tmp_path / "spill"
    s = Server(str(tmp_path / "wh"), extra_args=["--spill-dir", str(spill), "--spill-max-size", "16MiB"],
               log_path=str(tmp_path / "server.log")).start()
    try:
        conn = adbc_connect(s.uri)
        cur = conn.cursor()
        with pytest.raises(Error) as e:
            cur.adbc_ingest("big", table, mode="create")
        assert "--spill-max-size" in str(e.value) and "(ResourceExhausted;" in str(e.value), str(e.value)
        assert _spill_files(spill) == []
        cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'big'")
        assert cur.fetchone() == (0,)  # nothing was created
        conn.close()
    finally:
        s.stop()

    s = Server(str(tmp_path / "wh"), extra_args=["--spill-dir", str(spill)], log_path=str(tmp_path / "server.log")).start()
    try:
        conn = adbc_connect(s.uri)
        cur = conn.cursor()
        cur.execute("SELECT 1")
        cur.fetchall()
        base = s.rss_bytes()
        peak = [base]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], s.rss_bytes())
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            assert cur.adbc_ingest("big", table, mode="create") == n
            assert cur.adbc_ingest("big", table.slice(0, 1000), mode="append") == 1000
        finally:
            done.set()
            sampler.join()
        cur.execute("SELECT count(*), sum(id), sum(k), sum(y) FROM big")
        assert cur.fetchone() == (n + 1000, n * (n - 1) // 2 + 999 * 1000 // 2, int((ids % 1000).sum()) + 999 * 1000 // 2,
                                  float(ids.sum() * 0.5) + 999 * 1000 / 4)
        assert _spill_files(spill) == []
        growth = peak[0] - base
        print(f"ingest of {table.nbytes >> 20} MiB: server RSS {base >> 20} -> {peak[0] >> 20} MiB")
        # Holding the upload would take 256 MB; what remains is a Parquet row group being
        # staged, gRPC messages in flight and deltalake's file buffer (its target file size).
        assert growth < 200 * 2**20, f"RSS grew {growth >> 20} MiB during a 244 MiB ingest"
        conn.close()
    finally:
        s.stop()


def test_wide_rows_are_cut_to_the_message_limit_or_refused_by_name(tmp_path):
    """Results travel in messages no larger than --max-message-size (4 MiB by default, what every
    gRPC client accepts): rows of 3 MiB each arrive whole, one per message; a single 5 MiB value
    cannot be cut, and the error names the row, the column, the size and the setting. With both
    limits raised (the server's option and ADBC's with_max_msg_size) the same value arrives."""
    s = Server(str(tmp_path / "wh"), log_path=str(tmp_path / "server.log")).start()
    try:
        conn = adbc_connect(s.uri)
        cur = conn.cursor()
        cur.execute("SELECT value, repeat(chr(64 + CAST(value AS INT)), 3 * 1024 * 1024) AS v "
                    "FROM generate_series(1, 6) AS t(value)")
        rows = cur.fetchall()
        assert [r[0] for r in rows] == list(range(1, 7))
        assert all(len(v) == 3 << 20 and set(v) == {chr(64 + i)} for i, v in rows)
        with pytest.raises(Error) as e:
            cur.execute("SELECT * FROM (VALUES ('small', 'y'), ('wide', repeat('x', 5 * 1024 * 1024))) "
                        "AS t(k, payload) ORDER BY k")
            cur.fetchall()
        msg = str(e.value)
        assert "row 2 of the result is 5.0 MiB (column payload holds 5.0 MiB)" in msg, msg
        assert "the limit is 4.0 MiB (server option --max-message-size" in msg, msg
        assert "--query-memory-limit" not in msg, msg  # not a memory problem
        cur2 = conn.cursor()
        cur2.execute("SELECT 1")
        assert cur2.fetchone() == (1,)
        conn.close()
    finally:
        s.stop()

    s = Server(str(tmp_path / "wh"), extra_args=["--max-message-size", "32MiB"],
               log_path=str(tmp_path / "server.log")).start()
    try:
        import adbc_driver_flightsql.dbapi as flight_sql
        from adbc_driver_manager import DatabaseOptions

        from conftest import ADMIN_PASSWORD
        conn = flight_sql.connect(s.uri, autocommit=True, db_kwargs={
            DatabaseOptions.USERNAME.value: "admin", DatabaseOptions.PASSWORD.value: ADMIN_PASSWORD,
            "adbc.flight.sql.client_option.with_max_msg_size": str(32 << 20)})
        cur = conn.cursor()
        cur.execute("SELECT repeat('x', 20 * 1024 * 1024) AS payload")
        assert len(cur.fetchone()[0]) == 20 << 20
        conn.close()
    finally:
        s.stop()
    r = run_cli("serve", "--warehouse", str(tmp_path / "wh2"), "--max-message-size", "64KiB", check=False)
    assert r.returncode == 2 and "--max-message-size 64.0 KiB is out of range: give 1MiB to 2047MiB" in r.stderr, r.stderr
