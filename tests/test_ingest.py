"""Loading landing files exactly once: COPY INTO against DuckDB's read_json on the generator's
event files, every kind of bad input with its documented outcome, and pipes under SIGKILL at
random moments (local and on a local S3 server), with two servers on one warehouse, compaction
and INSERT OVERWRITE running beside the pipe. The expected rows come from the test's own
feeder, not from the code under test."""

import gzip
import json
import os
import random
import threading
import time
from pathlib import Path

import duckdb
import pytest

from conftest import BUCKET, ROOT, Server, adbc_connect, run_cli, s3_env

# Columns of music.plays as the batch load makes them (sql/load_generated.sql).
TABLE_DDL = """CREATE TABLE music.live (play_id BIGINT, user_id BIGINT, song_id BIGINT, artist_id BIGINT,
  played_at TIMESTAMP, ms_played INT, skipped BOOLEAN, source VARCHAR, device VARCHAR, country VARCHAR,
  session_id BIGINT, play_date DATE) PARTITIONED BY (play_date)"""


# SIGKILL trials per storage; `STREAMPULSE_INGEST_TRIALS=500 python3 -m pytest tests/test_ingest.py -k sigkill`
# is the long run (bench/RESULTS.md).
TRIALS = int(os.environ.get("STREAMPULSE_INGEST_TRIALS", "30"))


def copy_sql(location, options="ON_ERROR = CONTINUE", table="music.live"):
    return (f"COPY INTO {table} FROM (SELECT *, CAST(played_at AS DATE) AS play_date FROM '{location}') "
            f"PATTERN = '.*[.]gz' FILE_FORMAT = (TYPE = JSON, COMPRESSION = GZIP) {options}")


def rows(conn, sql):
    with conn.cursor() as c:
        c.execute(sql)
        return c.fetchall()


def execute(conn, sql):
    with conn.cursor() as c:
        c.execute(sql)
        return c.fetch_arrow_table().to_pylist()


def error_of(conn, sql):
    with conn.cursor() as c:
        with pytest.raises(Exception) as e:
            c.execute(sql)
            c.fetchall()
    return str(e.value)


def line(pid, day):
    return json.dumps({
        "play_id": pid, "user_id": pid % 1000, "song_id": pid % 777, "artist_id": pid % 91,
        "played_at": f"2026-11-{day:02d} {pid % 24:02d}:{pid % 60:02d}:{(pid // 60) % 60:02d}.{pid % 1000000:06d}",
        "ms_played": pid % 300000, "skipped": pid % 3 == 0, "source": "radio", "device": "ios",
        "country": "SE", "session_id": pid // 10,
    })


class Feeder:
    """Drops gzip JSONL event files in Hive day folders: names not in arrival order, late days,
    a bad line (not JSON, or a wrong type) in some files at a known line. Each file appears
    whole (written aside, then renamed; on S3 one PUT)."""

    def __init__(self, put, seed, lines=(40, 160), bad_every=4):
        self.put = put
        self.rng = random.Random(seed)
        self.next_id = seed * 10_000_000
        self.lines, self.bad_every = lines, bad_every
        self.good = set()
        self.bad = set()  # (file name below the location, line)
        self.files = []
        self.lock = threading.Lock()

    def one(self):
        rng = self.rng
        day = rng.choice([1, 2, 2, 3, 3, 3, 10])  # day=10 sorts before day=2; day=1 is late
        n = rng.randint(*self.lines)
        body, good, bad_at = [], [], None
        if len(self.files) % self.bad_every == self.bad_every - 1:
            bad_at = rng.randint(1, n)
        for i in range(1, n + 1):
            pid = self.next_id
            self.next_id += 1
            if i == bad_at:
                body.append("{not json" if rng.random() < 0.5 else line(pid, day).replace(f'"ms_played": {pid % 300000}', '"ms_played": "lots"'))
            else:
                body.append(line(pid, day))
                good.append(pid)
        name = f"year=2026/month=11/day={day}/{rng.randint(1_700_000_000, 1_800_000_000)}_{rng.randint(0, 99)}_{day}_{len(self.files)}.gz"
        self.put(name, gzip.compress(("\n".join(body) + "\n").encode()))
        with self.lock:
            self.files.append(name)
            self.good.update(good)
            if bad_at:
                self.bad.add((name, bad_at))
        return name


def local_put(root):
    def put(name, data):
        path = Path(root) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp"
        tmp.write_bytes(data)
        os.rename(tmp, path)
    return put


