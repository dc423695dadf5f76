"""Reaching a PostgreSQL store: its URL shown without a password, a failed or lost
connection told apart from failing SQL and said in one sentence, and the schema migrated.
"""

from __future__ import annotations

import time
import zlib
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from agentguard.errors import StoreError
from agentguard.migrations_pg import KNOWN, MIGRATIONS

try:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict
    from psycopg_pool import PoolTimeout
except ImportError:  # pragma: no cover - exercised only without the extra
    psycopg = None  # type: ignore[assignment]
    PoolTimeout = None  # type: ignore[assignment,misc]

URL_SCHEMES = ("postgresql://", "postgres://")
NO_PSYCOPG = (
    "The store is a PostgreSQL server but psycopg is not installed; "
    "install agentguard[postgres] (pip install 'agentguard[postgres]')."
)
CONNECT_TIMEOUT_S = 10
MIGRATIONS_TABLE = "agentguard_migrations"
# SQLSTATEs that mean "this connection is gone" rather than "this SQL failed": class 08
# (connection exceptions), admin shutdown (pg_terminate_backend, a fast or smart restart),
# crash shutdown, and "the database system is starting up".
LOST_STATES = ("57P01", "57P02", "57P03")


def connect_options(url: str) -> dict[str, Any]:
    """psycopg.connect options for every store connection: autocommit, a bounded connect
    wait, and `application_name` "agentguard" (what an operator sees in pg_stat_activity)
    unless the URL names one."""
    options: dict[str, Any] = {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S}
    if "application_name" not in conninfo_to_dict(url):
        options["application_name"] = "agentguard"
    return options


def masked(url: str) -> str:
    """The URL as it may be shown or logged: user, host, port and database, never a password."""
    parts = urlsplit(url)
    user = unquote(parts.username) if parts.username else ""
    host = parts.hostname or "localhost"
    port = parts.port or 5432
    db = parts.path.lstrip("/") or user
    return f"{parts.scheme}://{user + '@' if user else ''}{host}:{port}/{db}"


def lost(exc: BaseException) -> bool:
    """Is this the connection going away (try again on another), not the SQL failing?"""
    if PoolTimeout is not None and isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in LOST_STATES


# -- migrations -----------------------------------------------------------------------------------


def migrate(conn: Any, where: str, lock_key: int) -> None:
    """Apply the missing migrations, one process at a time (a session advisory lock), and
    refuse a database that a newer agentguard has migrated further."""
    conn.execute("select pg_advisory_lock(%s)", [lock_key])
    try:
        conn.execute(
            f"create table if not exists {MIGRATIONS_TABLE} "
            "(name text primary key, applied_at double precision not null)"
        )
        applied = {row[0] for row in conn.execute(f"select name from {MIGRATIONS_TABLE}")}
        unknown = applied - set(KNOWN)
        if unknown:
            raise StoreError(
                f"The database {where} was written by a newer agentguard "
                f"(schema {sorted(unknown)[-1]}); upgrade agentguard to read it."
            )
        for name, statements in MIGRATIONS:
            if name in applied:
                continue
            with conn.transaction():
                conn.execute(statements)
                conn.execute(
                    f"insert into {MIGRATIONS_TABLE} (name, applied_at) values (%s, %s)",
                    [name, time.time()],
                )
    finally:
        conn.execute("select pg_advisory_unlock(%s)", [lock_key])


def lock_key(name: str) -> int:
    """A stable bigint advisory-lock key for `name` (per schema, so test schemas never wait
    for each other)."""
    return zlib.crc32(f"agentguard:{name}".encode())


# -- errors ---------------------------------------------------------------------------------------


def describe_connect_error(where: str, exc: Exception, url: str = "") -> str:
    """One sentence for a failed connection: the server did not answer, or it refused us.
    The password in `url`, if any, never reaches the sentence."""
    text = " ".join(str(exc).split())
    password = urlsplit(url).password if url else None
    if password:
        text = text.replace(password, "***").replace(quote(password, safe=""), "***")
    where_to = host_port(where)
    if "FATAL:" in text:
        reason = text.split("FATAL:", 1)[1].strip()
        if "does not exist" in reason and "database" in reason:
            return (
                f"The PostgreSQL server at {where_to} has no such database ({reason}); "
                "create it or fix the database name in the store URL."
            )
        return (
            f"The PostgreSQL server at {where_to} refused agentguard ({reason}); "
            "check the user and password in the store URL."
        )
    reason = text.removeprefix("connection failed: ")
    reason = reason.split(" Is the server running", 1)[0]
    return (
        f"agentguard cannot reach the PostgreSQL server at {where_to} ({reason}); "
        "check that the server is running and that the store URL is right."
    )


def host_port(where: str) -> str:
    parts = urlsplit(where)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
