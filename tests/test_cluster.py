"""Scale-out on Ballista: one `streampulse scheduler` and two `streampulse executor` processes on
loopback, started here. The same generated data is loaded into two warehouses, one by a single
node and one through the cluster (`sql --cluster`: the landing CSV files are read by the
executors, the Delta commits written by the coordinator). Pipelines A, B, D and E then run on
each, and their outputs must be equal: exact for integers and cents, 1e-9 for scores and
statistics. Every executor must have run tasks, and a server started with `--cluster` must
answer over Flight SQL as one without."""

import math
import os
import re
import subprocess
import time
import urllib.request

import pytest

from conftest import BUCKET, ROOT, Server, adbc_connect, binary, free_port, run_cli, s3_env

PIPELINES = ROOT / "sql" / "pipelines"
RUNS = [  # (script, params)
    ("a_daily_play_counts.sql", ["run_date=2026-10-03"]),
    ("a_daily_play_counts.sql", ["run_date=2026-10-04"]),
    ("b_recommendations.sql", ["run_date=2026-10-20"]),
    ("d_royalties.sql", ["month=2026-10"]),
    ("e_ab_analytics.sql", []),
]
OUTPUTS = {  # table -> ORDER BY that makes its rows comparable
    "music.daily_play_counts": "play_date, song_id, artist_id",
    "music.recommendations": "run_date, user_id, rank",
    "music.royalties": "month, model, artist_id",
    "music.experiment_results": "1, 2, 3",
}


class Role:
    """A running `streampulse scheduler` or `streampulse executor`."""

    def __init__(self, args, log_path, log="info", env=None):
        self.log_path = log_path
        env = dict(os.environ, STREAMPULSE_LOG=log, **(env or {}))
        self.proc = subprocess.Popen([binary(), *args], stdout=subprocess.DEVNULL,
                                     stderr=open(log_path, "ab"), env=env)

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def wait_ready(port, roles, timeout=90):
    """Until the scheduler's /readyz says its executors are registered."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for r in roles:
            if r.proc.poll() is not None:
                raise RuntimeError(f"a cluster role exited with {r.proc.returncode}:\n{r.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError("the cluster did not become ready:\n" + "\n".join(r.log()[-2000:] for r in roles))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("cluster")
    port = free_port()
    roles = [Role(["scheduler", "--listen", f"127.0.0.1:{port}", "--min-ready-executors", "2", "--executor-timeout", "8s",
                   "--warehouse", str(base / "wh-cluster")], base / "scheduler.log")]
    for i in (1, 2):
        roles.append(Role(["executor", "--scheduler", f"127.0.0.1:{port}", "--listen", f"127.0.0.1:{free_port()}",
                           "--grpc-listen", f"127.0.0.1:{free_port()}", "--vcores", "1", "--memory-limit", "1GiB",
                           "--work-dir", str(base / f"executor-{i}"), "--heartbeat-interval", "2s",
                           "--warehouse", str(base / "wh-cluster")],
                          base / f"executor-{i}.log"))
    try:
        wait_ready(port, roles)
        yield base, f"df://127.0.0.1:{port}", roles
    finally:
        for r in reversed(roles):
            r.stop()


def tasks_run(role):
    return role.log().count("Execute task")


def scored(role):
    """Partitions of top_k_nearest the role scored (one INFO line each)."""
    return role.log().count("top_k_nearest partition done")


def sql(wh, *args, cluster=None, timeout=600):
    extra = ["--cluster", cluster] if cluster else []
    return run_cli("sql", "--warehouse", str(wh), *extra, *args, timeout=timeout)


@pytest.fixture(scope="module")
def both(cluster):
    """The same data and pipelines in a single-node warehouse and a cluster one."""
    base, url, roles = cluster
    data = base / "data"
    run_cli("datagen", "--scale", "0.001", "--seed", "21", "--out", str(data), "--quiet")
    single, clustered = base / "wh-single", base / "wh-cluster"
    load = ["-f", str(ROOT / "sql" / "load_generated.sql"), "--param", f"data={data}", "--param", "format=csv"]
    sql(single, *load)
    before = [tasks_run(r) for r in roles[1:]]
    sql(clustered, *load, cluster=url)
    work = {"load": [tasks_run(r) - b for r, b in zip(roles[1:], before)]}
    for script, params in RUNS:
        args = ["-f", str(PIPELINES / script), *[a for p in params for a in ("--param", p)]]
        sql(single, *args)
        before = [(tasks_run(r), scored(r)) for r in roles[1:]]
        sql(clustered, *args, cluster=url)
        ran = [tasks_run(r) - b for r, (b, _) in zip(roles[1:], before)]
        assert sum(ran) > 0, f"{script} ran no task on the cluster"
        work[script] = [scored(r) - b for r, (_, b) in zip(roles[1:], before)]
    return single, clustered, url, roles, work


def rows(wh, query, cluster=None):
    out = sql(wh, "--format", "csv", "-e", query, cluster=cluster).stdout
    return [line.split(",") for line in out.strip().splitlines()]


def same(a, b, tol=1e-9):
    """Rows equal, numbers that are not integers within `tol` (relative)."""
    assert len(a) == len(b), f"{len(a)} rows against {len(b)}"
    for ra, rb in zip(a, b):
        assert len(ra) == len(rb)
        for x, y in zip(ra, rb):
            if x == y:
                continue
            fx, fy = float(x), float(y)  # anything else unequal fails here
            assert math.isclose(fx, fy, rel_tol=tol, abs_tol=tol), f"{ra} != {rb}"


def test_loading_through_the_cluster_runs_tasks_on_every_executor(both):
    *_, work = both
    assert all(n > 0 for n in work["load"]), f"tasks per executor while loading: {work['load']}"


def test_recommendations_are_scored_on_every_executor(both):
    """Pipeline B's top_k_nearest runs on the executors, its users spread over both."""
    *_, work = both
    assert all(n > 0 for n in work["b_recommendations.sql"]), f"partitions scored per executor: {work}"


