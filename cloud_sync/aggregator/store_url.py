"""Store URLs, read in one place: what ``--db`` takes, how it maps onto SQLAlchemy, and what
an operator is told, in one line, when a store cannot be used.

Taken: ``sqlite:///relative/file.db`` and ``sqlite:////absolute/file.db``; for PostgreSQL
``postgres://`` and ``postgresql://`` (the forms hosting providers and libpq hand out,
PostgreSQL docs §34.1.1.2 "Connection URIs") and ``postgresql+psycopg://``, all mapped to
the installed driver, psycopg 3. Anything else (MySQL, another PostgreSQL driver, a
malformed URL) is refused with an example of a good one. The user and password in a URL
are never shown (``hide_userinfo``, then ``redaction.redact`` for ``password=`` in the
query).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from s4edge.cloud_sync.aggregator.redaction import redact
from s4edge.shown import shown_url

SQLITE_EXAMPLE = "sqlite:////var/lib/s4edge/aggregator.db"
# Less room than this beside an SQLite store, and a failed write is taken for a full disk: a
# commit needs its pages in the WAL, and even a reader the 32 KiB -shm (sqlite.org/walformat.html)
ROOM_BYTES = 1 << 20
POSTGRES_EXAMPLE = "postgresql://s4edge:PASSWORD@db.example:5432/s4edge"
EXAMPLES = f"{SQLITE_EXAMPLE} or {POSTGRES_EXAMPLE}"
PSYCOPG = "postgresql+psycopg"
_POSTGRES_NAMES = ("postgres", "postgresql", PSYCOPG)
_SQLITE_NAMES = ("sqlite", "sqlite+pysqlite")
# PostgreSQL's own words (libpq and server messages) → what to do about it.
_POSTGRES_HINTS = [
    (re.compile(r'role "[^"]*" does not exist'), "give a user that exists (createuser NAME)"),
    (re.compile(r'database "[^"]*" does not exist'), "give a database that exists (createdb NAME)"),
    (re.compile(r"password authentication failed|no password supplied"), "check the user and password"),
    (re.compile(r"no pg_hba\.conf entry"), "allow this host and user in the server's pg_hba.conf"),
    (re.compile(r"Connection refused"), "is PostgreSQL running on that host and port?"),
    (re.compile(r"failed to resolve host|Name or service not known"), "check the host name"),
    (re.compile(r"timeout expired|timed out"), "check the host, the port and the firewall"),
    (re.compile(r"permission denied"), "grant the user CREATE on the schema, or give another user"),
]


class StoreUrlError(ValueError):
    """A store that cannot be used; the message is one line, ends with an example, and shows
    no password."""


def shown(url: str) -> str:
    """``url`` as it may appear in a message or a log: no user, no password."""
    return str(redact(shown_url(url.strip())))


def store_url(raw: str) -> URL:
    """``raw`` as the SQLAlchemy URL the store opens; ``StoreUrlError`` when it is not one we take."""
    where = shown(raw)
    if "://" not in raw:
        raise StoreUrlError(f"{where!r} is not a database URL; give one, e.g. {EXAMPLES}")
    if raw.partition("://")[2].count("@") > 1:  # which "@" ends the password? Read wrongly, it would be shown
        raise StoreUrlError(
            f"{where!r} has more than one '@': write an '@' in the user or password as %40 (RFC 3986 §2.1), "
            f"e.g. {POSTGRES_EXAMPLE}"
        )
    try:
        url = make_url(raw.strip())
    except (ArgumentError, ValueError):  # a port that is no number is a ValueError
        raise StoreUrlError(f"{where!r} is not a valid database URL; e.g. {EXAMPLES}") from None
    name = url.drivername.lower()
    if name in _SQLITE_NAMES:
        return url
    if name in _POSTGRES_NAMES:
        return url.set(drivername=PSYCOPG)
    if name.startswith("postgresql+"):
        raise StoreUrlError(
            f"{where}: s4edge talks to PostgreSQL through psycopg 3; write postgresql://…, e.g. {POSTGRES_EXAMPLE}"
        )
    raise StoreUrlError(f"{where}: {url.get_backend_name()} is not a store s4edge uses; give SQLite or "
                        f"PostgreSQL, e.g. {EXAMPLES}")  # fmt: skip


def sqlite_path(url: URL) -> Path | None:
    """The file an SQLite URL names (relative to the working folder), or None for an in-memory one."""
    database = url.database or ""
    if database in ("", ":memory:") or url.query.get("mode") == "memory":
        return None
    return Path(database.removeprefix("file:")) if url.query.get("uri") else Path(database)


def read_only_files(path: Path) -> list[Path]:
    """Of an SQLite file and the -wal and -shm beside it, those that exist and this process
    cannot write. SQLite writes all three, and makes the -shm with the file's mode: one made
    while the file was read-only stays read-only once the file is not."""
    files = (path, path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}-shm"))
    return [file for file in files if file.is_file() and not os.access(file, os.W_OK)]


def full_disk(url: URL) -> str | None:
    """'the disk holding FILE is full (N KiB free)' when the filesystem of an SQLite store has
    less than ``ROOM_BYTES`` left for this process, else None (PostgreSQL's disk is its server's)."""
    path = sqlite_path(url) if url.get_backend_name() == "sqlite" else None
    if path is None:
        return None
    try:
        room = os.statvfs(path.absolute().parent)
    except OSError:
        return None
    # root may fill the blocks a file system keeps back for it (ext4: 5 %); anyone else may not
    free = (room.f_bfree if os.geteuid() == 0 else room.f_bavail) * room.f_frsize
    if free >= ROOM_BYTES:
        return None
    return f"the disk holding {path.absolute()} is full ({free // 1024} KiB free): make room on it"


def check_store_url(raw: str, schema: str | None = None) -> URL:
    """What ``--db`` and ``--db-schema`` name, checked before anything opens: a usable URL, an
    SQLite store in a file (an in-memory one would lose every alert, and a writer process would
    not see it), a schema only for PostgreSQL."""
    url = store_url(raw)
    if url.get_backend_name() == "sqlite":
        if sqlite_path(url) is None:
            raise StoreUrlError(f"{shown(raw)}: an in-memory SQLite store loses every alert; give a file, "
                                f"e.g. {SQLITE_EXAMPLE}")  # fmt: skip
        if schema:
            raise StoreUrlError(f"--db-schema {schema!r} is for PostgreSQL; give SQLite its own file instead, "
                                f"e.g. {SQLITE_EXAMPLE}")  # fmt: skip
    return url


def probe_store(engine: Engine, raw: str) -> str | None:
    """Connect once and read, so that an unreachable server, a wrong role or database, a
    missing folder or a file that is no database is found before the aggregator takes a
    single message; ``StoreUrlError`` names what is wrong.

    An SQLite file that is only read-only now is not refused: the aggregator comes up,
    reports 503 on /healthz and commits once the file is writable again, without a restart.
    The returned line says so, for the log. Nothing is written to find out: a refused write
    would leave SQLite holding the file read-only in this process."""
    url = store_url(raw)
    if url.get_backend_name() == "sqlite":
        if url.query.get("mode") == "ro":
            raise StoreUrlError(f"{shown(raw)}: the store is read-only by its URL (mode=ro), and the aggregator "
                                f"writes it: drop mode=ro, e.g. {SQLITE_EXAMPLE}")  # fmt: skip
        path = sqlite_path(url)
        blocked = read_only_files(path) if path is not None else []
        if blocked:
            return (
                f"--db {shown(raw)}: {', '.join(str(file.absolute()) for file in blocked)} read-only to this "
                "process; until it is writable (each of them), nothing is committed and /healthz answers 503"
            )
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT count(*) FROM sqlite_master" if conn.dialect.name == "sqlite" else "SELECT 1"))
    except SQLAlchemyError as exc:
        # a full disk is an outage, as a read-only file is: SQLite cannot even read a WAL store
        # whose -shm it cannot make (SQLITE_IOERR_SHMSIZE), and it comes back without a restart
        if (full := full_disk(url)) is not None:
            return (
                f"--db {shown(raw)}: {full}; until there is room nothing is stored, /healthz answers 503, "
                "and alerts wait unacknowledged at the broker and on their nodes"
            )
        raise store_problem(raw, exc) from None
    return None


def store_problem(raw: str, exc: BaseException) -> StoreUrlError:
    """One line for an exception raised while opening or using the store at ``raw``."""
    where = shown(raw)
    if isinstance(exc, StoreUrlError):
        return exc
    try:
        url = store_url(raw)
    except StoreUrlError as bad:
        return bad
    if isinstance(exc, ImportError):
        return StoreUrlError(f"{where}: {exc}; PostgreSQL needs pip install 's4edge[postgres]'")
    if url.get_backend_name() == "sqlite":
        return StoreUrlError(f"{where}: {_sqlite_reason(url, exc)}")
    said = _driver_words(exc)
    hint = next((h for pattern, h in _POSTGRES_HINTS if pattern.search(said)), "check the URL")
    return StoreUrlError(f"{where}: {said}; {hint}, e.g. {POSTGRES_EXAMPLE}")


def _driver_words(exc: BaseException) -> str:
    """The driver's own message on one line, without SQLAlchemy's trailer and with no secret."""
    said = str(getattr(exc, "orig", None) or exc)
    said = said.strip().split("\n", 1)[0]  # libpq's second line is a hint of its own; SQLAlchemy's a link
    said = re.sub(r"^connection failed: ", "", said)
    return str(redact(" ".join(said.split())))


def _sqlite_reason(url: URL, exc: BaseException) -> str:
    path = sqlite_path(url)
    code = str(getattr(getattr(exc, "orig", None), "sqlite_errorname", ""))
    if path is None:
        return f"{_driver_words(exc)}; e.g. {SQLITE_EXAMPLE}"
    path = path.absolute()
    folder = path.parent
    todo = f"e.g. {SQLITE_EXAMPLE}"
    if not folder.is_dir():
        return f"the folder {folder} does not exist; create it or name a file in another, {todo}"
    if path.is_dir():
        return f"{path} is a folder; name a file in it, e.g. sqlite:///{path / 'aggregator.db'}"
    if code.startswith("SQLITE_READONLY"):
        return (f"{path} is read-only to this process; the aggregator writes the file and a -wal file beside it: "
                f"make both writable by its user, or name another file, {todo}")  # fmt: skip
    if (full := full_disk(url)) is not None:
        return f"{full} ({_driver_words(exc)})"
    if code == "SQLITE_NOTADB":
        return f"{path} is not an SQLite database; name the aggregator's database or a new file, {todo}"
    if code.startswith("SQLITE_CANTOPEN") or code.startswith("SQLITE_PERM"):
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):
            return f"cannot open {path}: this user may not read and write it; fix its permissions, {todo}"
        return f"cannot open {path}: this user may not create files in {folder}; fix its permissions, {todo}"
    return f"{_driver_words(exc)}; {todo}"
