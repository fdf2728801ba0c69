"""Raw Flight (pyarrow.flight) against the server: handshake, Flight SQL commands, GetSchema,
CancelFlightInfo, and large streamed results with flat server memory."""

import threading
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight
import pytest

import flightsql_proto as proto
from conftest import ADMIN_PASSWORD


@pytest.fixture()
def client(server):
    c = flight.FlightClient(server.uri)
    header = c.authenticate_basic_token("admin", ADMIN_PASSWORD)
    yield c, flight.FlightCallOptions(headers=[header]), header
    c.close()


def _read(c, options, info):
    tables = [c.do_get(ep.ticket, options).read_all() for ep in info.endpoints]
    return pa.concat_tables(tables) if tables else None


def test_basic_handshake_returns_bearer(client):
    _, _, header = client
    assert header[0] == b"authorization"
    assert header[1].startswith(b"Bearer ")
    assert len(header[1]) > len("Bearer ") + 32


def test_calls_without_or_with_bad_token_are_unauthenticated(server):
    c = flight.FlightClient(server.uri)
    with pytest.raises(flight.FlightUnauthenticatedError):
        c.get_flight_info(flight.FlightDescriptor.for_command(proto.statement_query("SELECT 1")))
    bad = flight.FlightCallOptions(headers=[(b"authorization", b"Bearer not-a-token")])
    with pytest.raises(flight.FlightUnauthenticatedError):
        c.get_flight_info(flight.FlightDescriptor.for_command(proto.statement_query("SELECT 1")), bad)
    with pytest.raises(flight.FlightUnauthenticatedError):
        c.authenticate_basic_token("admin", "wrong")


def test_get_sql_info(client):
    c, options, _ = client
    info = c.get_flight_info(flight.FlightDescriptor.for_command(proto.get_sql_info()), options)
    table = _read(c, options, info)
    assert table.schema.names == ["info_name", "value"]
    values = {row["info_name"]: row["value"] for row in table.to_pylist()}
    assert values[0] == "StreamPulse Warehouse"  # FLIGHT_SQL_SERVER_NAME
    assert values[3] is False  # FLIGHT_SQL_SERVER_READ_ONLY
    assert values[504] == '"'  # SQL_IDENTIFIER_QUOTE_CHAR
    assert "PARTITIONED" in values[508]  # SQL_KEYWORDS
    assert values[563] is False  # SQL_TRANSACTIONS_SUPPORTED
    only = _read(c, options, c.get_flight_info(flight.FlightDescriptor.for_command(proto.get_sql_info(0, 1)), options))
    assert sorted(only.column("info_name").to_pylist()) == [0, 1]


def test_get_xdbc_type_info(client):
    c, options, _ = client
    info = c.get_flight_info(flight.FlightDescriptor.for_command(proto.get_xdbc_type_info()), options)
    table = _read(c, options, info)
    names = set(table.column("type_name").to_pylist())
    assert {"BIGINT", "VARCHAR", "DOUBLE", "DATE", "TIMESTAMP", "BOOLEAN"} <= names
    assert info.schema == table.schema


def test_get_primary_keys_is_valid_and_empty(client):
    c, options, _ = client
    info = c.get_flight_info(flight.FlightDescriptor.for_command(proto.get_primary_keys("anything", "public")), options)
    table = _read(c, options, info)
    assert table.num_rows == 0
    assert table.schema.names == ["catalog_name", "db_schema_name", "table_name", "column_name", "key_name", "key_sequence"]


def test_get_tables_with_schema_metadata(client):
    c, options, _ = client
    q = c.get_flight_info(flight.FlightDescriptor.for_command(proto.statement_query(
        "CREATE SCHEMA IF NOT EXISTS raw")), options)
    _read(c, options, q)
    q = c.get_flight_info(flight.FlightDescriptor.for_command(proto.statement_query(
        "CREATE TABLE IF NOT EXISTS raw.events (id BIGINT, name VARCHAR, amount DECIMAL(10,2))")), options)
    _read(c, options, q)
    info = c.get_flight_info(flight.FlightDescriptor.for_command(
        proto.get_tables(db_schema_filter="raw", table_filter="ev%", include_schema=True)), options)
    table = _read(c, options, info)
    assert table.column("table_name").to_pylist() == ["events"]
    assert table.column("table_type").to_pylist() == ["TABLE"]
    schema = pa.ipc.read_schema(pa.py_buffer(table.column("table_schema")[0].as_py()))
    assert schema.names == ["id", "name", "amount"]
    md = schema.field("amount").metadata
    assert md[b"ARROW:FLIGHT:SQL:TABLE_NAME"] == b"events"
    assert md[b"ARROW:FLIGHT:SQL:DB_SCHEMA_NAME"] == b"raw"
    assert md[b"ARROW:FLIGHT:SQL:CATALOG_NAME"] == b"streampulse"
    assert md[b"ARROW:FLIGHT:SQL:TYPE_NAME"] == b"DECIMAL(10,2)"
    assert md[b"ARROW:FLIGHT:SQL:PRECISION"] == b"10"


