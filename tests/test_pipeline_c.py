"""Pipeline C (song metadata sync) against the mock metadata API, with faults.

- With every fault kind turned on (429 with Retry-After, 500, 503, connection resets, timeouts,
  truncated bodies, malformed JSON, a wrong-typed field, an unknown extra field, and the
  catalogue changing during the crawl), `music.songs` equals the mock's catalogue exactly, with
  DuckDB reading the mock's own dump as the oracle.
- A rerun with nothing changed makes no Delta commit; after the mock changes 1 % of songs, one
  commit updates exactly those (the Delta log's own metrics count them).
- Faults beyond the retry budget fail the run with the URL and page named, and the table keeps
  its version and rows.
- Security: the allow-list decides before any request (the mock counts requests), redirects to
  elsewhere are refused, names resolving to loopback are refused, readers may neither create nor
  read JSON_API tables (also through a view), and a server without an allow-list refuses all.
"""

import glob
import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import duckdb
import pytest
from adbc_driver_manager import AdbcStatusCode, Error

from conftest import ADMIN_PASSWORD, ROOT, Server, adbc_connect, binary, run_cli

PIPELINE = ROOT / "sql" / "pipelines" / "c_metadata_sync.sql"
COLUMNS = ["song_id", "artist_id", "title", "album", "genre", "release_date", "duration_ms", "tempo", "energy",
           "danceability", "valence", "acousticness", "instrumentalness", "speechiness", "liveness"]
# Realistic rates: a few percent of requests fail in each way.
FAULTS = ["429:0.05", "500:0.03", "503:0.03", "reset:0.03", "timeout:0.01", "truncate:0.03", "malformed:0.03",
          "wrong_type:0.03", "extra_field:0.05", "drift:0.02"]


class Mock:
    def __init__(self, data, *args):
        self.proc = subprocess.Popen([binary(), "mock-api", "--data", str(data), "--listen", "127.0.0.1:0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.proc.stdout.readline().decode()
        assert "mock-api listening on " in line, line + self.proc.stderr.read().decode()
        self.url = line.strip().split(" on ")[1]

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path):
        req = urllib.request.Request(self.url + path, method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("c_data")
    run_cli("datagen", "--scale", "0.001", "--seed", "13", "--out", str(out), "--quiet", "--event-days", "0")
    return out


@pytest.fixture(scope="module")
def mock(data):
    # 100 songs a page: ~160 pages a crawl, so each fault kind fires at these rates.
    m = Mock(data, "--page-size", "200", "--latency", "2ms", "--jitter", "8ms", "--seed", "5",
             *[a for f in FAULTS for a in ("--fault", f)])
    yield m
    m.stop()


@pytest.fixture(scope="module")
def failing(data):
    """Half of all requests get 503: a page failing three times in a row is near certain."""
    m = Mock(data, "--page-size", "200", "--fault", "503:0.5", "--seed", "3")
    yield m
    m.stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory, mock, failing):
    wh = tmp_path_factory.mktemp("c_wh")
    log = tmp_path_factory.mktemp("c_logs") / "server.log"
    s = Server(str(wh), ["--http-sources-allow", f"{mock.url}/,{failing.url}/songs"], log_path=str(log)).start()
    s.log = log
    yield s
    s.stop()


def run_pipeline(server, mock, page_size=None):
    sql = PIPELINE.read_text()
    if page_size:
        sql = sql.replace("page_size=1000", f"page_size={page_size}")
    script = Path(server.warehouse).parent / "c_pipeline.sql"
    script.write_text(sql)
    return run_cli("sql", "--connect", server.uri, "--user", "admin", "--password", ADMIN_PASSWORD,
                   "-f", str(script), "--param", f"songs_api={mock.url}", timeout=600)


def delta_log(server):
    logs = sorted(glob.glob(os.path.join(server.warehouse, "music", "songs-*", "_delta_log", "0*.json")))
    assert logs, "music.songs has no Delta log"
    return logs


def table(conn):
    cur = conn.cursor()
    cur.execute(f"SELECT {', '.join(COLUMNS)} FROM music.songs ORDER BY song_id")
    return cur.fetch_arrow_table().to_pandas()


def oracle(mock, tmp_path):
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps(mock.get("/_mock/catalogue")))
    con = duckdb.connect()
    return con.execute(
        f"SELECT {', '.join(COLUMNS)} FROM read_json('{path}', columns = {{"
        "song_id: 'BIGINT', artist_id: 'BIGINT', title: 'VARCHAR', album: 'VARCHAR', genre: 'VARCHAR', "
        "release_date: 'DATE', duration_ms: 'BIGINT', tempo: 'DOUBLE', energy: 'DOUBLE', danceability: 'DOUBLE', "
        "valence: 'DOUBLE', acousticness: 'DOUBLE', instrumentalness: 'DOUBLE', speechiness: 'DOUBLE', "
        "liveness: 'DOUBLE'}) ORDER BY song_id").df()