def drain(conn, files, timeout=180):
    deadline = time.time() + timeout
    while True:
        n = rows(conn, "SELECT count(*) FROM system.copy_history")[0][0]
        if n >= files:
            return n
        assert time.time() < deadline, f"pipe did not drain: {n} of {files} files recorded"
        time.sleep(0.3)


def check_exact(conn, feeder, location):
    """The table holds each good line once and nothing else; one history row per file; the
    quarantine holds exactly the injected bad lines."""
    count, distinct = rows(conn, "SELECT count(*), count(DISTINCT play_id) FROM music.live")[0]
    assert (count, distinct) == (len(feeder.good), len(feeder.good))
    ids = {r[0] for r in rows(conn, "SELECT play_id FROM music.live")}
    assert ids == feeder.good
    hist = rows(conn, "SELECT file, count(*) FROM system.copy_history GROUP BY file")
    assert {f for f, _ in hist} == {location + f for f in feeder.files}
    assert all(n == 1 for _, n in hist), [h for h in hist if h[1] != 1]
    errors = rows(conn, "SELECT file, line FROM system.load_errors")
    assert sorted(errors) == sorted((location + f, n) for f, n in feeder.bad)
    # Rows per file = lines less the quarantined one (history agrees with the table).
    loaded = rows(conn, "SELECT sum(rows_loaded), sum(rows_rejected) FROM system.copy_history")[0]
    assert loaded == (len(feeder.good), len(feeder.bad))


def serve_with_table(wh, log, env=None):
    """A server on `wh` with schema music and the empty table music.live."""
    s = Server(str(wh), log_path=str(log), env=env).start()
    try:
        conn = adbc_connect(s.uri)
        execute(conn, "CREATE SCHEMA music")
        execute(conn, TABLE_DDL)
    except Exception:
        s.stop()
        raise
    return s, conn


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    """The generator's event files, and a warehouse with the batch-loaded tables."""
    base = tmp_path_factory.mktemp("events")
    data = base / "data"
    run_cli("datagen", "--scale", "0.002", "--out", str(data), "--event-days", "3", "--quiet")
    return data


def test_copy_into_matches_duckdb_and_loads_each_file_once(events, tmp_path):
    s, conn = serve_with_table(tmp_path / "wh", tmp_path / "server.log")
    try:
        location = f"{events}/events/"
        files = execute(conn, copy_sql(location))
        on_disk = sorted(str(p) for p in (events / "events").rglob("*.gz"))
        assert sorted(f["file"] for f in files) == on_disk
        assert all(f["status"] == "LOADED" and f["rows_rejected"] == 0 for f in files)
        # The oracle: DuckDB reads the same files.
        duck = duckdb.connect()
        expected = duck.execute(
            f"SELECT play_id, user_id, song_id, artist_id, strftime(played_at, '%Y-%m-%d %H:%M:%S.%f'), ms_played, "
            f"skipped, source, device, country, session_id, CAST(played_at AS DATE)::VARCHAR "
            f"FROM read_json('{events}/events/**/*.gz', format='newline_delimited', compression='gzip', "
            f"columns={{play_id:'BIGINT', user_id:'BIGINT', song_id:'BIGINT', artist_id:'BIGINT', "
            f"played_at:'TIMESTAMP', ms_played:'INTEGER', skipped:'BOOLEAN', source:'VARCHAR', device:'VARCHAR', "
            f"country:'VARCHAR', session_id:'BIGINT'}})").fetchall()
        ours = rows(conn, "SELECT play_id, user_id, song_id, artist_id, to_char(played_at, '%Y-%m-%d %H:%M:%S.%6f'), "
                          "ms_played, skipped, source, device, country, session_id, CAST(play_date AS VARCHAR) "
                          "FROM music.live")
        assert len(ours) == len(expected) > 5000
        assert set(ours) - set(expected) == set()
        assert set(expected) - set(ours) == set()
        assert sum(f["rows_loaded"] for f in files) == len(expected)
        # Per-file rows agree with DuckDB's count per filename.
        per_file = dict(duck.execute(
            f"SELECT filename, count(*) FROM read_json('{events}/events/**/*.gz', format='newline_delimited', "
            f"filename=true) GROUP BY filename").fetchall())
        assert {f["file"]: f["rows_loaded"] for f in files} == per_file
        # A second run loads nothing; the history has one row per file, with the commit version.
        assert execute(conn, copy_sql(location)) == []
        hist = rows(conn, "SELECT count(*), count(DISTINCT file), min(commit_version) FROM system.copy_history")[0]
        assert hist[:2] == (len(on_disk), len(on_disk)) and hist[2] >= 1
        # FORCE loads them again (duplicates, as asked).
        again = execute(conn, copy_sql(location, "ON_ERROR = CONTINUE FORCE = TRUE"))
        assert len(again) == len(on_disk)
        assert rows(conn, "SELECT count(*) FROM music.live")[0][0] == 2 * len(expected)
        # Hive values and the source file/line are columns too.
        execute(conn, "CREATE TABLE music.meta (play_id BIGINT, day INT, _source_file VARCHAR, _source_line BIGINT)")
        execute(conn, f"COPY INTO music.meta FROM '{location}' FILE_FORMAT = (TYPE = JSON)")
        first = rows(conn, "SELECT day, _source_file, _source_line FROM music.meta ORDER BY _source_file, _source_line LIMIT 1")[0]
        assert first[1] == on_disk[0] and first[2] == 1 and f"day={first[0]}/" in first[1]
        conn.close()
    finally:
        s.stop()