def test_top_k_nearest_scores_each_task_s_users_against_every_item(both):
    """Users in two files and items in three: several partitions on each side, so a task that
    saw only its slice of the items would return a different top k than the single node."""
    single, clustered, url, roles, _ = both
    vector = "make_array(sin(value * {a}), cos(value * {b}), {c})"
    setup = (
        f"CREATE OR REPLACE TABLE tk_users AS SELECT value AS id, {vector.format(a=1, b=1, c=1.0)} AS v, "
        "make_array(value % 97) AS seen FROM generate_series(1, 300); "
        f"INSERT INTO tk_users SELECT value, {vector.format(a=0.5, b=2, c=0.3)}, make_array(value % 89) "
        "FROM generate_series(301, 600); "
        f"CREATE OR REPLACE TABLE tk_items AS SELECT value AS id, {vector.format(a=0.7, b=1.3, c=0.2)} AS v "
        "FROM generate_series(1, 400); "
        f"INSERT INTO tk_items SELECT value, {vector.format(a=0.3, b=1, c=0.9)} FROM generate_series(401, 800); "
        f"INSERT INTO tk_items SELECT value, {vector.format(a=2, b=0.1, c=-0.4)} FROM generate_series(801, 1200)"
    )
    sql(single, "-e", setup)
    sql(clustered, "-e", setup)
    q = ("SELECT user_id, rank, item_id, score FROM top_k_nearest("
         "'SELECT id, v, seen FROM tk_users', 'SELECT id, v FROM tk_items', 5) ORDER BY user_id, rank")
    before = [scored(r) for r in roles[1:]]
    ours, theirs = rows(clustered, q, cluster=url), rows(single, q)
    assert len(theirs) == 1 + 600 * 5
    same(ours, theirs)
    ran = [scored(r) - b for r, b in zip(roles[1:], before)]
    assert all(n > 0 for n in ran), f"partitions scored per executor: {ran}"


@pytest.mark.parametrize("table", list(OUTPUTS))
def test_pipelines_on_the_cluster_write_what_a_single_node_writes(both, table):
    single, clustered, *_ = both
    query = f"SELECT * FROM {table} ORDER BY {OUTPUTS[table]}"
    same_output(table, rows(clustered, query), rows(single, query))


