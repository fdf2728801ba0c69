"""No built-in password: a fresh warehouse gets an admin whose password is generated and printed once."""

import re

from conftest import Server, adbc_connect


def test_generated_admin_password_is_printed_once_and_works(tmp_path):
    wh = str(tmp_path / "wh")
    s = Server(wh, env={"STREAMPULSE_ADMIN_PASSWORD": ""}, log_path=str(tmp_path / "log")).start()
    banner = "".join(s.banner)
    m = re.search(r"Created user 'admin' with generated password: (\S+)", banner)
    assert m, banner
    password = m.group(1)
    assert len(password) >= 20
    conn = adbc_connect(s.uri, password=password)
    cur = conn.cursor()
    cur.execute("SELECT 1")
    assert cur.fetchone() == (1,)
    conn.close()
    s.stop()
    # A second start of the same warehouse creates nobody and prints no password.
    s2 = Server(wh, env={"STREAMPULSE_ADMIN_PASSWORD": "ignored-now"}, log_path=str(tmp_path / "log")).start()
    assert "password" not in "".join(s2.banner)
    conn = adbc_connect(s2.uri, password=password)
    conn.cursor().execute("SELECT 1")
    conn.close()
    s2.stop()


def test_demo_generates_loads_and_runs_the_pipelines_once(tmp_path):
    wh = str(tmp_path / "wh")
    s = Server(wh, extra_args=["--demo"], log_path=str(tmp_path / "log")).start()
    banner = "".join(s.banner)
    assert "Demo data loaded into schema music" in banner
    for table in ("daily_play_counts", "recommendations", "royalties", "experiment_results"):
        assert f"Pipeline -> music.{table}" in banner  # ran, then its summary was printed
        assert f"music.{table}:\n+" in banner
    conn = adbc_connect(s.uri)
    cur = conn.cursor()
    cur.execute("SELECT count(*), count(DISTINCT play_date) FROM music.plays")
    assert cur.fetchone() == (100_000, 30)
    cur.execute("SELECT count(DISTINCT play_date), sum(plays) FROM music.daily_play_counts")
    assert cur.fetchone() == (30, 100_000)
    cur.execute("SELECT count(*) FROM music.recommendations")
    assert cur.fetchone()[0] > 10_000
    cur.execute("SELECT count(DISTINCT model) FROM music.royalties")
    assert cur.fetchone() == (2,)
    conn.close()
    s.stop()
    again = Server(wh, extra_args=["--demo"], log_path=str(tmp_path / "log")).start()
    banner = "".join(again.banner)
    assert "Generating" not in banner and "Pipeline ->" not in banner
    assert "music.royalties:" in banner  # summaries are shown on every start
    again.stop()