def assert_same(ours, truth):
    assert len(ours) == len(truth), (len(ours), len(truth))
    ours = ours.reset_index(drop=True)
    truth = truth.reset_index(drop=True)
    for c in COLUMNS:
        a, b = ours[c], truth[c]
        if c == "release_date":
            a, b = a.astype(str), b.astype(str)
        mismatch = (a.astype(object) != b.astype(object)) & ~(a.isna() & b.isna())
        assert not mismatch.any(), f"{c} differs at song_id {ours['song_id'][mismatch].head(5).tolist()}"


def test_sync_with_every_fault_equals_the_catalogue_and_reruns_are_idempotent(served, mock, tmp_path):
    started = time.time()
    run_pipeline(served, mock, page_size=100)
    elapsed = time.time() - started
    stats = mock.get("/_mock/stats")
    fired = stats["faults"]
    # Every kind of fault really happened during the sync.
    for kind in ["429", "500", "503", "reset", "timeout", "truncate", "malformed", "wrong_type", "extra_field", "drift"]:
        assert fired.get(kind, 0) >= 1, (kind, fired)
    conn = adbc_connect(served.uri)
    assert_same(table(conn), oracle(mock, tmp_path))
    # The drift (a song removed mid-crawl, one added) was noticed and the crawl repeated.
    log = Path(served.log).read_text()
    assert "JSON_API pages disagree; crawling again" in log
    versions = len(delta_log(served))

    # Nothing changed: the rerun fetches everything again and commits nothing.
    run_pipeline(served, mock, page_size=100)
    assert len(delta_log(served)) == versions
    assert_same(table(conn), oracle(mock, tmp_path))

    # 1 % of songs change: one commit, updating exactly those.
    changed = mock.post("/_mock/change?percent=1")["changed"]
    assert changed
    run_pipeline(served, mock, page_size=100)
    logs = delta_log(served)
    assert len(logs) == versions + 1
    commit = [json.loads(line) for line in Path(logs[-1]).read_text().splitlines()]
    info = next(a["commitInfo"] for a in commit if "commitInfo" in a)
    assert info["operation"] == "MERGE"
    metrics = info["operationMetrics"]
    assert int(metrics["num_target_rows_updated"]) == len(changed), metrics
    assert int(metrics["num_target_rows_inserted"]) == 0 and int(metrics["num_target_rows_deleted"]) == 0, metrics
    assert_same(table(conn), oracle(mock, tmp_path))
    conn.close()
    print(f"first sync with faults: {elapsed:.1f}s, {stats['requests']} requests, faults {fired}")


