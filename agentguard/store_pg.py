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
  the retry first looks for its own row (`_run`'s `already`) instead of writing it twice.
- Messages. Short JSON goes in `messages.content` (text), long zlib-compressed JSON in
  `messages.content_z` (bytea); `conversation_rows` hands back one `content` (str or bytes) as
  SQLite's does, so `unpack` reads either.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from agentguard.clock import Clock, SystemClock
from agentguard.errors import StoreError
from agentguard.home import home_dir
from agentguard.store import StoreReads, dumps, pack
from agentguard.store_pg_changes import Listener
from agentguard.store_pg_setup import (
    CONNECT_TIMEOUT_S,
    NO_PSYCOPG,
    connect_options,
    describe_connect_error,
    host_port,
    lock_key,
    lost,
    masked,
    migrate,
)
from agentguard.store_pg_sql import (
    Transaction,
    exists,
    insert_row,
    row_values,
    take_write_lock,
    translate,
    update_row,
)

try:
    import psycopg
    from psycopg.rows import dict_row
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError:  # pragma: no cover - exercised only without the extra
    psycopg = None  # type: ignore[assignment]
    PoolTimeout = None  # type: ignore[assignment,misc]

POOL_MAX = 8
# How long a store call waits for a dropped server to come back before the step fails: the
# default policy's step deadline.
RECONNECT_WITHIN_S = 120.0
# Pauses between tries on a lost connection: the first retry at once (a killed backend leaves
# the server up), then backing off to one try a second while it restarts.
RECONNECT_PAUSES_S = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)