def test_bad_inputs_have_documented_outcomes(tmp_path):
    land = tmp_path / "land"
    put = local_put(land)
    put("day=1/a.gz", gzip.compress((line(1, 1) + "\n" + line(2, 1) + "\n").encode()))
    put("day=1/b.gz", gzip.compress((line(3, 1) + "\n{oops\n" + line(5, 1) + "\n").encode()))
    put("day=1/c.gz", gzip.compress((line(6, 1) + "\n" + line(7, 1).replace('"ms_played": 7', '"ms_played": "seven"') + "\n").encode()))
    put("day=1/d.gz", (line(8, 1) + "\n").encode())  # named .gz, not gzip
    put("day=1/e.gz", b"")  # zero bytes
    wh = tmp_path / "wh"
    s, conn = serve_with_table(wh, tmp_path / "server.log")
    try:
        loc = f"{land}/"
        # ABORT_STATEMENT (the default) names the file, line and column, and loads nothing.
        err = error_of(conn, copy_sql(loc, ""))
        assert "day=1/b.gz: line 2" in err and "not valid JSON" in err and "nothing was loaded" in err, err
        assert rows(conn, "SELECT count(*) FROM music.live")[0][0] == 0
        # VALIDATION_MODE reports every error, loads nothing, records nothing.
        found = execute(conn, copy_sql(loc, "VALIDATION_MODE = RETURN_ERRORS"))
        assert sorted((f["file"].rsplit("/", 1)[1], f["line"], f["column_name"]) for f in found) == [
            ("b.gz", 2, None), ("c.gz", 2, "ms_played"), ("d.gz", None, None)]
        assert rows(conn, "SELECT count(*) FROM system.copy_history")[0][0] == 0
        # CONTINUE: good lines load, bad ones are quarantined with file, line, column, error, raw.
        result = {f["file"].rsplit("/", 1)[1]: f for f in execute(conn, copy_sql(loc))}
        assert {k: (v["status"], v["rows_loaded"], v["rows_rejected"]) for k, v in result.items()} == {
            "a.gz": ("LOADED", 2, 0), "b.gz": ("PARTIALLY_LOADED", 2, 1), "c.gz": ("PARTIALLY_LOADED", 1, 1),
            "d.gz": ("FAILED", 0, 0), "e.gz": ("LOADED", 0, 0)}
        assert result["c.gz"]["first_error_column"] == "ms_played"
        assert "expected an integer" in result["c.gz"]["first_error"] and '"seven"' in result["c.gz"]["first_error"]
        assert result["d.gz"]["first_error"].startswith("not gzip data")
        q = {(r["file"].rsplit("/", 1)[1], r["line"]): r for r in execute(conn, "SELECT * FROM system.load_errors")}
        assert q[("b.gz", 2)]["raw"] == "{oops" and q[("b.gz", 2)]["error"].startswith("not valid JSON")
        assert q[("c.gz", 2)]["column_name"] == "ms_played" and '"seven"' in q[("c.gz", 2)]["raw"]
        assert q[("d.gz", None)]["error"].startswith("not gzip data")
        assert sorted(r[0] for r in rows(conn, "SELECT play_id FROM music.live")) == [1, 2, 3, 5, 6]
        # Nothing is loaded twice; a failed file stays recorded (FORCE retries it).
        assert execute(conn, copy_sql(loc)) == []
        # Re-uploaded with the same name and new content: a new etag, so loaded again.
        put("day=1/a.gz", gzip.compress((line(9, 1) + "\n").encode()))
        again = execute(conn, copy_sql(loc))
        assert [(f["file"].rsplit("/", 1)[1], f["rows_loaded"]) for f in again] == [("a.gz", 1)]
        # Renamed: a new path, so loaded again (identity is path + size + etag).
        os.rename(land / "day=1" / "a.gz", land / "day=1" / "a2.gz")
        assert [f["file"].rsplit("/", 1)[1] for f in execute(conn, copy_sql(loc))] == ["a2.gz"]
        assert sorted(r[0] for r in rows(conn, "SELECT play_id FROM music.live")) == [1, 2, 3, 5, 6, 9, 9]
        # SKIP_FILE: a file with a bad line loads nothing of it.
        put("day=2/f.gz", gzip.compress((line(10, 2) + "\n[1]\n").encode()))
        skipped = execute(conn, copy_sql(loc, "ON_ERROR = SKIP_FILE"))
        assert [(f["status"], f["rows_loaded"], f["rows_rejected"]) for f in skipped] == [("SKIPPED", 0, 1)]
        # Wrong statements say what is wrong.
        for sql, expected in [
            (copy_sql(f"{tmp_path}/nowhere/"), "cannot be read"),
            (copy_sql(loc).replace("music.live", "music.nothing"), "music.nothing"),
            (copy_sql(loc, "ON_ERROR = MAYBE"), "ON_ERROR = ABORT_STATEMENT | ABORT | CONTINUE | SKIP_FILE"),
            (copy_sql(loc, "PATTERN = '('").replace("PATTERN = '.*[.]gz' ", ""), "PATTERN '('"),
            (f"COPY INTO music.live FROM '{loc}' FILE_FORMAT = (COMPRESSION = GZIP)", "FILE_FORMAT needs TYPE"),
            (f"COPY INTO music.live FROM (SELECT 1 AS nope FROM '{loc}')", "'nope', which is not a column"),
            (f"CREATE PIPE music.p AS {copy_sql(loc, '')}", "cannot use ON_ERROR = ABORT_STATEMENT"),
            ("ALTER PIPE music.none PAUSE", "not found"),
        ]:
            err = error_of(conn, sql)
            assert expected in err, (sql, err)
        execute(conn, f"CREATE PIPE music.p INTERVAL = '1h' AS {copy_sql(loc)}")
        conn.close()
        # Readers may look (SHOW PIPES, the system tables) but not load or change pipes.
        run_cli("user", "add", "viewer", "--role", "reader", "--password", "viewer-pw1", "--warehouse", str(wh))
        reader = adbc_connect(s.uri, user="viewer", password="viewer-pw1")
        for sql in [copy_sql(loc), copy_sql(loc, "VALIDATION_MODE = RETURN_ERRORS"), "ALTER PIPE music.p PAUSE",
                    "DROP PIPE music.p", f"CREATE PIPE music.q AS {copy_sql(loc)}"]:
            assert "PERMISSION_DENIED" in error_of(reader, sql) or "permission" in error_of(reader, sql).lower(), sql
        assert [p["name"] for p in execute(reader, "SHOW PIPES")] == ["music.p"]
        assert rows(reader, "SELECT count(*) FROM system.load_errors")[0][0] == 4
        reader.close()
    finally:
        s.stop()


