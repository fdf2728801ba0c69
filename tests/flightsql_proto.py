"""A few Flight SQL protobuf messages encoded by hand, for raw pyarrow.flight tests.

pyarrow speaks plain Flight; Flight SQL commands travel as `google.protobuf.Any` inside
descriptors and tickets. Encoding the handful we need keeps the tests free of generated code.
"""


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_bytes(number: int, value: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(value)) + value


def _field_varint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def any_message(type_name: str, value: bytes) -> bytes:
    return _field_bytes(1, f"type.googleapis.com/arrow.flight.protocol.sql.{type_name}".encode()) + _field_bytes(2, value)


def get_sql_info(*info_ids: int) -> bytes:
    packed = b"".join(_varint(i) for i in info_ids)
    return any_message("CommandGetSqlInfo", _field_bytes(1, packed) if info_ids else b"")


def get_xdbc_type_info() -> bytes:
    return any_message("CommandGetXdbcTypeInfo", b"")


def get_primary_keys(table: str, db_schema: str = None) -> bytes:
    msg = b""
    if db_schema is not None:
        msg += _field_bytes(2, db_schema.encode())
    msg += _field_bytes(3, table.encode())
    return any_message("CommandGetPrimaryKeys", msg)


def get_tables(db_schema_filter=None, table_filter=None, include_schema=False) -> bytes:
    msg = b""
    if db_schema_filter is not None:
        msg += _field_bytes(2, db_schema_filter.encode())
    if table_filter is not None:
        msg += _field_bytes(3, table_filter.encode())
    if include_schema:
        msg += _field_varint(5, 1)
    return any_message("CommandGetTables", msg)


def statement_query(sql: str) -> bytes:
    return any_message("CommandStatementQuery", _field_bytes(1, sql.encode()))


def cancel_flight_info_request(serialized_flight_info: bytes) -> bytes:
    return _field_bytes(1, serialized_flight_info)


def parse_cancel_status(body: bytes) -> int:
    """CancelFlightInfoResult{status = 1}: returns the enum value (1 = CANCELLED)."""
    if not body:
        return 0
    assert body[0] == 0x08, body
    return body[1]