T = TypeVar("T")
_INHERITED: list[Any] = []  # pools a forked child got from its parent (see `_connections`)
log = logging.getLogger("agentguard")


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
            raise StoreError(NO_PSYCOPG)
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
        self._pid = os.getpid()
        self._fork_lock = threading.Lock()
        self._pool = self._open_pool()

    def _open_pool(self) -> Any:
        return ConnectionPool(
            self._url,
            min_size=1,
            max_size=POOL_MAX,
            kwargs=connect_options(self._url),
            name="agentguard",
            open=True,
            # a connection the server dropped (a restart, pg_terminate_backend) is replaced
            # when taken from the pool, not found broken by the step's write
            check=ConnectionPool.check_connection,
        )

    @property
    def _connections(self) -> Any:
        """This process's pool. A forked child (multiprocessing, a pre-fork server) must not
        talk on its parent's sockets, and the pool's threads did not come along: the child
        opens its own pool and listener, leaving the parent's connections untouched (psycopg
        never closes a connection from a process that did not open it)."""
        if self._pid != os.getpid():
            with self._fork_lock:
                if self._pid != os.getpid():
                    _INHERITED.append(self._pool)  # never finalized here: it is the parent's
                    self._local = threading.local()
                    self._listener = None
                    self._pool = self._open_pool()
                    self._pid = os.getpid()
        return self._pool

    # a Guard that opened this store closes it with its run: server connections and a listener
    # thread must not wait for the garbage collector (a SQLite handle is only a reference)
    holds_connections = True

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
                self._connections  # noqa: B018 - a forked child drops its parent's listener
                if self._listener is None:
                    self._listener = Listener(lambda: psycopg.connect(url, **connect_options(url)))
            return self._listener

    def announce(self, channel: str, payload: str) -> None:
        """NOTIFY every machine's listeners; inside a write() it is sent when that commits."""
        self._run(
            lambda tx: tx.raw.execute("select pg_notify(%s, %s)", [channel, payload]), atomic=False
        )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._pid != os.getpid():
                return  # the pool and listener are the parent's (see `_connections`)
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
            take_write_lock(tx, self._write_key)
            yield tx

    @contextmanager
    def batch(self) -> Iterator[None]:
        """SQLite's store joins a step's writes into one transaction here; on PostgreSQL each
        stays its own, so that a lost connection costs one re-run write, never a batch that
        could not be re-run."""
        yield

    @contextmanager
    def outside_batch(self) -> Iterator[None]:
        yield

    @contextmanager
    def others_wait(self) -> Iterator[None]:
        """SQLite's store holds this process's other readers here; PostgreSQL's readers are
        connections of their own, as another process's are (see `Store.others_wait`)."""
        yield

    def transact(self, block: Callable[[Transaction], T], *, one_statement: bool = False) -> T:
        """`block(tx)` inside `write()`, run again on a new connection if the server drops
        the one it had (see module). `block` must be safe to run twice: the breaker's and the
        budget's compare-and-set updates are. (`one_statement` spares SQLite's store a
        savepoint; here every transact is a transaction of its own anyway.)"""
        return self._run(lambda tx: block(take_write_lock(tx, self._write_key)))

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
                with self._connections.connection(timeout=self._pool_wait(began)) as conn:
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
                if not lost(exc):
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
            f"agentguard lost the PostgreSQL server at {host_port(self.path)} and it did not "
            f"come back within {waited:.0f} s; check that the server is running and that "
            "the store URL is right."
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
            with self._connections.connection(timeout=CONNECT_TIMEOUT_S) as conn:
                tx = Transaction(conn)
                self._local.tx = tx
                try:
                    with conn.transaction():
                        yield tx
                finally:
                    self._local.tx = None
        except Exception as exc:
            if not lost(exc):
                raise
            raise StoreError(self._gone(exc, 0.0)) from None

    def _check_open(self) -> None:
        """Refuse a closed handle; in a forked child, switch to connections of its own first
        (before anyone looks at the thread's transaction: the parent's is not the child's)."""
        if self._closed:
            raise StoreError(f"This handle on {self.path} was closed; open the store again.")
        if self._pid != os.getpid():
            self._connections  # noqa: B018 - the property does the switch

    # -- runs -----------------------------------------------------------------------------------

    def insert_run(self, row: dict[str, Any]) -> None:
        def found(tx: Transaction) -> bool | None:
            return exists(tx, "select 1 from runs where id = %s", [row["id"]])

        self._run(lambda tx: insert_row(tx.raw, "runs", row), found)

    def update_run(self, run_id: str, **fields: Any) -> None:
        self._run(lambda tx: update_row(tx.raw, "runs", "id", run_id, fields))

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
            step_id = insert_row(conn, "steps", {**step, "number": number}, returning=True)
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
        self._run(lambda tx: update_row(tx.raw, "steps", "id", step_id, fields))

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
                update_row(tx.raw, "attempts", "id", attempt[0], attempt[1])
            update_row(tx.raw, "steps", "id", step_id, step)
            update_row(tx.raw, "runs", "id", run_id, run)

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

        return self._run(lambda tx: insert_row(tx.raw, "attempts", row, returning=True), found)

    def update_attempt(self, attempt_id: int, fields: dict[str, Any]) -> None:
        self._run(lambda tx: update_row(tx.raw, "attempts", "id", attempt_id, fields))

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
            return exists(
                tx,
                "select 1 from events where run_id = %s and kind = %s and at = %s "
                "and detail = %s and step_id is not distinct from %s",
                [run_id, kind, at, row["detail"], step_id],
            )

        self._run(lambda tx: insert_row(tx.raw, "events", row), found)

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
        self._run(lambda tx: tx.raw.execute(sql, row_values(row.values())))

    def update_snapshot(self, commit: str, fields: dict[str, Any]) -> None:
        self._run(lambda tx: update_row(tx.raw, "snapshots", "commit_sha", commit, fields))

    # -- opening: diagnose, migrate ---------------------------------------------------------------

    def _prepare(self) -> tuple[int, list[str]]:
        """Connect once, migrate under an advisory lock, and learn the per-schema lock keys."""
        try:
            conn = psycopg.connect(self._url, **connect_options(self._url))
        except psycopg.OperationalError as exc:
            raise StoreError(describe_connect_error(self.path, exc, self._url)) from None
        try:
            (schema,) = conn.execute("select current_schema()").fetchone()
            if schema is None:
                raise StoreError(
                    f"The PostgreSQL database {self.path} has no schema to write to (the "
                    "search_path names none that exists); create it or fix the store URL."
                )
            migrate(conn, self.path, lock_key(f"migrate:{schema}"))
            columns = [
                row[0]
                for row in conn.execute(
                    "select column_name from information_schema.columns "
                    "where table_schema = current_schema() and table_name = 'snapshots' "
                    "order by ordinal_position"
                )
            ]
            return lock_key(f"write:{schema}"), columns
        except psycopg.OperationalError as exc:
            if not lost(exc):
                raise
            raise StoreError(describe_connect_error(self.path, exc, self._url)) from None
        finally:
            conn.close()