def run_trials(server_factory, feeder, location, trials, seed, conn_check=None):
    """Kill the server with SIGKILL at random moments while the feeder keeps dropping files."""
    rng = random.Random(seed)
    stop = threading.Event()

    def feed():
        while not stop.is_set():
            feeder.one()
            time.sleep(rng.uniform(0.01, 0.08))

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    try:
        for _ in range(trials):
            s = server_factory().start()
            time.sleep(rng.uniform(0.2, 2.0))
            s.kill()
    finally:
        stop.set()
        t.join()


def pipe_scenario(tmp_path, wh, location, put, env, trials, seed):
    feeder = Feeder(put, seed)
    for _ in range(5):
        feeder.one()
    log = str(tmp_path / "server.log")

    def make():
        return Server(wh, log_path=log, env=env)

    s = make().start()
    conn = adbc_connect(s.uri)
    execute(conn, "CREATE SCHEMA music")
    execute(conn, TABLE_DDL)
    execute(conn, f"CREATE PIPE music.live_pipe INTERVAL = '200ms' AS {copy_sql(location)}")
    conn.close()
    s.kill()
    run_trials(make, feeder, location, trials, seed)
    s = make().start()
    try:
        conn = adbc_connect(s.uri)
        drain(conn, len(feeder.files))
        time.sleep(0.5)
        check_exact(conn, feeder, location)
        pipes = execute(conn, "SHOW PIPES")
        assert pipes[0]["name"] == "music.live_pipe" and pipes[0]["state"] == "running"
        conn.close()
    finally:
        s.stop()
    with open(log) as f:
        text = f.read()
    return feeder, text