def test_faults_beyond_the_retry_budget_fail_naming_url_and_page_and_change_nothing(served, mock, failing):
    conn = adbc_connect(served.uri)
    cur = conn.cursor()
    # The table exists from the sync test or is made here.
    if not glob.glob(os.path.join(served.warehouse, "music", "songs-*")):
        run_pipeline(served, mock, page_size=100)
    before = table(conn)
    versions = len(delta_log(served))
    cur.execute(
        "CREATE OR REPLACE EXTERNAL TABLE landing.flaky (song_id BIGINT NOT NULL, title VARCHAR) STORED AS JSON_API "
        f"LOCATION '{failing.url}/songs?page={{page}}' "
        "OPTIONS ('retries' '2', 'retry_base' '20ms', 'concurrency' '4', 'primary_key' 'song_id')")
    with pytest.raises(Error) as e:
        cur.execute("MERGE INTO music.songs AS t USING landing.flaky AS s ON t.song_id = s.song_id "
                    "WHEN MATCHED THEN UPDATE SET title = 'broken'")
    message = str(e.value)
    assert e.value.status_code == AdbcStatusCode.IO, message
    assert f"{failing.url}/songs?page=" in message and "(page " in message, message
    assert "HTTP 503" in message and "gave up after 3 attempts" in message, message
    assert len(delta_log(served)) == versions
    assert table(conn).equals(before)
    conn.close()


def read_error(warehouse, allowed, location):
    """The error of reading a one-column JSON_API table at `location` on a server allowing `allowed`."""
    s = Server(str(warehouse), ["--http-sources-allow", f"{allowed}/"], log_path=str(warehouse) + ".log").start()
    try:
        c = adbc_connect(s.uri)
        k = c.cursor()
        k.execute("CREATE SCHEMA landing")
        k.execute(f"CREATE EXTERNAL TABLE landing.t (song_id BIGINT) STORED AS JSON_API LOCATION '{location}' "
                  "OPTIONS ('retries' '0')")
        with pytest.raises(Error) as e:
            k.execute("SELECT count(*) FROM landing.t")
            k.fetchall()
        c.close()
        return str(e.value)
    finally:
        s.stop()


def test_allow_list_redirects_and_local_names(served, mock, data, tmp_path):
    conn = adbc_connect(served.uri)
    cur = conn.cursor()
    cur.execute("CREATE SCHEMA IF NOT EXISTS landing")
    requests = mock.get("/_mock/stats")["requests"]
    # Outside the allow-list: refused at CREATE, before any request.
    other = mock.url.replace("127.0.0.1", "127.0.0.2")
    with pytest.raises(Error) as e:
        cur.execute(f"CREATE EXTERNAL TABLE landing.nope (song_id BIGINT) STORED AS JSON_API "
                    f"LOCATION '{other}/songs?page={{page}}'")
    assert e.value.status_code == AdbcStatusCode.UNAUTHORIZED, e.value
    assert "not under an allowed URL prefix" in str(e.value)
    with pytest.raises(Error) as e:
        cur.execute("CREATE EXTERNAL TABLE landing.meta (id BIGINT) STORED AS JSON_API "
                    "LOCATION 'http://169.254.169.254/latest/meta-data?page={page}'")
    assert "not under an allowed URL prefix" in str(e.value)
    # A secret as an option is refused with the way to do it.
    with pytest.raises(Error) as e:
        cur.execute(f"CREATE EXTERNAL TABLE landing.tok (song_id BIGINT) STORED AS JSON_API "
                    f"LOCATION '{mock.url}/songs?page={{page}}' OPTIONS ('token' 'abc')")
    assert "bearer_token_env" in str(e.value)
    assert mock.get("/_mock/stats")["requests"] == requests

    # A redirect to a host the allow-list does not name is not followed.
    target = Mock(data)
    redirector = Mock(data, "--redirect-to", target.url)
    try:
        message = read_error(tmp_path / "wh", redirector.url, f"{redirector.url}/moved/songs?page={{page}}")
        assert "redirect refused" in message, message
        assert target.get("/_mock/stats")["requests"] == 0
    finally:
        redirector.stop()
        target.stop()

    # A host name that resolves to loopback is refused even when listed (DNS rebinding).
    local = mock.url.replace("127.0.0.1", "localhost")
    message = read_error(tmp_path / "wh2", local, f"{local}/songs?page={{page}}")
    assert "loopback" in message, message
    conn.close()


