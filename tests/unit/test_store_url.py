"""Store URLs are read in one place (cloud_sync/aggregator/store_url.py): postgres:// and
postgresql:// map to psycopg 3, SQLite URLs pass, everything else is refused in one line that
names a good URL and never the password."""

from __future__ import annotations

import pytest

from s4edge.cloud_sync.aggregator.store import make_engine
from s4edge.cloud_sync.aggregator.store_url import (
    POSTGRES_EXAMPLE,
    SQLITE_EXAMPLE,
    StoreUrlError,
    check_store_url,
    shown,
    store_problem,
    store_url,
)


@pytest.mark.parametrize(
    ("raw", "opened_as"),
    [
        ("postgres://u:pw@db.example:5432/s4edge", "postgresql+psycopg://u:pw@db.example:5432/s4edge"),
        ("postgresql://u@db.example/s4edge", "postgresql+psycopg://u@db.example/s4edge"),
        ("postgresql+psycopg://u@db.example/s4edge", "postgresql+psycopg://u@db.example/s4edge"),
        ("postgresql:///s4edge?host=/run/postgresql", "postgresql+psycopg:///s4edge?host=%2Frun%2Fpostgresql"),
        ("sqlite:///relative.db", "sqlite:///relative.db"),
        ("sqlite:////var/lib/s4edge/aggregator.db", "sqlite:////var/lib/s4edge/aggregator.db"),
    ],
)
def test_postgres_forms_map_to_psycopg_and_sqlite_passes(raw: str, opened_as: str) -> None:
    assert store_url(raw).render_as_string(hide_password=False) == opened_as


def test_make_engine_opens_what_store_url_maps() -> None:
    engine = make_engine("postgres://u:pw@db.example:5432/s4edge")  # no connection is made without a schema
    assert engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"
    assert engine.url.drivername == "postgresql+psycopg"


@pytest.mark.parametrize(
    ("raw", "says", "example"),
    [
        ("mysql://u:hunter2@db/s4edge", "mysql is not a store s4edge uses", SQLITE_EXAMPLE),
        ("postgresql+psycopg2://u:hunter2@db/s4edge", "through psycopg 3", POSTGRES_EXAMPLE),
        ("postgresql://u:hunter2@db:port/s4edge", "is not a valid database URL", POSTGRES_EXAMPLE),
        ("postgresql://u:hun@ter2@db/s4edge", "more than one '@'", POSTGRES_EXAMPLE),
        ("s4edge-aggregator.db", "is not a database URL", SQLITE_EXAMPLE),
        ("sqlite://", "in-memory", SQLITE_EXAMPLE),
        ("sqlite:///:memory:", "in-memory", SQLITE_EXAMPLE),
    ],
)
def test_what_is_refused_says_why_in_one_line_with_an_example(raw: str, says: str, example: str) -> None:
    with pytest.raises(StoreUrlError) as refused:
        check_store_url(raw)
    message = str(refused.value)
    assert says in message and example in message.split("e.g. ", 1)[1]
    assert "\n" not in message and "hunter2" not in message and "ter2" not in message


def test_a_schema_is_only_for_postgresql() -> None:
    with pytest.raises(StoreUrlError, match="--db-schema 'x' is for PostgreSQL"):
        check_store_url("sqlite:///a.db", "x")
    assert check_store_url("postgres://u@h/db", "x").drivername == "postgresql+psycopg"


def test_shown_hides_user_password_and_a_password_parameter() -> None:
    assert shown("postgresql://u:pw@h/db") == "postgresql://***@h/db"
    assert "secret" not in shown("postgresql://h/db?password=secret")


def test_a_missing_psycopg_names_the_extra() -> None:
    missing = ModuleNotFoundError("No module named 'psycopg'", name="psycopg")
    message = str(store_problem("postgres://u:pw@db.example/s4edge", missing))
    assert "pip install 's4edge[postgres]'" in message and "pw" not in message
