"""Memory: a query that cannot fit fails alone with RESOURCE_EXHAUSTED, and the server stays up."""

import pytest
from adbc_driver_manager import Error

from conftest import Server, adbc_connect


def test_query_over_memory_cap_is_resource_exhausted_and_server_survives(tmp_path):
    s = Server(str(tmp_path / "wh"), extra_args=["--memory-limit", "32MiB"], log_path=str(tmp_path / "server.log")).start()
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
        cur2 = conn.cursor()
        cur2.execute("SELECT count(*) FROM generate_series(1, 1000) AS t(value)")
        assert cur2.fetchone() == (1000,)
        conn.close()
        assert s.proc.poll() is None
    finally:
        s.stop()
