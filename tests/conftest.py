"""End-to-end test harness: starts the real `streampulse` binary and talks to it as clients do.

The binary is taken from $STREAMPULSE_BIN, else from the cargo target folder
($CARGO_TARGET_DIR, ~/.cache/streampulse-target, or ./target). `.ci/run` builds it first.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ADMIN_PASSWORD = "admin-pass-123"
# The bucket the local S3 server (fixture `s3`) starts with.
BUCKET = "streampulse-test"


def binary() -> str:
    if os.environ.get("STREAMPULSE_BIN"):
        return os.environ["STREAMPULSE_BIN"]
    candidates = []
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.append(Path(os.environ["CARGO_TARGET_DIR"]))
    candidates += [Path.home() / ".cache" / "streampulse-target", ROOT / "target"]
    for base in candidates:
        for profile in ("debug", "release"):
            p = base / profile / "streampulse"
            if p.exists():
                return str(p)
    raise RuntimeError("streampulse binary not found: run `cargo build -p streampulse-server` or set STREAMPULSE_BIN")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running `streampulse serve` process."""

    def __init__(self, warehouse: str, extra_args=(), env=None, log_path=None):
        self.warehouse = warehouse
        self.extra_args = list(extra_args)
        self.env = dict(os.environ)
        self.env.update({"STREAMPULSE_ADMIN_PASSWORD": ADMIN_PASSWORD, "STREAMPULSE_LOG": "info"})
        self.env.update(env or {})
        self.log_path = log_path
        self.proc = None
        self.uri = None
        self.http = None

    def start(self, timeout=120):
        cmd = [binary(), "serve", "--warehouse", self.warehouse, "--listen", "127.0.0.1:0",
               "--http-listen", "127.0.0.1:0", *self.extra_args]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=self.env)
        deadline = time.time() + timeout
        self.banner = []
        while time.time() < deadline:
            line = self.proc.stdout.readline().decode()
            self.banner.append(line)
            if not line:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_path}")
                continue
            if "HTTP (metrics, health) on http://" in line:
                self.http = line.strip().split(" on ")[1]
            if "listening on grpc://" in line:
                self.uri = line.strip().split("listening on ")[1]
                return self
        raise RuntimeError("server did not start in time")

    def kill(self):
        """SIGKILL: no chance to flush or clean up, like a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0


def run_cli(*args, env=None, check=True, timeout=300):
    e = dict(os.environ)
    e.update(env or {})
    e.setdefault("STREAMPULSE_LOG", "warn")
    r = subprocess.run([binary(), *args], capture_output=True, text=True, env=e, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"streampulse {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r


def adbc_connect(uri, user="admin", password=ADMIN_PASSWORD):
    import adbc_driver_flightsql.dbapi as flight_sql
    from adbc_driver_manager import DatabaseOptions

    return flight_sql.connect(
        uri,
        db_kwargs={DatabaseOptions.USERNAME.value: user, DatabaseOptions.PASSWORD.value: password},
        autocommit=True,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    wh = tmp_path_factory.mktemp("warehouse")
    log = tmp_path_factory.mktemp("logs") / "server.log"
    s = Server(str(wh), log_path=str(log)).start()
    yield s
    s.stop()


@pytest.fixture()
def conn(server):
    c = adbc_connect(server.uri)
    yield c
    c.close()


def generate_and_load(base, seed, scale="0.001"):
    """Generate a dataset under `base/data` and load it into the warehouse `base/wh`."""
    data, wh = base / "data", base / "wh"
    run_cli("datagen", "--scale", scale, "--seed", str(seed), "--out", str(data), "--quiet")
    run_cli("sql", "--warehouse", str(wh), "-f", str(ROOT / "sql" / "load_generated.sql"),
            "--param", f"data={data}", "--param", "format=csv")
    return data, wh


def run_over_flight(wh, base, script, *params):
    """Run a SQL script file through a fresh server over Flight SQL (`streampulse sql --connect`)."""
    s = Server(str(wh), log_path=str(base / "server.log")).start()
    try:
        args = [a for p in params for a in ("--param", p)]
        run_cli("sql", "--connect", s.uri, "--user", "admin", "--password", ADMIN_PASSWORD, "-f", str(script), *args)
    finally:
        s.stop()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A local S3-compatible server (moto) with one bucket: yields its endpoint and a boto3 client."""
    import urllib.request

    import boto3

    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=2)
            break
        except Exception:  # noqa: BLE001
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError("moto server did not start")
            time.sleep(0.3)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    client.create_bucket(Bucket=BUCKET)
    yield endpoint, client
    proc.terminate()
    proc.wait(10)


def s3_env(endpoint):
    """What `serve` needs to reach the local S3 server."""
    return {
        "STREAMPULSE_S3_ENDPOINT": endpoint,
        "STREAMPULSE_S3_REGION": "us-east-1",
        "STREAMPULSE_S3_ACCESS_KEY_ID": "test",
        "STREAMPULSE_S3_SECRET_ACCESS_KEY": "test",
        "STREAMPULSE_S3_ALLOW_HTTP": "true",
    }