def test_pipe_survives_sigkill_trials_local(tmp_path):
    land = tmp_path / "land"
    land.mkdir()
    feeder, log = pipe_scenario(tmp_path, str(tmp_path / "wh"), f"{land}/", local_put(land), {}, trials=TRIALS, seed=7)
    assert len(feeder.files) > 100
    print(f"local: {len(feeder.files)} files, {len(feeder.good)} rows, redone batches: {log.count('redoing an unfinished')}")


def test_two_servers_compaction_and_overwrite_beside_the_pipe(tmp_path):
    land = tmp_path / "land"
    land.mkdir()
    location = f"{land}/"
    feeder = Feeder(local_put(land), 11)
    wh = str(tmp_path / "wh")
    env = {"STREAMPULSE_INGEST_MAINTENANCE_INTERVAL": "1s"}
    a = Server(wh, log_path=str(tmp_path / "a.log"), env=env).start()
    b = Server(wh, log_path=str(tmp_path / "b.log"), env=env).start()
    try:
        ca, cb = adbc_connect(a.uri), adbc_connect(b.uri)
        execute(ca, "CREATE SCHEMA music")
        execute(ca, TABLE_DDL)
        execute(ca, f"CREATE PIPE music.live_pipe INTERVAL = '100ms' AS {copy_sql(location)}")
        stop = threading.Event()
        seen = []

        def read():
            c = adbc_connect(b.uri)
            while not stop.is_set():
                n, d = rows(c, "SELECT count(*), count(DISTINCT play_id) FROM music.live")[0]
                seen.append((n, d))
                time.sleep(0.05)
            c.close()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.time() + 25
        overwrites = conflicts = 0
        while time.time() < deadline:
            feeder.one()
            if len(feeder.files) % 10 == 0:
                # Rewrites a day with its own rows while the pipe appends to it: Delta refuses
                # an overwrite whose partition gained rows meanwhile, and a rerun succeeds.
                for _ in range(10):
                    try:
                        execute(cb, "INSERT OVERWRITE music.live SELECT * FROM music.live "
                                    "WHERE play_date = DATE '2026-11-02'")
                        overwrites += 1
                        break
                    except Exception as e:  # noqa: BLE001
                        assert "concurrent" in str(e), e
                        conflicts += 1
            time.sleep(0.05)
        drain(ca, len(feeder.files))
        stop.set()
        reader.join()
        check_exact(ca, feeder, location)
        assert overwrites >= 5
        assert all(n == d for n, d in seen), "a reader saw a duplicate"
        counts = [n for n, _ in seen]
        assert counts == sorted(counts), "a reader saw rows disappear"
        by_server = rows(ca, "SELECT count(*) FROM system.copy_history")[0][0]
        assert by_server == len(feeder.files)
        ca.close()
        cb.close()
    finally:
        a.stop()
        b.stop()
    logs = (tmp_path / "a.log").read_text() + (tmp_path / "b.log").read_text()
    assert "ingest maintenance done" in logs
    assert (tmp_path / "a.log").read_text().count("batch committed") > 0
    assert (tmp_path / "b.log").read_text().count("batch committed") > 0, "both servers loaded batches"
    assert len(counts) > 10


def test_pipe_survives_sigkill_trials_on_s3(s3, tmp_path):
    endpoint, client = s3
    prefix = f"landing-{random.randint(0, 1 << 30)}/"

    def put(name, data):
        client.put_object(Bucket=BUCKET, Key=prefix + name, Body=data)

    feeder, log = pipe_scenario(tmp_path, f"s3://{BUCKET}/wh-ingest", f"s3://{BUCKET}/{prefix}", put,
                                s3_env(endpoint), trials=TRIALS, seed=13)
    assert len(feeder.files) > 100
    print(f"s3: {len(feeder.files)} files, {len(feeder.good)} rows, redone batches: {log.count('redoing an unfinished')}")
    # The ledger's plans are in the warehouse, one per batch, numbered without gaps.
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="wh-ingest/_ingest/")
    plans = sorted(o["Key"].rsplit("/", 1)[1] for p in pages for o in p.get("Contents", []) if "/batches/" in o["Key"])
    assert plans == [f"{k:020}.json" for k in range(1, len(plans) + 1)]