def test_get_schema_without_running(client):
    c, options, _ = client
    desc = flight.FlightDescriptor.for_command(proto.statement_query("SELECT 1 AS a, 'x' AS b, arrow_cast('v', 'Utf8View') AS c"))
    schema = c.get_schema(desc, options).schema
    assert schema.names == ["a", "b", "c"]
    assert schema.field("c").type == pa.string()
    info = c.get_flight_info(desc, options)
    assert info.schema == schema
    assert _read(c, options, info).schema == schema
    # GetSchema of DDL must not execute it.
    ddl = flight.FlightDescriptor.for_command(proto.statement_query("CREATE SCHEMA never_created"))
    c.get_schema(ddl, options)
    tables = _read(c, options, c.get_flight_info(flight.FlightDescriptor.for_command(
        proto.statement_query("SELECT count(*) AS n FROM information_schema.schemata WHERE schema_name = 'never_created'")), options))
    assert tables.column("n").to_pylist() == [0]


def test_flight_info_schema_equals_stream_schema_nullability(client):
    c, options, _ = client
    desc = flight.FlightDescriptor.for_command(proto.statement_query(
        "SELECT CAST(1 AS BIGINT) AS not_null, CAST(NULL AS BIGINT) AS maybe, now() AS ts"))
    info = c.get_flight_info(desc, options)
    stream = _read(c, options, info)
    assert info.schema == stream.schema
    assert [f.nullable for f in info.schema] == [f.nullable for f in stream.schema]


def test_cancel_flight_info_stops_a_running_query(server, client):
    c, options, _ = client
    desc = flight.FlightDescriptor.for_command(proto.statement_query(
        "SELECT value FROM generate_series(1, 2000000000) AS t(value)"))
    info = c.get_flight_info(desc, options)
    reader = c.do_get(info.endpoints[0].ticket, options)
    first = reader.read_chunk()
    assert first.data.num_rows > 0
    result = list(c.do_action(flight.Action("CancelFlightInfo", proto.cancel_flight_info_request(info.serialize())), options))
    assert proto.parse_cancel_status(result[0].body.to_pybytes()) == 1  # CANCELLED
    with pytest.raises(flight.FlightCancelledError):
        while True:
            reader.read_chunk()
    # Cancelling again: nothing left to cancel.
    again = list(c.do_action(flight.Action("CancelFlightInfo", proto.cancel_flight_info_request(info.serialize())), options))
    assert proto.parse_cancel_status(again[0].body.to_pybytes()) == 3  # NOT_CANCELLABLE


def test_fifty_million_rows_stream_with_flat_server_memory(server, client):
    c, options, _ = client
    desc = flight.FlightDescriptor.for_command(proto.statement_query(
        "SELECT value FROM generate_series(1, 50000000) AS t(value)"))
    info = c.get_flight_info(desc, options)
    reader = c.do_get(info.endpoints[0].ticket, options)
    rows = 0
    total = 0
    peak_rss = 0
    baseline = server.rss_bytes()
    while True:
        try:
            chunk = reader.read_chunk()
        except StopIteration:
            break
        rows += chunk.data.num_rows
        total += pc.sum(chunk.data.column(0)).as_py()
        if rows % (2_000_000) < chunk.data.num_rows:
            peak_rss = max(peak_rss, server.rss_bytes())
    print(f"50M rows: server RSS baseline {baseline/2**20:.0f} MiB, peak {peak_rss/2**20:.0f} MiB")
    assert rows == 50_000_000
    assert total == 50_000_000 * 50_000_001 // 2
    # 50 M int64 values are 400 MB; a server that buffered the result would grow by that much.
    assert peak_rss - baseline < 200 * 1024 * 1024, (baseline, peak_rss)
