"""A batch as one binary array per column: ``… SELECT … FROM unnest(%b::type[], …)`` (PostgreSQL).

One statement a batch, with one parameter a column whatever the batch's size: psycopg converts
it once and caches it, and sends each array in binary. An executemany of the same rows runs a
statement a row (heartbeats: 20 µs of PostgreSQL's CPU each), and a VALUES list of hundreds of
rows is parsed again for every batch, too long for psycopg's cache (``alert_rows.py``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from sqlalchemy import Table
from sqlalchemy.engine import Connection, Dialect


def takes_arrays(dialect: Dialect) -> bool:
    """PostgreSQL through psycopg (pyformat, ``%b`` for a binary parameter)."""
    return dialect.name == "postgresql" and dialect.paramstyle == "pyformat"


def unnest_select(dialect: Dialect, table: Table, columns: Sequence[str], json_columns: Collection[str] = ()) -> str:
    """``SELECT t.a, … FROM unnest(%b::TYPE[], …) AS t(a, …)``: names and types from the table's
    own definition, values only as parameters, in ``columns``' order. A JSON column travels as
    text and is cast back to its type."""
    types = {name: table.c[name].type.compile(dialect=dialect) for name in columns}
    quoted = {name: dialect.identifier_preparer.quote(name) for name in columns}
    arrays = ", ".join(f"%b::{'TEXT' if name in json_columns else types[name]}[]" for name in columns)
    picked = ", ".join(f"t.{quoted[n]}::{types[n]}" if n in json_columns else f"t.{quoted[n]}" for n in columns)
    names = ", ".join(quoted[name] for name in columns)
    return f"SELECT {picked} FROM unnest({arrays}) AS t({names})"  # noqa: S608


def table_name(conn: Connection, table: Table) -> str:
    """The table as this connection names it in SQL, its ``schema_translate_map`` applied."""
    preparer = conn.dialect.identifier_preparer
    translate = conn.get_execution_options().get("schema_translate_map") or {}
    schema = translate.get(table.schema, table.schema)
    name = preparer.quote(table.name)
    return f"{preparer.quote_schema(schema)}.{name}" if schema else name