def same_output(table, ours, theirs):
    """A pipeline's output table equal on two warehouses (see the module's tolerances)."""
    assert len(ours) > 1
    if table == "music.recommendations":
        # A user's near-tied songs may swap ranks: taste vectors are f64 sums whose order
        # differs between plans. Compare each user's scores by rank, and the songs where the
        # scores are not tied.
        same([r[:3] + [r[4]] for r in ours], [r[:3] + [r[4]] for r in theirs])
        ties = {(r[1], r[4]) for r in theirs}
        differ = [(a, b) for a, b in zip(ours, theirs) if a[3] != b[3]]
        assert all((a[1], a[4]) in ties for a, _ in differ), differ[:5]
    else:
        same(ours, theirs)


def test_queries_over_flight_sql_answer_as_without_the_cluster(both):
    single, clustered, url, roles, _ = both
    queries = [
        "SELECT u.country, count(*) AS n, sum(ms_played) AS ms FROM music.plays p JOIN music.users u USING (user_id) "
        "GROUP BY u.country ORDER BY u.country",
        "SELECT play_date, count(DISTINCT user_id) AS listeners FROM music.plays "
        "WHERE play_date BETWEEN DATE '2026-10-05' AND DATE '2026-10-09' GROUP BY play_date ORDER BY play_date",
        "SELECT s.genre, round(avg(p.ms_played), 6) AS ms FROM music.plays p JOIN music.songs s USING (song_id) "
        "WHERE p.user_id NOT IN (SELECT user_id FROM music.users WHERE country = 'SE') GROUP BY s.genre ORDER BY 1",
        "SELECT count(*) FROM landing.plays",
    ]
    answers = {}
    before = [tasks_run(r) for r in roles[1:]]
    for wh, extra in ((single, []), (clustered, ["--cluster", url])):
        s = Server(str(wh), extra_args=["--no-scheduler", "--no-pipes", *extra],
                   log_path=str(wh.parent / f"{wh.name}-server.log")).start()
        try:
            conn = adbc_connect(s.uri)
            cur = conn.cursor()
            got = []
            for q in queries:
                cur.execute(q)
                got.append(cur.fetchall())
            cur.execute("SELECT query_text, cluster_jobs FROM system.queries WHERE state = 'succeeded'")
            jobs = dict(cur.fetchall())
            cur.close()
            conn.close()
            with urllib.request.urlopen(f"{s.http}/metrics", timeout=10) as resp:
                metrics = resp.read().decode()
            if extra:  # the scheduler's executors, asked at the scrape
                assert "streampulse_cluster_scheduler_up 1" in metrics, metrics
                assert "streampulse_cluster_executors 2" in metrics, metrics
            else:
                assert "streampulse_cluster_" not in metrics
            # each query was one job on the cluster, and none on the single node
            assert [jobs[q] for q in queries] == ([1] * len(queries) if extra else [0] * len(queries)), jobs
        finally:
            s.stop()
        answers[wh.name] = got
    for q, ours, theirs in zip(queries, answers[clustered.name], answers[single.name]):
        assert ours == theirs, q
    ran = [tasks_run(r) - b for r, b in zip(roles[1:], before)]
    assert sum(ran) >= len(queries), f"tasks per executor: {ran}"


def test_what_cannot_run_on_the_cluster_runs_on_the_server(both):
    single, clustered, url, *_ = both
    # system tables describe the server; a query reading no table has nothing to distribute
    out = sql(clustered, "-e", "SELECT 1 + 1 AS two; SELECT count(*) >= 0 AS ok FROM system.queries", cluster=url)
    assert "2" in out.stdout and "true" in out.stdout


