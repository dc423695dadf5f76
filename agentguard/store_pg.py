"""The run log on a PostgreSQL server, shared by every machine of a team ("fleet mode").

Same methods and meaning as `agentguard.store.Store` (SQLite stays the embedded default and
keeps its own fast paths). What differs, and why:

- Writers. SQLite lets one writer in at a time (BEGIN IMMEDIATE), and the callers that
  read-modify-write through `write()` (the breaker, the retry budget) rely on it. So `write()`
  here takes a transaction-scoped advisory lock first: the same one-writer promise, across
  machines. The store's own methods lock only what they must: `begin_step` takes its run's row
  (`for no key update`) before numbering the step, so two processes continuing one run never
  write the same number; the rest are single-row inserts and updates.
- SQL. Callers send SQLite-style `?` placeholders; `translate` turns them into psycopg's `%s`
  (and escapes a literal `%`), outside quoted strings only.
- Faults. A connection the server drops (a restart, `pg_terminate_backend`, a network cut)
  is not a failed step: each store method runs its transaction again on a new connection,
  waiting up to `reconnect_within` (the default policy's step deadline) for the server to come
  back. When a connection drops while COMMIT was in flight nobody knows whether it landed, so
  the retry first looks for its own row (`_already`) instead of writing it twice.
- Messages. Short JSON goes in `messages.content` (text), long zlib-compressed JSON in
  `messages.content_z` (bytea); `conversation_rows` hands back one `content` (str or bytes) as
  SQLite's does, so `unpack` reads either.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

from agentguard.clock import Clock, SystemClock
from agentguard.errors import StoreError
from agentguard.home import home_dir
from agentguard.migrations_pg import KNOWN, MIGRATIONS
from agentguard.store import StoreReads, dumps, pack
from agentguard.store_pg_changes import Listener

try:
    import psycopg
    from psycopg.rows import dict_row
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError:  # pragma: no cover - exercised only without the extra
    psycopg = None  # type: ignore[assignment]
    PoolTimeout = None  # type: ignore[assignment,misc]

URL_SCHEMES = ("postgresql://", "postgres://")
CONNECT_TIMEOUT_S = 10
POOL_MAX = 8
MIGRATIONS_TABLE = "agentguard_migrations"
# How long a store call waits for a dropped server to come back before the step fails: the
# default policy's step deadline.
RECONNECT_WITHIN_S = 120.0
# Pauses between tries on a lost connection: the first retry at once (a killed backend leaves
# the server up), then backing off to one try a second while it restarts.
RECONNECT_PAUSES_S = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)
# SQLSTATEs that mean "this connection is gone" rather than "this SQL failed": class 08
# (connection exceptions), admin shutdown (pg_terminate_backend, a fast or smart restart),
# crash shutdown, and "the database system is starting up".
LOST_STATES = ("57P01", "57P02", "57P03")

T = TypeVar("T")
log = logging.getLogger("agentguard")


def is_postgres_url(value: str | None) -> bool:
    return bool(value) and str(value).startswith(URL_SCHEMES)


def masked(url: str) -> str:
    """The URL as it may be shown or logged: user, host, port and database, never a password."""
    parts = urlsplit(url)
    user = unquote(parts.username) if parts.username else ""
    host = parts.hostname or "localhost"
    port = parts.port or 5432
    db = parts.path.lstrip("/") or user
    return f"{parts.scheme}://{user + '@' if user else ''}{host}:{port}/{db}"


class PostgresStore(StoreReads):
    """A handle on the store in a PostgreSQL database; safe to share between threads.

    Holds a small connection pool; a thread inside `write()` reuses its transaction's
    connection for every read and nested write, as SQLite's one shared connection does."""

    def __init__(
        self,
        url: str,
        home: str | os.PathLike[str] | None = None,
        *,
        clock: Clock | None = None,
        reconnect_within: float = RECONNECT_WITHIN_S,
    ) -> None:
        if psycopg is None:
            raise StoreError(
                "AGENTGUARD_STORE names a PostgreSQL server but psycopg is not installed; "
                "install agentguard[postgres] (pip install 'agentguard[postgres]')."
            )
        self._url = url
        self._clock = clock or SystemClock()
        self.reconnect_within = reconnect_within
        self.reconnects = 0  # transactions run again after a lost connection (for tests, stats)
        self.path = masked(url)  # what messages show where SQLite shows the file's path
        self._home = home_dir(home)
        self._local = threading.local()
        self._closed = False
        self._listener: Listener | None = None
        self._listener_lock = threading.Lock()
        self._write_key, self._snapshot_columns = self._prepare()
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=POOL_MAX,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
            name="agentguard",
            open=True,
            # a connection the server dropped (a restart, pg_terminate_backend) is replaced
            # when taken from the pool, not found broken by the step's write
            check=ConnectionPool.check_connection,
        )

    @classmethod
    def open(cls, url: str, home: str | os.PathLike[str] | None = None) -> PostgresStore:
        return cls(url, home)

    @property
    def home(self) -> Path:
        """Where the shadow git store lives: the machine's own AGENTGUARD_HOME."""
        return self._home

    @property
    def display(self) -> str:
        return self.path

    @property
    def changes(self) -> Listener:
        """Route-health announcements from every machine (LISTEN), started on first use."""
        with self._listener_lock:
            if self._listener is None:
                url = self._url
                self._listener = Listener(
                    lambda: psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
                )
            return self._listener

    def announce(self, channel: str, payload: str) -> None:
        """NOTIFY every machine's listeners; inside a write() it is sent when that commits."""
        self._run(
            lambda tx: tx.raw.execute("select pg_notify(%s, %s)", [channel, payload]), atomic=False
        )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._listener is not None:
                self._listener.close()
            self._pool.close()

    # -- transactions and plain SQL -------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[Transaction]:
        """A write transaction that waits its turn behind every other `write()` (see module).

        The caller's block cannot be run again, so a connection lost inside it is a
        StoreError; callers whose block may safely run twice use `transact`, which retries."""
        with self._transaction() as tx:
            _lock(tx, self._write_key)
            yield tx

    def transact(self, block: Callable[[Transaction], T]) -> T:
        """`block(tx)` inside `write()`, run again on a new connection if the server drops
        the one it had (see module). `block` must be safe to run twice: the breaker's and the
        budget's compare-and-set updates are."""
        return self._run(lambda tx: block(_lock(tx, self._write_key)))

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        text, values = translate(sql, params)

        def read(tx: Transaction) -> list[dict[str, Any]]:
            with tx.raw.cursor(row_factory=dict_row) as cur:
                cur.execute(text, values)
                return cur.fetchall() if cur.description else []

        return self._run(read, atomic=False)

    def _run(
        self,
        block: Callable[[Transaction], T],
        already: Callable[[Transaction], T | None] | None = None,
        *,
        atomic: bool = True,
    ) -> T:
        """`block(tx)` in one transaction (`atomic=False`: autocommit, for a single read),
        retried on a new connection while the server is away, up to `reconnect_within`.

        `already(tx)` is asked before a retry that follows a connection lost during COMMIT:
        it returns the first try's result if that try's rows are there (then nothing is
        written twice), None if they are not. Inside an enclosing transaction `block` just
        runs there: the outermost call owns the retry."""
        self._check_open()
        current: Transaction | None = getattr(self._local, "tx", None)
        if current is not None:
            if not atomic:
                return block(current)
            with current.raw.transaction():  # a savepoint on the same connection
                return block(current)
        began = self._clock.monotonic()
        tries, unsure = 0, False
        while True:
            committing = False
            try:
                with self._pool.connection(timeout=self._pool_wait(began)) as conn:
                    tx = Transaction(conn)
                    self._local.tx = tx
                    try:
                        if not atomic:
                            return block(tx)
                        with conn.transaction():
                            found = already(tx) if unsure and already is not None else None
                            result = found if found is not None else block(tx)
                            committing = True
                        return result
                    finally:
                        self._local.tx = None
            except Exception as exc:
                if not _lost(exc):
                    raise
                unsure = unsure or committing
                waited = self._clock.monotonic() - began
                if waited >= self.reconnect_within:
                    raise StoreError(self._gone(exc, waited)) from None
                log.info("agentguard: lost the store's connection (%s); trying again", exc)
                pause = RECONNECT_PAUSES_S[min(tries, len(RECONNECT_PAUSES_S) - 1)]
                self._clock.sleep(min(pause, self.reconnect_within - waited))
                tries += 1
                self.reconnects += 1

    def _pool_wait(self, began: float) -> float:
        """How long to wait for a pooled connection: what is left of `reconnect_within`
        (at least a moment, so a last try can still be made), at most CONNECT_TIMEOUT_S."""
        left = self.reconnect_within - (self._clock.monotonic() - began)
        return max(0.05, min(left, CONNECT_TIMEOUT_S))

    def _gone(self, exc: Exception, waited: float) -> str:
        if isinstance(exc, psycopg.OperationalError) and "FATAL:" in str(exc):
            return describe_connect_error(self.path, exc, self._url)
        return (
            f"agentguard lost the PostgreSQL server at {_host_port(self.path)} and it did not "
            f"come back within {waited:.0f} s; check that the server is running and that "
            "AGENTGUARD_STORE is right."
        )

    @contextmanager
    def _transaction(self) -> Iterator[Transaction]:
        """A transaction whose caller's block runs once (see `write`)."""
        self._check_open()
        current: Transaction | None = getattr(self._local, "tx", None)
        if current is not None:  # nested: a savepoint on the same connection
            with current.raw.transaction():
                yield current
            return
        try:
            with self._pool.connection(timeout=CONNECT_TIMEOUT_S) as conn:
                tx = Transaction(conn)
                self._local.tx = tx
                try:
                    with conn.transaction():
                        yield tx
                finally:
                    self._local.tx = None
        except Exception as exc:
            if not _lost(exc):
                raise
            raise StoreError(self._gone(exc, 0.0)) from None

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"This handle on {self.path} was closed; open the store again.")

    # -- runs -----------------------------------------------------------------------------------

    def insert_run(self, row: dict[str, Any]) -> None:
        def found(tx: Transaction) -> bool | None:
            return _exists(tx, "select 1 from runs where id = %s", [row["id"]])

        self._run(lambda tx: _insert(tx.raw, "runs", row), found)

    def update_run(self, run_id: str, **fields: Any) -> None:
        self._run(lambda tx: _update(tx.raw, "runs", "id", run_id, fields))

    # -- steps ----------------------------------------------------------------------------------

    def begin_step(
        self,
        step: dict[str, Any],
        messages: Sequence[dict[str, Any]],
        blob: tuple[str, str] | None,
    ) -> tuple[int, int]:
        """Write a step and only its new messages in one transaction → (step id, step number).

        The run's row is locked before the number is taken, so two processes continuing the
        same run wait for each other instead of both writing number n+1."""
        run_id = step["run_id"]

        def write(tx: Transaction) -> tuple[int, int]:
            conn = tx.raw
            conn.execute("select 1 from runs where id = %s for no key update", [run_id])
            (number,) = conn.execute(
                "select coalesce(max(number), 0) + 1 from steps where run_id = %s", [run_id]
            ).fetchone()
            if blob is not None:
                conn.execute(
                    "insert into blobs (sha, body) values (%s, %s) on conflict (sha) do nothing",
                    list(blob),
                )
            step_id = _insert(conn, "steps", {**step, "number": number}, returning=True)
            if messages:
                rows = []
                for m in messages:
                    content = pack(m["content"])
                    text, packed = (content, None) if isinstance(content, str) else (None, content)
                    rows.append((run_id, step_id, m["position"], m["role"], text, packed, m["sha"]))
                with conn.cursor() as cur:
                    cur.executemany(
                        "insert into messages (run_id, step_id, position, role, content, "
                        "content_z, sha) values (%s, %s, %s, %s, %s, %s, %s)",
                        rows,
                    )
            return step_id, int(number)

        def found(tx: Transaction) -> tuple[int, int] | None:
            # the same run, start time and request: this call's own step, committed after all
            row = tx.raw.execute(
                "select id, number from steps where run_id = %s and started_at = %s "
                "and request is not distinct from %s order by id limit 1",
                [run_id, step.get("started_at"), step.get("request")],
            ).fetchone()
            return (int(row[0]), int(row[1])) if row else None

        return self._run(write, found)

    def update_step(self, step_id: int, **fields: Any) -> None:
        self._run(lambda tx: _update(tx.raw, "steps", "id", step_id, fields))

    def finish_step(
        self,
        step_id: int,
        step: dict[str, Any],
        run_id: str,
        run: dict[str, Any],
        attempt: tuple[int, dict[str, Any]] | None = None,
    ) -> None:
        """A step's end in one transaction: its row, its run's row and its last attempt
        (updates only: running it twice writes the same values)."""

        def write(tx: Transaction) -> None:
            if attempt is not None:
                _update(tx.raw, "attempts", "id", attempt[0], attempt[1])
            _update(tx.raw, "steps", "id", step_id, step)
            _update(tx.raw, "runs", "id", run_id, run)

        self._run(write)

    def conversation(self, step_id: int) -> list[dict[str, Any]]:
        """Rebuild a step's whole conversation from its own messages and its parents'."""
        from agentguard.store import unpack

        return [json.loads(unpack(row["content"])) for row in self.conversation_rows(step_id)]

    def conversation_rows(self, step_id: int) -> list[dict[str, Any]]:
        """A step's conversation as stored rows (content and sha), oldest first.

        Two round trips whatever the depth (the parent chain in one recursive query, then every
        message of the chain), where walking it row by row would cost one per ancestor."""
        chain = self.query(
            "with recursive chain (id, parent_id, base_len, depth) as ("
            " select id, parent_id, base_len, 0 from steps where id = ?"
            " union all"
            " select s.id, s.parent_id, s.base_len, c.depth + 1"
            " from steps s join chain c on s.id = c.parent_id"
            ") select id, base_len from chain order by depth desc",
            [step_id],
        )
        if not chain:
            return []
        by_step: dict[int, list[dict[str, Any]]] = {row["id"]: [] for row in chain}
        for row in self.query(
            "select step_id, content, content_z, sha from messages "
            "where step_id = any(?) order by step_id, position",
            [list(by_step)],
        ):
            content = row["content"] if row["content"] is not None else bytes(row["content_z"])
            by_step[row["step_id"]].append({"content": content, "sha": row["sha"]})
        messages: list[dict[str, Any]] = []
        for row in chain:
            del messages[row["base_len"] :]
            messages.extend(by_step[row["id"]])
        return messages

    # -- attempts, events, snapshots --------------------------------------------------------------

    def insert_attempt(self, row: dict[str, Any]) -> int:
        def found(tx: Transaction) -> int | None:
            got = tx.raw.execute(
                "select id from attempts where step_id is not distinct from %s "
                "and number is not distinct from %s and started_at is not distinct from %s "
                "order by id limit 1",
                [row.get("step_id"), row.get("number"), row.get("started_at")],
            ).fetchone()
            return int(got[0]) if got else None

        return self._run(lambda tx: _insert(tx.raw, "attempts", row, returning=True), found)

    def update_attempt(self, attempt_id: int, fields: dict[str, Any]) -> None:
        self._run(lambda tx: _update(tx.raw, "attempts", "id", attempt_id, fields))

    def insert_event(
        self, run_id: str, kind: str, detail: dict[str, Any], *, at: float, step_id: int | None
    ) -> None:
        row = {
            "run_id": run_id,
            "step_id": step_id,
            "at": at,
            "kind": kind,
            "detail": dumps(detail),
        }

        def found(tx: Transaction) -> bool | None:
            return _exists(
                tx,
                "select 1 from events where run_id = %s and kind = %s and at = %s "
                "and detail = %s and step_id is not distinct from %s",
                [run_id, kind, at, row["detail"], step_id],
            )

        self._run(lambda tx: _insert(tx.raw, "events", row), found)

    def insert_snapshot(self, row: dict[str, Any]) -> None:
        """Insert, or replace the row with that commit whole (SQLite's `insert or replace`:
        a column the new row leaves out is reset, not kept)."""
        names = ", ".join(f'"{name}"' for name in row)
        reset = ", ".join(
            f'"{c}" = excluded."{c}"' for c in self._snapshot_columns if c != "commit_sha"
        )
        sql = (
            f"insert into snapshots ({names}) values ({', '.join(['%s'] * len(row))}) "
            f"on conflict (commit_sha) do update set {reset}"
        )
        self._run(lambda tx: tx.raw.execute(sql, _row_values(row.values())))

    def update_snapshot(self, commit: str, fields: dict[str, Any]) -> None:
        self._run(lambda tx: _update(tx.raw, "snapshots", "commit_sha", commit, fields))

    # -- opening: diagnose, migrate ---------------------------------------------------------------

    def _prepare(self) -> tuple[int, list[str]]:
        """Connect once, migrate under an advisory lock, and learn the per-schema lock keys."""
        try:
            conn = psycopg.connect(self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.OperationalError as exc:
            raise StoreError(describe_connect_error(self.path, exc, self._url)) from None
        try:
            (schema,) = conn.execute("select current_schema()").fetchone()
            if schema is None:
                raise StoreError(
                    f"The PostgreSQL database {self.path} has no schema to write to (the "
                    "search_path names none that exists); create it or fix AGENTGUARD_STORE."
                )
            migrate(conn, self.path, _lock_key(f"migrate:{schema}"))
            columns = [
                row[0]
                for row in conn.execute(
                    "select column_name from information_schema.columns "
                    "where table_schema = current_schema() and table_name = 'snapshots' "
                    "order by ordinal_position"
                )
            ]
            return _lock_key(f"write:{schema}"), columns
        except psycopg.OperationalError as exc:
            if not _lost(exc):
                raise
            raise StoreError(describe_connect_error(self.path, exc, self._url)) from None
        finally:
            conn.close()


class Transaction:
    """What `write()` yields: `.conn` takes the `?`-SQL the callers already send, `.query`
    gives dict rows (as sqlite-utils' Database does)."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.conn = Connection(raw)
        self.locked = False

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Iterator[dict]:
        text, values = translate(sql, params)
        with self.raw.cursor(row_factory=dict_row) as cur:
            cur.execute(text, values)
            rows = cur.fetchall() if cur.description else []
        yield from rows

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Cursor:
        return self.conn.execute(sql, params)

    def __getitem__(self, table: str) -> Table:
        return Table(self.raw, table)


# Each table's primary key, for sqlite-utils' `db[table].update(pk, fields)` that callers use.
_KEYS = {"snapshots": "commit_sha", "blobs": "sha", "route_health": "route"}


class Table:
    """The one sqlite-utils table call the callers make inside `write()`: `update(pk, {...})`."""

    def __init__(self, raw: Any, name: str) -> None:
        self.raw = raw
        self.name = name

    def update(self, pk: Any, updates: dict[str, Any]) -> Table:
        _update(self.raw, self.name, _KEYS.get(self.name, "id"), pk, updates)
        return self


class Connection:
    """A DB-API-like face over a psycopg connection for SQLite-style SQL."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Cursor:
        text, values = translate(sql, params)
        cur = self.raw.cursor()
        cur.execute(text, values)
        return Cursor(cur, text)

    def executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> Cursor:
        text, _ = translate(sql, ())
        cur = self.raw.cursor()
        cur.executemany(text, [_params(p) for p in seq])
        return Cursor(cur, text)


class Cursor:
    """fetchone / fetchall / rowcount / iteration, and `lastrowid` after an INSERT (the id
    the insert drew from its identity sequence, asked for only when read)."""

    def __init__(self, cur: Any, sql: str) -> None:
        self._cur = cur
        self._sql = sql

    @property
    def rowcount(self) -> int:
        return int(self._cur.rowcount)

    @property
    def description(self) -> Any:
        return self._cur.description

    @property
    def lastrowid(self) -> int | None:
        if not self._sql.lstrip().lower().startswith("insert"):
            return None
        (value,) = self._cur.connection.execute("select lastval()").fetchone()
        return int(value)

    def fetchone(self) -> tuple | None:
        return self._cur.fetchone() if self._cur.description else None

    def fetchall(self) -> list[tuple]:
        return self._cur.fetchall() if self._cur.description else []

    def __iter__(self) -> Iterator[tuple]:
        return iter(self.fetchall())

    def close(self) -> None:
        self._cur.close()


# -- SQL translation ------------------------------------------------------------------------------

_NAMED = re.compile(r":([A-Za-z_][A-Za-z0-9_]*)")


def translate(
    sql: str, params: Sequence[Any] | dict[str, Any] = ()
) -> tuple[str, list[Any] | dict[str, Any]]:
    """SQLite-style SQL and parameters → psycopg's: `?` → `%s` (`:name` → `%(name)s` when the
    parameters are a dict), a literal `%` doubled; quoted strings and names left alone."""
    if isinstance(params, dict):
        return _translate(sql, True), {k: _param(v) for k, v in params.items()}
    return _translate(sql, False), _params(params)


@lru_cache(maxsize=512)
def _translate(sql: str, named: bool) -> str:
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"":  # a quoted string or name: copy it through its closing quote
            end = i + 1
            while end < n:
                if sql[end] == ch:
                    if end + 1 < n and sql[end + 1] == ch:  # a doubled quote inside
                        end += 2
                        continue
                    break
                end += 1
            out.append(sql[i : end + 1].replace("%", "%%"))
            i = end + 1
        elif ch == "?" and not named:
            out.append("%s")
            i += 1
        elif ch == ":" and named and (m := _NAMED.match(sql, i)) and sql[i - 1 : i] != ":":
            out.append(f"%({m.group(1)})s")
            i = m.end()
        elif ch == "%":
            out.append("%%")
            i += 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _param(value: Any) -> Any:
    """A parameter as SQLite would bind it: a bool is the integer 0 or 1."""
    return int(value) if isinstance(value, bool) else value


def _params(params: Iterable[Any]) -> list[Any]:
    return [_param(v) for v in params]


def _row_values(values: Iterable[Any]) -> list[Any]:
    """A row's values as store.py's `_value` writes them: lists and dicts as JSON text."""
    return [dumps(v) if isinstance(v, dict | list | tuple) else _param(v) for v in values]


def _lock(tx: Transaction, key: int) -> Transaction:
    """Take the fleet-wide writers' lock for `tx` once (see the module: SQLite's one writer)."""
    if not tx.locked:
        tx.raw.execute("select pg_advisory_xact_lock(%s)", [key])
        tx.locked = True
    return tx


def _exists(tx: Transaction, sql: str, params: Sequence[Any]) -> bool | None:
    """True if `sql` finds a row, None if not (`_run`'s "already there?" answer)."""
    return True if tx.raw.execute(sql, list(params)).fetchone() else None


def _lost(exc: BaseException) -> bool:
    """Is this the connection going away (try again on another), not the SQL failing?"""
    if PoolTimeout is not None and isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in LOST_STATES


def _insert(conn: Any, table: str, row: dict[str, Any], *, returning: bool = False) -> int:
    names = ", ".join(f'"{name}"' for name in row)
    sql = f'insert into "{table}" ({names}) values ({", ".join(["%s"] * len(row))})'
    cur = conn.execute(sql + (" returning id" if returning else ""), _row_values(row.values()))
    return int(cur.fetchone()[0]) if returning else 0


def _update(conn: Any, table: str, key: str, value: Any, fields: dict[str, Any]) -> None:
    if not fields:
        return
    assignments = ", ".join(f'"{name}" = %s' for name in fields)
    conn.execute(
        f'update "{table}" set {assignments} where "{key}" = %s',
        [*_row_values(fields.values()), value],
    )


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


def _lock_key(name: str) -> int:
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
    host_port = _host_port(where)
    if "FATAL:" in text:
        reason = text.split("FATAL:", 1)[1].strip()
        if "does not exist" in reason and "database" in reason:
            return (
                f"The PostgreSQL server at {host_port} has no such database ({reason}); "
                "create it or fix the database name in AGENTGUARD_STORE."
            )
        return (
            f"The PostgreSQL server at {host_port} refused agentguard ({reason}); "
            "check the user and password in AGENTGUARD_STORE."
        )
    reason = text.removeprefix("connection failed: ")
    reason = reason.split(" Is the server running", 1)[0]
    return (
        f"agentguard cannot reach the PostgreSQL server at {host_port} ({reason}); "
        "check that the server is running and that AGENTGUARD_STORE is right."
    )


def _host_port(where: str) -> str:
    parts = urlsplit(where)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
