"""What operators get (issue 12, first part): the HTTP listener's /healthz, /readyz and /metrics
(parsed by the prometheus_client package's OpenMetrics parser), and system.queries, which shows
statements from Flight SQL clients with their user, rows, peak memory and errors."""

import os
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from conftest import ADMIN_PASSWORD, Server, adbc_connect, binary, run_cli


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _samples(text):
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("operations")
    s = Server(str(base / "wh"), log_path=str(base / "server.log")).start()
    yield s
    s.stop()


def test_system_queries_and_metrics_show_what_clients_ran(served):
    conn = adbc_connect(served.uri)
    cur = conn.cursor()
    cur.execute("SELECT value FROM generate_series(1, 2500) AS t(value) WHERE value % 5 = 0")
    assert len(cur.fetchall()) == 500
    with pytest.raises(Exception, match="not found"):
        cur.execute("SELECT * FROM nowhere.nothing")
        cur.fetchall()
    cur.execute("CREATE SCHEMA IF NOT EXISTS ops")
    with pytest.raises(Exception, match="reserved"):
        cur.execute("CREATE SCHEMA system")
    cur.execute("SELECT user, protocol, statement_kind, query_text, state, rows, peak_memory_bytes, error_code, "
                "error_message, start_time <= end_time FROM system.queries ORDER BY query_id")
    rows = cur.fetchall()
    by_text = {r[3]: r for r in rows}
    ok = by_text["SELECT value FROM generate_series(1, 2500) AS t(value) WHERE value % 5 = 0"]
    assert ok[:3] == ("admin", "flight_sql", "query") and ok[4] == "succeeded" and ok[5] == 500
    assert ok[6] >= 0 and ok[9] is True
    failed = by_text["SELECT * FROM nowhere.nothing"]
    assert failed[4] == "failed" and failed[7] == "NOT_FOUND" and "not found" in failed[8]
    assert by_text["CREATE SCHEMA IF NOT EXISTS ops"][2:5] == ("ddl", "CREATE SCHEMA IF NOT EXISTS ops", "succeeded")
    assert by_text["CREATE SCHEMA system"][7] == "INVALID_ARGUMENT"
    # a reader sees the system schema too, in queries and in Flight SQL metadata
    run_cli("user", "add", "watcher", "--role", "reader", "--password", "watch-pw", "--warehouse", served.warehouse)
    reader = adbc_connect(served.uri, user="watcher", password="watch-pw")
    rcur = reader.cursor()
    rcur.execute("SELECT count(*) FROM system.queries WHERE state = 'succeeded'")
    assert rcur.fetchone()[0] >= 2
    objects = reader.adbc_get_objects(depth="tables", db_schema_filter="system").read_all().to_pylist()
    tables = [t["table_name"] for c in objects for s in c["catalog_db_schemas"] for t in s["db_schema_tables"]]
    assert "queries" in tables
    reader.close()
    conn.close()

    status, text = _get(f"{served.http}/metrics")
    assert status == 200
    samples = _samples(text)
    assert samples[("streampulse_queries_total", (("kind", "query"), ("status", "succeeded")))] >= 1
    assert samples[("streampulse_queries_total", (("kind", "unknown"), ("status", "failed")))] >= 1  # did not plan
    assert samples[("streampulse_queries_total", (("kind", "ddl"), ("status", "failed")))] >= 1
    assert samples[("streampulse_queries_total", (("kind", "ddl"), ("status", "succeeded")))] >= 1
    assert samples[("streampulse_query_duration_seconds_count", (("kind", "query"),))] >= 1
    assert samples[("streampulse_memory_pool_limit_bytes", ())] > 0
    assert ("streampulse_admission_rejected_total", ()) in samples
    assert any(name == "streampulse_build_info" for name, _ in samples)
    # no user names or SQL in labels
    assert "admin" not in "".join(str(labels) for _, labels in samples)


def test_bulk_ingest_shows_in_system_queries(served):
    import pyarrow as pa
    conn = adbc_connect(served.uri)
    cur = conn.cursor()
    cur.execute("CREATE SCHEMA IF NOT EXISTS ops")
    cur.adbc_ingest("ingested", pa.table({"x": list(range(70))}), mode="create", db_schema_name="ops")
    cur.execute("SELECT protocol, statement_kind, state, rows FROM system.queries "
                "WHERE query_text = 'INGEST create INTO ops.ingested'")
    assert cur.fetchall() == [("flight_sql", "ingest", "succeeded", 70)]
    conn.close()


def test_health_and_readiness(tmp_path):
    """/readyz says 503 while the server is still loading (here: the demo data), then 200."""
    env = {"STREAMPULSE_ADMIN_PASSWORD": ADMIN_PASSWORD, "STREAMPULSE_LOG": "warn"}
    proc = subprocess.Popen([binary(), "serve", "--warehouse", str(tmp_path / "wh"), "--listen", "127.0.0.1:0",
                             "--http-listen", "127.0.0.1:0", "--demo", "--demo-scale", "0.0002"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, **env})
    try:
        http = None
        while http is None:
            line = proc.stdout.readline().decode()
            assert line or proc.poll() is None, "server exited"
            if "HTTP (metrics, health) on http://" in line:
                http = line.strip().split(" on ")[1]
        assert _get(f"{http}/healthz") == (200, "ok\n")
        status, body = _get(f"{http}/readyz")
        assert status == 503 and "not ready" in body, body
        deadline = time.time() + 300
        while time.time() < deadline:
            line = proc.stdout.readline().decode()
            if "listening on grpc://" in line:
                break
        # ready once the scheduler's first pass (recovering runs a crash left) is done: moments later
        for _ in range(60):
            status, body = _get(f"{http}/readyz")
            if status == 200:
                break
            assert "scheduler" in body, body
            time.sleep(0.5)
        assert status == 200 and body.startswith("ready"), body
    finally:
        proc.terminate()
        proc.wait(30)


def test_http_listen_errors_are_clear(tmp_path):
    r = run_cli("serve", "--warehouse", str(tmp_path / "wh"), "--listen", "127.0.0.1:0", "--http-listen",
                "256.1.1.1:80", check=False)
    assert r.returncode == 2 and "--http-listen" in r.stderr, r.stderr