def test_a_cluster_that_is_not_there_is_a_clear_error(both, tmp_path):
    single, *_ = both
    nobody = f"df://127.0.0.1:{free_port()}"
    r = run_cli("sql", "--warehouse", str(single), "--cluster", nobody, "-e", "SELECT count(*) FROM music.plays",
                check=False, timeout=120)
    assert r.returncode == 1, r.stderr
    assert f"the cluster's scheduler at {nobody.replace('df://', '')} cannot be reached" in r.stderr, r.stderr
    # over Flight SQL: UNAVAILABLE, and the server stays up
    s = Server(str(single), extra_args=["--no-scheduler", "--no-pipes", "--cluster", nobody],
               log_path=str(tmp_path / "server.log")).start()
    try:
        conn = adbc_connect(s.uri)
        cur = conn.cursor()
        with pytest.raises(Exception, match="cannot be reached.*Unavailable"):
            cur.execute("SELECT count(*) FROM music.plays")
            cur.fetchall()
        cur.execute("SELECT 41 + 1")  # reads no table: runs on the server
        assert cur.fetchall() == [(42,)]
        cur.close()
        conn.close()
        with urllib.request.urlopen(f"{s.http}/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        assert "streampulse_cluster_scheduler_up 0" in metrics and "streampulse_cluster_executors 0" in metrics
    finally:
        s.stop()


def test_an_executor_under_a_small_memory_limit_spills_instead_of_dying(both, tmp_path):
    """Its own cluster: one executor whose tasks share 24 MiB sorts and joins a ~50 MB table."""
    single, *_ = both
    port = free_port()
    roles = [Role(["scheduler", "--listen", f"127.0.0.1:{port}", "--warehouse", str(single)], tmp_path / "s.log"),
             Role(["executor", "--scheduler", f"127.0.0.1:{port}", "--listen", f"127.0.0.1:{free_port()}",
                   "--grpc-listen", f"127.0.0.1:{free_port()}", "--vcores", "1", "--memory-limit", "24MiB",
                   "--work-dir", str(tmp_path / "e"), "--warehouse", str(single)],
                  tmp_path / "e.log", log="info,ballista_executor::metrics=debug")]
    try:
        wait_ready(port, roles)
        sql(single, "-e", "CREATE OR REPLACE TABLE big AS SELECT value AS k, value * 7 % 1000003 AS v, "
                          "'row ' || CAST(value AS VARCHAR) AS s FROM generate_series(1, 2000000)")
        queries = [
            "SELECT k, v, s FROM (SELECT *, row_number() OVER (ORDER BY v DESC, k) AS r FROM big) WHERE r % 400000 = 1 "
            "ORDER BY r",
            "SELECT count(*), sum(a.v - b.v) FROM big a JOIN big b ON a.k = b.v",
        ]
        url = f"df://127.0.0.1:{port}"
        for q in queries:
            assert rows(single, q, cluster=url) == rows(single, q), q
        assert roles[1].proc.poll() is None, "the executor died"
        spills = [int(n) for n in re.findall(r"spill_count=(\d+)", roles[1].log())]
        assert sum(spills) > 0, "nothing spilled: the limit did not bind"
    finally:
        for r in reversed(roles):
            r.stop()


def test_a_warehouse_on_s3_on_the_cluster(both, s3, tmp_path):
    """Managed and Hive-partitioned external tables on S3 (moto): every role reaches the bucket
    with its own settings; answers equal a single node's. Then the generated data is loaded
    into that warehouse through the cluster and pipelines A, B, D and E run there: their
    outputs equal the single node's on local disk (the same data, from the same seed)."""
    endpoint, client = s3
    for month, body in ((1, b"id,name\n1,a\n2,b\n"), (2, b"id,name\n3,c\n")):
        client.put_object(Bucket=BUCKET, Key=f"cluster-landing/year=2026/month={month}/part.csv", Body=body)
    env = s3_env(endpoint)
    wh = f"s3://{BUCKET}/cluster-wh"
    port = free_port()
    roles = [Role(["scheduler", "--listen", f"127.0.0.1:{port}", "--min-ready-executors", "2", "--warehouse", wh],
                  tmp_path / "s.log", env=env)]
    for i in (1, 2):
        roles.append(Role(["executor", "--scheduler", f"127.0.0.1:{port}", "--listen", f"127.0.0.1:{free_port()}",
                           "--grpc-listen", f"127.0.0.1:{free_port()}", "--vcores", "1", "--memory-limit", "512MiB",
                           "--work-dir", str(tmp_path / f"e{i}"), "--warehouse", wh], tmp_path / f"e{i}.log", env=env))
    try:
        wait_ready(port, roles)
        setup = (
            "CREATE SCHEMA s; "
            "CREATE EXTERNAL TABLE s.raw (id INT, name VARCHAR) STORED AS CSV PARTITIONED BY (year INT, month INT) "
            f"LOCATION 's3://{BUCKET}/cluster-landing/' OPTIONS ('format.has_header' 'true'); "
            "CREATE TABLE s.wide PARTITIONED BY (month) AS SELECT r.id * 1000 + g.value AS k, r.name, r.month, "
            "CAST(g.value AS DOUBLE) / 7 AS x FROM s.raw r, generate_series(1, 5000) g"
        )
        # generate_series is a table function the cluster cannot run: the data is written by one node
        run_cli("sql", "--warehouse", wh, "-e", setup, env=env)
        queries = [
            "SELECT month, count(*) AS n, sum(k) AS k, round(sum(x), 6) AS x FROM s.wide GROUP BY month ORDER BY month",
            "SELECT r.year, r.month, r.name, count(*) AS n FROM s.raw r JOIN s.wide w ON w.name = r.name "
            "WHERE w.k % 3 = 0 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        ]
        for q in queries:
            cluster = run_cli("sql", "--warehouse", wh, "--cluster", f"df://127.0.0.1:{port}", "--format", "csv",
                              "-e", q, env=env).stdout
            single = run_cli("sql", "--warehouse", wh, "--format", "csv", "-e", q, env=env).stdout
            assert cluster == single and len(cluster.splitlines()) > 2, (q, cluster, single)
        assert all(tasks_run(r) > 0 for r in roles[1:]), "an executor ran nothing"

        local_single = both[0]
        on_s3 = ["--warehouse", wh, "--cluster", f"df://127.0.0.1:{port}"]
        data = local_single.parent / "data"  # what the `both` fixture generated
        run_cli("sql", *on_s3, "-f", str(ROOT / "sql" / "load_generated.sql"), "--param", f"data={data}",
                "--param", "format=csv", env=env, timeout=600)
        for script, params in RUNS:
            run_cli("sql", *on_s3, "-f", str(PIPELINES / script), *[a for p in params for a in ("--param", p)],
                    env=env, timeout=600)
        for table, order in OUTPUTS.items():
            query = f"SELECT * FROM {table} ORDER BY {order}"
            out = run_cli("sql", *on_s3, "--format", "csv", "-e", query, env=env).stdout
            same_output(table, [line.split(",") for line in out.strip().splitlines()], rows(local_single, query))
    finally:
        for r in reversed(roles):
            r.stop()


def assert_answers(server):
    """The next query over Flight SQL works."""
    conn = adbc_connect(server.uri)
    cur = conn.cursor()
    cur.execute("SELECT count(*) FROM music.plays")
    assert cur.fetchall()[0][0] > 0
    cur.close()
    conn.close()


HEAVY = ("SELECT count(*), sum(a.ms_played + b.ms_played) FROM music.plays a "
         "JOIN music.plays b ON a.song_id = b.song_id AND a.user_id <> b.user_id "
         "WHERE a.play_date <= DATE '2026-10-06'")


def test_a_cancelled_statement_cancels_its_job_on_the_cluster(both):
    """CancelFlightInfo on a statement the executors are computing: the server asks the
    scheduler to cancel the job, the client sees CANCELLED, and the next query works."""
    import pyarrow.flight as flight

    import flightsql_proto as proto
    from conftest import ADMIN_PASSWORD

    single, clustered, url, roles, _ = both
    s = Server(str(clustered), extra_args=["--no-scheduler", "--no-pipes", "--cluster", url],
               log_path=str(clustered.parent / "cancel-server.log")).start()
    c = flight.FlightClient(s.uri)
    try:
        options = flight.FlightCallOptions(headers=[c.authenticate_basic_token("admin", ADMIN_PASSWORD)])
        cancels_before = roles[0].log().count("Received cancellation request for job")
        before = sum(tasks_run(r) for r in roles[1:])
        info = c.get_flight_info(flight.FlightDescriptor.for_command(proto.statement_query(HEAVY)), options)
        import threading

        cancelled = {}

        def cancel_once_running():
            deadline = time.time() + 60
            while sum(tasks_run(r) for r in roles[1:]) == before and time.time() < deadline:
                time.sleep(0.05)
            action = flight.Action("CancelFlightInfo", proto.cancel_flight_info_request(info.serialize()))
            cancelled["status"] = proto.parse_cancel_status(list(c.do_action(action, options))[0].body.to_pybytes())

        t = threading.Thread(target=cancel_once_running)
        t.start()
        # chunk by chunk: pyarrow's read_all turns a cancelled stream into a KeyboardInterrupt
        reader = c.do_get(info.endpoints[0].ticket, options)
        with pytest.raises(flight.FlightCancelledError):
            while True:
                reader.read_chunk()
        t.join(60)
        assert cancelled.get("status") == 1, cancelled  # CANCELLED
        deadline = time.time() + 30
        while roles[0].log().count("Received cancellation request for job") == cancels_before:
            assert time.time() < deadline, "the scheduler was not asked to cancel the job"
            time.sleep(0.2)
        assert_answers(s)
    finally:
        c.close()
        s.stop()


def test_an_executor_killed_mid_query_fails_or_retries_and_the_next_query_works(both):
    """Last in this file: it leaves the cluster with one executor."""
    single, clustered, url, roles, _ = both
    heavy = HEAVY
    s = Server(str(clustered), extra_args=["--no-scheduler", "--no-pipes", "--cluster", url],
               log_path=str(clustered.parent / "kill-server.log")).start()
    try:
        import threading

        outcome = {}

        def run():
            conn = adbc_connect(s.uri)
            cur = conn.cursor()
            try:
                cur.execute(heavy)
                outcome["rows"] = cur.fetchall()
            except Exception as e:  # noqa: BLE001 (what the client sees is the point)
                outcome["error"] = str(e)
            finally:
                cur.close()
                conn.close()

        before = tasks_run(roles[2])
        t = threading.Thread(target=run)
        t.start()
        deadline = time.time() + 60
        while tasks_run(roles[2]) == before and time.time() < deadline and t.is_alive():
            time.sleep(0.05)
        assert t.is_alive(), f"the query ended before its executor could be killed: {outcome}"
        roles[2].proc.kill()
        roles[2].proc.wait(10)
        t.join(300)
        assert not t.is_alive(), "the query hung after its executor died"
        if "error" in outcome:
            assert "executor" in outcome["error"].lower() or "task" in outcome["error"].lower(), outcome["error"]
        else:
            expected = rows(single, heavy)[1:]
            assert [list(map(str, outcome["rows"][0]))] == expected
        assert s.proc.poll() is None, "the server died with the executor"
        assert_answers(s)
        print(f"killed mid-query: {outcome}")
    finally:
        s.stop()


@pytest.mark.parametrize("args, message", [
    (["sql", "--cluster", "s3://bucket", "-e", "SELECT 1"], "expected df://host:port"),
    (["sql", "--cluster", "df://", "-e", "SELECT 1"], "expected df://host:port"),
    (["executor", "--listen", "127.0.0.1:50061", "--grpc-listen", "127.0.0.2:50062"], "same host"),
    (["executor", "--listen", "127.0.0.1:7000", "--grpc-listen", "127.0.0.1:7000"], "two different"),
    (["executor", "--scheduler", "nohost"], "--scheduler 'nohost'"),
    (["scheduler", "--listen", "not-an-address"], "--listen 'not-an-address'"),
    (["scheduler", "--cluster", "df://x:1"], "is for serve and sql"),
])
def test_wrong_cluster_settings_are_usage_errors(tmp_path, args, message):
    r = run_cli(*args, "--warehouse", str(tmp_path / "wh"), check=False, timeout=60)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert message in r.stderr, r.stderr