def test_readers_may_not_create_or_read_http_sources(served, mock):
    run_cli("user", "add", "songreader", "--role", "reader", "--password", "reader-pw-9", "--warehouse",
            served.warehouse)
    conn = adbc_connect(served.uri)
    cur = conn.cursor()
    cur.execute("CREATE SCHEMA IF NOT EXISTS landing")
    cur.execute(f"CREATE OR REPLACE EXTERNAL TABLE landing.small (song_id BIGINT NOT NULL, title VARCHAR) "
                f"STORED AS JSON_API LOCATION '{mock.url}/songs?page={{page}}&page_size=5000'")
    cur.execute("CREATE OR REPLACE VIEW landing.small_view AS SELECT song_id FROM landing.small")
    reader = adbc_connect(served.uri, user="songreader", password="reader-pw-9")
    rc = reader.cursor()
    for sql in ["SELECT count(*) FROM landing.small", "SELECT count(*) FROM landing.small_view",
                f"CREATE EXTERNAL TABLE landing.mine (id BIGINT) STORED AS JSON_API "
                f"LOCATION '{mock.url}/songs?page={{page}}'"]:
        with pytest.raises(Error) as e:
            rc.execute(sql)
            rc.fetchall()
        assert e.value.status_code == AdbcStatusCode.UNAUTHORIZED, (sql, e.value)
    reader.close()
    conn.close()


def test_without_an_allow_list_http_sources_are_off(tmp_path, mock):
    s = Server(str(tmp_path / "wh"), log_path=str(tmp_path / "server.log")).start()
    try:
        c = adbc_connect(s.uri)
        k = c.cursor()
        with pytest.raises(Error) as e:
            k.execute(f"CREATE EXTERNAL TABLE public_api (id BIGINT) STORED AS JSON_API "
                      f"LOCATION '{mock.url}/songs?page={{page}}'")
        assert "--http-sources-allow" in str(e.value), e.value
        c.close()
    finally:
        s.stop()


def test_cursor_pagination_and_bearer_token(tmp_path, data):
    env = dict(os.environ, SONGS_TOKEN="s3cret-token")
    proc = subprocess.Popen([binary(), "mock-api", "--data", str(data), "--listen", "127.0.0.1:0", "--page-size", "700",
                             "--token-env", "SONGS_TOKEN"], stdout=subprocess.PIPE, env=env)
    url = proc.stdout.readline().decode().strip().split(" on ")[1]
    s = Server(str(tmp_path / "wh"), ["--http-sources-allow", f"{url}/"], env={"SONGS_TOKEN": "s3cret-token"},
               log_path=str(tmp_path / "server.log")).start()
    try:
        c = adbc_connect(s.uri)
        k = c.cursor()
        k.execute(f"CREATE EXTERNAL TABLE by_cursor (song_id BIGINT NOT NULL, title VARCHAR) STORED AS JSON_API "
                  f"LOCATION '{url}/songs?cursor={{cursor}}' "
                  "OPTIONS ('pagination' 'cursor', 'bearer_token_env' 'SONGS_TOKEN', 'primary_key' 'song_id')")
        k.execute("SELECT count(*), count(DISTINCT song_id) FROM by_cursor")
        n, distinct = k.fetchone()
        songs = duckdb.connect().execute(f"SELECT count(*) FROM read_csv('{data}/songs.csv')").fetchone()[0]
        assert n == distinct == songs
        # The token is not in the catalog.
        catalog = "".join(Path(p).read_text() for p in glob.glob(str(tmp_path / "wh" / "_catalog" / "*.json")))
        assert "s3cret-token" not in catalog
        # Without the token the API says 401: not retried, named.
        k.execute(f"CREATE EXTERNAL TABLE no_token (song_id BIGINT) STORED AS JSON_API "
                  f"LOCATION '{url}/songs?cursor={{cursor}}' OPTIONS ('pagination' 'cursor')")
        with pytest.raises(Error) as e:
            k.execute("SELECT count(*) FROM no_token")
            k.fetchall()
        assert "HTTP 401" in str(e.value) and "gave up" not in str(e.value), e.value
        c.close()
    finally:
        s.stop()
        proc.terminate()
        proc.wait(10)