def test_live_generator_and_sql_ingest_pipe(tmp_path):
    """`datagen --live` files, loaded by the pipe that sql/ingest.sql declares into the batch-loaded
    music.plays: the live rows equal DuckDB's reading of the same files."""
    from conftest import generate_and_load

    data, wh = generate_and_load(tmp_path, seed=5)
    live = tmp_path / "live"
    r = run_cli("datagen", "--live", "--scale", "0.001", "--seed", "5", "--out", str(live), "--files-per-minute", "6000", "--lines-per-file", "500",
                "--max-files", "6", "--late-share", "0.5", "--quiet")
    assert "wrote 6 files (3000 lines" in r.stdout, r.stdout
    s = Server(str(wh), log_path=str(tmp_path / "server.log")).start()
    try:
        conn = adbc_connect(s.uri)
        before = rows(conn, "SELECT count(*), max(play_id) FROM music.plays")[0]
        run_cli("sql", "--connect", s.uri, "--user", "admin", "--password", "admin-pass-123",
                "-f", str(ROOT / "sql" / "ingest.sql"), "--param", f"events={live}/events/")
        drain(conn, 6)
        assert rows(conn, "SELECT count(*) FROM music.plays")[0][0] == before[0] + 3000
        ours = set(rows(conn, f"SELECT play_id, user_id, song_id, play_date::VARCHAR FROM music.plays WHERE play_id > {before[1]}"))
        theirs = set(duckdb.connect().execute(
            f"SELECT play_id, user_id, song_id, CAST(CAST(played_at AS TIMESTAMP) AS DATE)::VARCHAR "
            f"FROM read_json('{live}/events/**/*.gz', format='newline_delimited')").fetchall())
        assert ours == theirs and len(ours) == 3000
        # Live users and songs exist in the batch tables (same audience and catalogue).
        orphans = rows(conn, f"SELECT count(*) FROM music.plays p LEFT JOIN music.songs s ON p.song_id = s.song_id "
                             f"WHERE p.play_id > {before[1]} AND s.song_id IS NULL")[0][0]
        assert orphans == 0
        pipe = execute(conn, "SHOW PIPES")[0]
        assert pipe["name"] == "music.plays_events" and pipe["files_loaded"] == 6 and pipe["lag_seconds"] is not None
        import urllib.request
        metrics = urllib.request.urlopen(f"{s.http}/metrics").read().decode()
        assert 'streampulse_ingest_files_loaded_total{pipe="music.plays_events"} 6' in metrics, metrics[-2000:]
        assert "streampulse_ingest_lag_seconds_bucket" in metrics
        conn.close()
    finally:
        s.stop()


def test_maintenance_vacuums_old_orphans_only(tmp_path):
    """Compaction beside the pipe, and the full vacuum: an unreferenced file older than the
    table's retention (7 days) goes, a recent one stays, every row stays."""
    land = tmp_path / "land"
    land.mkdir()
    location = f"{land}/"
    feeder = Feeder(local_put(land), 21, bad_every=1000)
    wh = tmp_path / "wh"
    env = {"STREAMPULSE_INGEST_MAINTENANCE_INTERVAL": "1s", "STREAMPULSE_INGEST_VACUUM_INTERVAL": "1s"}
    s, conn = serve_with_table(wh, tmp_path / "server.log", env)
    try:
        table_dir = next((wh / "music").glob("live-*"))
        old, recent = table_dir / "part-00000-orphan-old.parquet", table_dir / "part-00000-orphan-new.parquet"
        for p in (old, recent):
            p.write_bytes(b"PAR1 left by a crashed batch")
        eight_days_ago = time.time() - 8 * 86400
        os.utime(old, (eight_days_ago, eight_days_ago))
        execute(conn, f"CREATE PIPE music.live_pipe INTERVAL = '100ms' AS {copy_sql(location)}")
        deadline = time.time() + 60
        while "files_vacuumed=1" not in (tmp_path / "server.log").read_text() and time.time() < deadline:
            feeder.one()
            time.sleep(0.3)
        drain(conn, len(feeder.files))
        check_exact(conn, feeder, location)
        assert not old.exists() and recent.exists()
        conn.close()
    finally:
        s.stop()
    log = (tmp_path / "server.log").read_text()
    assert "files_vacuumed=1" in log
    assert any(int(part.split("=")[1]) > 0 for part in log.split() if part.startswith("files_removed=")), "compacted"
