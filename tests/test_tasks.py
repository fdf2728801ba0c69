"""Tasks (issue 12): scheduled SQL scripts run by the real server, checked through system.runs,
the output tables, /metrics and the CLI. Schedules here are a few seconds long so the tests see
many slots; the DST arithmetic is unit-tested in catalog/src/schedule/spec.rs with fixed times."""

import re
import time
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from conftest import ADMIN_PASSWORD, Server, adbc_connect, generate_and_load, run_cli

ROOT = Path(__file__).resolve().parent.parent

# ~3 s of work in a debug build on two cores.
SLOW = "SELECT count(*) FROM generate_series(1, 300000000) t(v) WHERE v % 7 = 3"


def rows(conn, sql):
    cur = conn.cursor()
    cur.execute(sql)
    out = cur.fetchall()
    cur.close()
    return out


def run(conn, sql):
    cur = conn.cursor()
    cur.execute(sql)
    cur.fetchall()
    cur.close()


def wait_for(what, check, timeout=90, every=0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def runs_of(conn, task):
    return [dict(zip(("run_id", "scheduled_time", "trigger", "attempt", "state", "error_message", "failed_statement",
                      "skip_reason", "started_at", "completed_at", "statements_done", "node", "next_retry_at"), r))
            for r in rows(conn, "SELECT run_id, scheduled_time, \"trigger\", attempt, state, error_message, "
                                "failed_statement, skip_reason, started_at, completed_at, statements_done, node, "
                                f"next_retry_at FROM system.runs WHERE task = '{task}' ORDER BY scheduled_time, attempt")]


def metrics(http):
    import urllib.request
    with urllib.request.urlopen(f"{http}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_tasks_sql_bodies_are_the_pipeline_scripts():
    text = (ROOT / "sql" / "tasks.sql").read_text()
    bodies = dict(re.findall(r"CREATE OR REPLACE TASK (\S+).*?AS \$\$\n(.*?)\$\$;", text, re.S))
    expected = {
        "music.daily_play_counts": "a_daily_play_counts.sql",
        "music.recommendations": "b_recommendations.sql",
        "music.song_metadata_sync": "c_metadata_sync.sql",
        "music.royalties": "d_royalties.sql",
        "music.experiment_results": "e_ab_analytics.sql",
    }
    assert set(bodies) == set(expected)
    for task, script in expected.items():
        assert bodies[task] == (ROOT / "sql" / "pipelines" / script).read_text(), f"{task} differs from {script}"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("tasks")
    s = Server(str(base / "wh"), log_path=str(base / "server.log")).start()
    conn = adbc_connect(s.uri)
    run(conn, "CREATE SCHEMA t")
    run(conn, "CREATE TABLE t.log (stamp VARCHAR, source VARCHAR)")
    yield s, conn
    conn.close()
    s.stop()


def test_schedule_after_retries_skip_and_suspend(served):
    server, conn = served
    run(conn, """CREATE TASK t.tick SCHEDULE = '2 SECONDS' PARAMS (stamp = CAST(scheduled_time AS VARCHAR))
                 AS $$ INSERT INTO t.log VALUES ('${stamp}', 'tick') $$""")
    run(conn, "CREATE TASK t.after_tick AFTER t.tick AS $$ INSERT INTO t.log VALUES ('${scheduled_time}', 'after') $$")
    run(conn, """CREATE TASK t.bad SCHEDULE = '3 SECONDS' RETRIES = 2 RETRY_DELAY = '1s' SUSPEND_AFTER_FAILURES = 1
                 AS $$ SELECT 1; SELECT * FROM t.missing $$""")
    run(conn, "CREATE TASK t.after_bad AFTER t.bad AS $$ SELECT 1 $$")
    # Created suspended: nothing runs yet.
    assert {r[0]: r[1] for r in rows(conn, "SELECT name, state FROM system.tasks")} == {
        "t.tick": "suspended", "t.after_tick": "suspended", "t.bad": "suspended", "t.after_bad": "suspended"}
    for task in ("t.after_tick", "t.after_bad", "t.tick", "t.bad"):
        run(conn, f"ALTER TASK {task} RESUME")

    ticks = wait_for("4 scheduled ticks", lambda: (r := [x for x in runs_of(conn, "t.tick") if x["state"] == "succeeded"])
                     and len(r) >= 4 and r)
    slots = [r["scheduled_time"] for r in ticks]
    assert all(r["trigger"] == "schedule" and r["attempt"] == 1 for r in ticks)
    assert all((b - a).total_seconds() == 2 for a, b in zip(slots, slots[1:])), slots
    assert all(s.timestamp() % 2 == 0 for s in slots), "interval slots are aligned to the epoch"

    # AFTER: once per upstream slot, for that slot, after the upstream finished.
    wait_for("the dependant to follow", lambda: len(runs_of(conn, "t.after_tick")) >= 3)
    by_slot = {r["scheduled_time"]: r for r in runs_of(conn, "t.tick")}
    for r in runs_of(conn, "t.after_tick"):
        assert r["trigger"] == "dependency" and r["state"] in ("succeeded", "running")
        up = by_slot[r["scheduled_time"]]
        assert up["state"] == "succeeded" and r["started_at"] >= up["completed_at"]

    # A failing statement: attempts 1..3 each fail with the error and the statement, then the
    # task suspends itself; its dependant is recorded as skipped with the reason.
    def first_slot_attempts():
        r = runs_of(conn, "t.bad")
        r = [x for x in r if r and x["scheduled_time"] == r[0]["scheduled_time"]]
        return len(r) == 3 and all(x["state"] == "failed" for x in r) and r

    bad = wait_for("three failed attempts of the first slot", first_slot_attempts)
    first_slot = bad[0]["scheduled_time"]
    assert [(r["scheduled_time"], r["attempt"]) for r in bad[:3]] == [(first_slot, 1), (first_slot, 2), (first_slot, 3)]
    assert all("not found" in r["error_message"] and r["failed_statement"] == "2: SELECT * FROM t.missing"
               for r in bad[:3]), bad
    assert bad[0]["next_retry_at"] is not None and bad[2]["next_retry_at"] is None
    state, reason = wait_for("auto-suspend", lambda: (r := rows(conn, "SELECT state, suspended_reason FROM system.tasks "
                                                               "WHERE name = 't.bad'")[0]) and r[0] == "suspended" and r)
    assert "consecutive failed runs" in reason and "t.missing" in reason
    skipped = wait_for("the skipped dependant", lambda: runs_of(conn, "t.after_bad"))
    assert skipped[0]["state"] == "skipped" and "upstream t.bad failed" in skipped[0]["skip_reason"]

    # Rows in the output: one per tick slot, none twice.
    run(conn, "ALTER TASK t.tick SUSPEND")
    run(conn, "ALTER TASK t.after_tick SUSPEND")
    time.sleep(3)
    stamps = Counter(r[0] for r in rows(conn, "SELECT stamp FROM t.log WHERE source = 'tick'"))
    done = [r for r in runs_of(conn, "t.tick") if r["state"] == "succeeded"]
    assert len(stamps) == len(done) and max(stamps.values()) == 1

    # The statements of runs show in system.queries as the task's, with the run id.
    q = rows(conn, "SELECT user, protocol, task, run_id, state FROM system.queries WHERE task = 't.tick' LIMIT 1")
    assert q and q[0][:3] == ("admin", "task", "t.tick") and q[0][3] in {r["run_id"] for r in runs_of(conn, "t.tick")}

    m = metrics(server.http)
    assert m[("streampulse_task_runs_total", (("status", "succeeded"), ("task", "t.tick")))] >= 4
    assert m[("streampulse_task_runs_total", (("status", "failed"), ("task", "t.bad")))] >= 3
    assert m[("streampulse_task_runs_total", (("status", "skipped"), ("task", "t.after_bad")))] >= 1
    assert m[("streampulse_task_last_success_timestamp_seconds", (("task", "t.tick"),))] > time.time() - 600
    assert m[("streampulse_task_consecutive_failures", (("task", "t.bad"),))] >= 1
    assert m[("streampulse_task_suspended", (("task", "t.bad"),))] == 1
    assert ("streampulse_scheduler_lag_seconds", ()) in m
    assert ("streampulse_catalog_commit_conflicts_total", ()) in m


def test_overlap_skip_and_timeout(served):
    server, conn = served
    run(conn, f"CREATE TASK t.slow SCHEDULE = '1 SECONDS' OVERLAP = SKIP AS $$ {SLOW} $$")
    run(conn, f"CREATE TASK t.capped SCHEDULE = '1 HOURS' TIMEOUT = '1s' AS $$ SELECT 1; {SLOW} $$")
    run(conn, "ALTER TASK t.slow RESUME")
    wait_for("an overlapping slot skipped", lambda: any(
        r["state"] == "skipped" and "overlap" in r["skip_reason"] for r in runs_of(conn, "t.slow")))
    run(conn, "ALTER TASK t.slow SUSPEND")
    # EXECUTE TASK runs now and fails with the run's error; the run is in system.runs.
    with pytest.raises(Exception, match="timed out after 1s"):
        run(conn, "EXECUTE TASK t.capped")
    r = runs_of(conn, "t.capped")[-1]
    assert r["state"] == "timed_out" and r["trigger"] == "manual" and r["failed_statement"].startswith("2: SELECT count(*)")


def test_readers_may_look_but_not_change_tasks(served):
    server, conn = served
    run(conn, "CREATE TASK t.mine SCHEDULE = '1 HOURS' AS $$ SELECT 1 $$")
    run_cli("user", "add", "viewer", "--role", "reader", "--password", "viewer-pw1", "--warehouse", server.warehouse)
    reader = adbc_connect(server.uri, user="viewer", password="viewer-pw1")
    try:
        for sql in ("CREATE TASK t.theirs SCHEDULE = '1 HOURS' AS $$ SELECT 1 $$", "ALTER TASK t.mine RESUME",
                    "EXECUTE TASK t.mine", "DROP TASK t.mine"):
            with pytest.raises(Exception, match="(?i)permission"):
                run(reader, sql)
        assert ("t.mine",) in [r[:1] for r in rows(reader, "SHOW TASKS")]
        rows(reader, "SELECT count(*) FROM system.runs")
        objects = reader.adbc_get_objects(depth="tables", db_schema_filter="system").read_all().to_pylist()
        tables = {t["table_name"] for c in objects for s in c["catalog_db_schemas"] for t in s["db_schema_tables"]}
        assert {"queries", "tasks", "runs"} <= tables
    finally:
        reader.close()


def test_task_statement_errors_are_clear(served):
    _, conn = served
    for sql, why in [
        ("CREATE TASK t.x SCHEDULE = 'USING CRON 0 3 * * * Mars/Base' AS $$ SELECT 1 $$", "unknown time zone"),
        ("CREATE TASK t.x AS $$ SELECT 1 $$", "needs SCHEDULE"),
        ("CREATE TASK t.x AFTER t.nothing AS $$ SELECT 1 $$", "not found"),
        ("CREATE TASK t.x SCHEDULE = '1 HOURS' AS $$ SELECT '${run_date}' $$", "declare it with PARAMS"),
        ("CREATE TASK t.x SCHEDULE = '1 HOURS' PARAMS (d = scheduled_time) AS $$ SELECT '${d}', '${e}' $$",
         "uses ${e}: declare it with PARAMS"),
        ("CREATE TASK t.x SCHEDULE = '1 HOURS' PARAMS (d = no_such_fn(scheduled_time)) AS $$ SELECT 1 $$",
         "no_such_fn"),
        ("CREATE TASK nowhere.x SCHEDULE = '1 HOURS' AS $$ SELECT 1 $$", "not found"),
        ("EXECUTE TASK t.nothing", "not found"),
        ("EXECUTE TASK t.tick WITH (run_date = '2026-10-01')", "has no parameter 'run_date'"),
        ("SHOW TASKS please", "end of statement"),
    ]:
        with pytest.raises(Exception, match=re.escape(why)):
            run(conn, sql)


def test_sigkill_during_a_run_then_restart_retries_it(tmp_path):
    wh = str(tmp_path / "wh")
    server = Server(wh, log_path=str(tmp_path / "server.log")).start()
    conn = adbc_connect(server.uri)
    run(conn, "CREATE SCHEMA k")
    run(conn, "CREATE TABLE k.out (slot VARCHAR, n BIGINT) PARTITIONED BY (slot)")
    # Statement 1 commits the slot's partition; statement 2 is slow: the kill lands there.
    run(conn, f"""CREATE TASK k.job SCHEDULE = '1 HOURS' CATCHUP = LATEST RETRIES = 1 RETRY_DELAY = '1s'
                  AS $$ INSERT OVERWRITE k.out SELECT '${{scheduled_time}}', 1; {SLOW.replace('300000000', '90000000')} $$""")
    # Scheduled runs are retried (manual ones are not): a one-second schedule starts one at once,
    # then the schedule turns hourly so that only the retry follows the kill.
    run(conn, "ALTER TASK k.job SET SCHEDULE = '1 SECONDS'")
    run(conn, "ALTER TASK k.job RESUME")
    first = wait_for("the first run in its slow statement",
                     lambda: (r := runs_of(conn, "k.job")) and r[0]["state"] == "running" and r[0]["statements_done"] == 1
                     and r[0], every=0.2)
    run(conn, "ALTER TASK k.job SET SCHEDULE = '1 HOURS'")
    conn.close()
    server.kill()

    server = Server(wh, log_path=str(tmp_path / "server.log")).start()
    conn = adbc_connect(server.uri)
    try:
        runs = wait_for("the retry to succeed", lambda: (r := [x for x in runs_of(conn, "k.job")
                                                              if x["scheduled_time"] == first["scheduled_time"]])
                        and len(r) == 2 and r[1]["state"] == "succeeded" and r, timeout=180)
        assert runs[0]["run_id"] == first["run_id"] and runs[0]["state"] == "failed"
        assert "server stopped during run" in runs[0]["error_message"]
        assert runs[1]["attempt"] == 2 and runs[1]["node"] != runs[0]["node"]
        out = rows(conn, "SELECT slot, count(*) FROM k.out GROUP BY slot")
        assert out and all(n == 1 for _, n in out), out
        assert [r for r in runs_of(conn, "k.job") if r["state"] == "running"] == []
    finally:
        conn.close()
        server.stop()


def test_two_servers_run_each_slot_once(tmp_path):
    wh = str(tmp_path / "wh")
    a = Server(wh, log_path=str(tmp_path / "a.log")).start()
    b = Server(wh, log_path=str(tmp_path / "b.log")).start()
    conn = adbc_connect(a.uri)
    try:
        run(conn, "CREATE SCHEMA two")
        run(conn, "CREATE TABLE two.log (stamp VARCHAR)")
        # A plain INSERT: a slot run twice would show as a duplicate row.
        run(conn, "CREATE TASK two.tick SCHEDULE = '1 SECONDS' AS $$ INSERT INTO two.log VALUES ('${scheduled_time}') $$")
        run(conn, "ALTER TASK two.tick RESUME")
        wait_for("ten slots", lambda: len([r for r in runs_of(conn, "two.tick") if r["state"] == "succeeded"]) >= 10,
                 timeout=120)
        run(conn, "ALTER TASK two.tick SUSPEND")
        time.sleep(3)
        runs = runs_of(conn, "two.tick")
        per_slot = Counter((r["scheduled_time"], r["attempt"]) for r in runs)
        assert max(per_slot.values()) == 1, per_slot
        stamps = Counter(r[0] for r in rows(conn, "SELECT stamp FROM two.log"))
        assert max(stamps.values()) == 1 and len(stamps) == len([r for r in runs if r["state"] == "succeeded"])
        # Which server wins a slot depends on their tick phases (often the one that saw the DDL
        # first, every time); the claim race itself is unit-tested in schedule/journal.rs.
        assert all(open(tmp_path / f).read().count("scheduler started") == 1 for f in ("a.log", "b.log"))
    finally:
        conn.close()
        a.stop()
        b.stop()


def test_pipeline_tasks_backfill_equals_manual_runs(tmp_path):
    """sql/tasks.sql's pipeline A: a backfill of 7 days gives 7 runs with 7 distinct run_dates, and
    the same output as 7 manual runs of the script; the CLI's task commands embedded and remote."""
    data, wh = generate_and_load(tmp_path, seed=12, scale="0.0005")
    a_sql = ROOT / "sql" / "pipelines" / "a_daily_play_counts.sql"
    days = [f"2026-10-{d:02d}" for d in range(1, 8)]
    for day in days:
        run_cli("sql", "--warehouse", str(wh), "-f", str(a_sql), "--param", f"run_date={day}")
    run_cli("sql", "--warehouse", str(wh), "-e",
            "CREATE TABLE music.manual AS SELECT * FROM music.daily_play_counts; DROP TABLE music.daily_play_counts")
    run_cli("sql", "--warehouse", str(wh), "-f", str(ROOT / "sql" / "tasks.sql"))
    listed = run_cli("task", "list", "--warehouse", str(wh), "--format", "csv").stdout
    assert "music.daily_play_counts,suspended,USING CRON 0 3 * * * Europe/Stockholm" in listed
    assert "music.recommendations,suspended,,music.daily_play_counts" in listed

    # 03:00 Stockholm on Oct 2..8 -> run_date Oct 1..7 (the day before, in Stockholm).
    out = run_cli("task", "backfill", "music.daily_play_counts", "--from", "2026-10-02", "--to", "2026-10-08",
                  "--warehouse", str(wh), "--format", "csv").stdout
    lines = out.strip().splitlines()[1:]
    assert len(lines) == 7 and all(",backfill,1,succeeded," in l for l in lines), out
    assert sorted(re.search(r"run_date=(\d{4}-\d{2}-\d{2})", l).group(1) for l in lines) == days
    assert all("T01:00:00Z" in l.split(",")[2] for l in lines), "03:00 CEST is 01:00 UTC"
    diff = run_cli("sql", "--warehouse", str(wh), "--format", "csv", "-e",
                   "SELECT (SELECT count(*) FROM (SELECT * FROM music.manual EXCEPT ALL SELECT * FROM music.daily_play_counts)) "
                   "+ (SELECT count(*) FROM (SELECT * FROM music.daily_play_counts EXCEPT ALL SELECT * FROM music.manual)) "
                   "AS differ, (SELECT count(*) FROM music.manual) AS n").stdout
    differ, n = diff.strip().splitlines()[1].split(",")
    assert differ == "0" and int(n) > 0, diff

    # The same commands against a server (`--connect`), and the history.
    s = Server(str(wh), log_path=str(tmp_path / "server.log")).start()
    try:
        remote = ["--connect", s.uri, "--password", ADMIN_PASSWORD, "--format", "csv"]
        r = run_cli("task", "run", "music.daily_play_counts", "--param", "run_date=2026-10-04", *remote).stdout
        assert ',manual,1,succeeded,"run_date=2026-10-04, ' in r, r
        hist = run_cli("task", "history", "music.daily_play_counts", "--limit", "3", *remote).stdout
        assert len(hist.strip().splitlines()) == 4 and ",manual," in hist.splitlines()[1], hist
        bad = run_cli("task", "run", "music.daily_play_counts", "--param", "month=2026-10", *remote, check=False)
        assert bad.returncode == 1 and "has no parameter 'month'" in bad.stderr, bad.stderr
    finally:
        s.stop()


def test_catchup_after_downtime_and_nothing_while_suspended(tmp_path):
    """Slots missed while no server ran follow CATCHUP (ALL with a cap, LATEST, NONE); slots that
    passed while a task was suspended never run."""
    wh = str(tmp_path / "wh")
    server = Server(wh, log_path=str(tmp_path / "server.log")).start()
    conn = adbc_connect(server.uri)
    for name, catchup in (("c.all", "ALL MAX_CATCHUP_RUNS = 2"), ("c.latest", "LATEST"), ("c.none", "NONE")):
        if name == "c.all":
            run(conn, "CREATE SCHEMA c")
        run(conn, f"CREATE TASK {name} SCHEDULE = '2 SECONDS' CATCHUP = {catchup} AS $$ SELECT 1 $$")
        run(conn, f"ALTER TASK {name} RESUME")
    run(conn, "CREATE TASK c.paused SCHEDULE = '1 SECONDS' AS $$ SELECT 1 $$")
    run(conn, "ALTER TASK c.paused RESUME")
    wait_for("a first run of each", lambda: all(
        any(r["state"] == "succeeded" for r in runs_of(conn, t)) for t in ("c.all", "c.latest", "c.none", "c.paused")))
    run(conn, "ALTER TASK c.paused SUSPEND")
    conn.close()
    server.stop()
    time.sleep(9)  # ~4 slots of each 2-second task pass with no server
    server = Server(wh, log_path=str(tmp_path / "server.log")).start()
    conn = adbc_connect(server.uri)
    try:
        time.sleep(5)
        run(conn, "ALTER TASK c.paused RESUME")
        for t in ("c.all", "c.latest", "c.none"):
            run(conn, f"ALTER TASK {t} SUSPEND")
        time.sleep(2)
        caught = {t: [r["scheduled_time"] for r in runs_of(conn, t) if r["trigger"] == "catchup"]
                  for t in ("c.all", "c.latest", "c.none", "c.paused")}
        assert len(caught["c.all"]) == 2 and len(caught["c.latest"]) == 1 and caught["c.none"] == [], caught
        # ALL keeps the newest MAX_CATCHUP_RUNS missed slots, run oldest first, two seconds apart.
        assert (caught["c.all"][1] - caught["c.all"][0]).total_seconds() == 2
        # Suspended for ~15 s: on RESUME no slot of that time runs, catch-up or not.
        assert caught["c.paused"] == []
        paused = runs_of(conn, "c.paused")
        resumed_at = rows(conn, "SELECT updated_at FROM system.tasks WHERE name = 'c.paused'")[0][0]
        gap = [r for r in paused if r["trigger"] != "catchup"]
        assert all(r["scheduled_time"] > resumed_at or r["started_at"] < resumed_at for r in gap)
    finally:
        conn.close()
        server.stop()


def test_history_older_than_the_retention_is_rolled_into_a_table(tmp_path):
    server = Server(str(tmp_path / "wh"), extra_args=["--run-history-retention", "3s"],
                    log_path=str(tmp_path / "server.log")).start()
    conn = adbc_connect(server.uri)
    try:
        run(conn, "CREATE SCHEMA h")
        run(conn, "CREATE TASK h.tick SCHEDULE = '1 SECONDS' AS $$ SELECT 1 $$")
        run(conn, "ALTER TASK h.tick RESUME")
        wait_for("rolled-up runs", lambda: rows(conn, "SELECT count(*) FROM system.run_history")[0][0] >= 3)
        run(conn, "ALTER TASK h.tick SUSPEND")
        old = rows(conn, "SELECT run_id, task, state, completed_at FROM system.run_history")
        recent = {r[0] for r in rows(conn, "SELECT run_id FROM system.runs")}
        assert all(r[1] == "h.tick" and r[2] == "succeeded" for r in old)
        assert not recent & {r[0] for r in old}, "a run is in the journal or in the history, not both"
    finally:
        conn.close()
        server.stop()
