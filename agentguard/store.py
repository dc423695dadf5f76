"""The run log: runs, steps, attempts, messages and events in one SQLite file.

Every agent process on the machine writes to the same file, so it runs in WAL mode with a busy
timeout, and every write transaction starts with BEGIN IMMEDIATE (a deferred transaction that
later wants to write can fail at once with "database is locked" instead of waiting).
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from sqlite_utils import Database

from agentguard.errors import StoreError
from agentguard.home import ensure_home, home_dir
from agentguard.migrations import KNOWN, migrations
from agentguard.store_choice import STORE_ENV, is_postgres, store_location

if TYPE_CHECKING:
    from agentguard.store_pg import PostgresStore

DB_NAME = "agentguard.db"
BUSY_TIMEOUT_S = 30.0
COMPRESS_FROM = 512  # bytes of JSON
CHECKPOINT_EVERY_STEPS = 64  # a step writes ~10 WAL pages: about SQLite's own 1,000-page mark

T = TypeVar("T")


def dumps(value: Any) -> str:
    """Compact, key-sorted JSON: the same value always gives the same bytes (and hash)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False, default=str)


def open_store(
    home: str | os.PathLike[str] | None = None, url: str | None = None
) -> Store | PostgresStore:
    """The user's store: PostgreSQL when `url` (else $AGENTGUARD_STORE) is a postgresql:// URL,
    the SQLite file under `home` (the embedded default) when it is empty or "sqlite".

    `url` is what a face chose with `store_choice.choose_store` (--store > $AGENTGUARD_STORE >
    the config file's `store`); None asks $AGENTGUARD_STORE alone. Any other value is refused
    rather than ignored: a mistyped URL must not send a team's runs into one machine's private
    file without a word (the message never shows the value: it may hold a password)."""
    if url is not None:
        chosen = store_location(url, "The store URL")
    else:
        chosen = store_location(os.environ.get(STORE_ENV, ""), f"${STORE_ENV}")
    if is_postgres(chosen):
        from agentguard.store_pg import PostgresStore

        return PostgresStore(chosen, home)
    return Store.open(home)


class StoreReads:
    """The rows every engine reads the same way, through its own `query` (SQLite's and
    PostgreSQL's stores differ in how they write, not in these)."""

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        raise NotImplementedError

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        rows = self.query("select * from runs where id = ?", [run_id])
        return rows[0] if rows else None

    def get_step(self, step_id: int) -> dict[str, Any] | None:
        rows = self.query("select * from steps where id = ?", [step_id])
        return rows[0] if rows else None

    def steps(self, run_id: str) -> list[dict[str, Any]]:
        return self.query("select * from steps where run_id = ? order by number", [run_id])

    def blob(self, sha: str) -> Any:
        rows = self.query("select body from blobs where sha = ?", [sha])
        return json.loads(rows[0]["body"]) if rows else None

    def attempts(self, step_id: int) -> list[dict[str, Any]]:
        return self.query("select * from attempts where step_id = ? order by number", [step_id])

    def events(self, run_id: str) -> list[dict[str, Any]]:
        return self.query("select * from events where run_id = ? order by id", [run_id])


class Store(StoreReads):
    """A handle on the store, safe to share between the threads of one process.

    Every handle on one database file in a process shares one SQLite connection (see
    `_Shared`): a second connection's open/close, or any descriptor of ours on the file, would
    drop the POSIX locks of the first, and another process would then delete the -wal file it
    still writes into."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        ensure_home(self.path.parent)
        self._shared = _acquire(self.path)
        self._closed = False

    @property
    def db(self) -> Database:
        self._check_open()
        return self._shared.db

    @property
    def _lock(self) -> threading.RLock:
        return self._shared.lock

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"This handle on {self.path} was closed; open the store again.")

    @classmethod
    def open(cls, home: str | os.PathLike[str] | None = None) -> Store:
        """The store under `home`, $AGENTGUARD_HOME or the per-user data folder."""
        return cls(home_dir(home) / DB_NAME)

    @property
    def home(self) -> Path:
        return self.path.parent

    # Waits for another process's write poll SQLite (see clock.WAKE_POLL_S): no announcements.
    changes: None = None

    def announce(self, channel: str, payload: str) -> None:
        """What a PostgreSQL store NOTIFYs other machines of; on SQLite the waiters poll."""

    def close(self) -> None:
        """Let go of this handle; the connection closes with the process's last handle."""
        if not self._closed:
            self._closed = True
            _release(self._shared)

    @contextmanager
    def write(self, *, one_statement: bool = False) -> Iterator[Database]:
        """A write transaction begun IMMEDIATE, so it waits its turn rather than failing;
        inside another (a `batch`), a savepoint of it, so a failed write is undone alone.
        Two cases need no savepoint, whose SAVEPOINT and RELEASE would be two more statements
        on a step's critical path for each of its rows: a block that runs `one_statement`
        (SQLite undoes a failed statement by itself), and a batch's first write (undoing it
        is rolling back the transaction it began; the batch's next write begins another)."""
        with self._lock:
            conn = self.db.conn
            if self._shared.batch and not conn.in_transaction:
                conn.execute("BEGIN IMMEDIATE")  # the batch's, from its first write to its end
                try:
                    yield self.db
                except BaseException:
                    if conn.in_transaction:  # unless the error ended it already
                        conn.execute("ROLLBACK")
                    raise
                return
            if one_statement and conn.in_transaction:
                yield self.db
                return
            if conn.in_transaction:
                conn.execute("SAVEPOINT agentguard_write")
                try:
                    yield self.db
                except BaseException:
                    if conn.in_transaction:  # unless the error ended the whole transaction
                        conn.execute("ROLLBACK TO agentguard_write")
                        conn.execute("RELEASE agentguard_write")
                    raise
                conn.execute("RELEASE agentguard_write")
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        self._checkpoint_if_due()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Every write in the block in one transaction, committed when it ends — also when an
        exception ends it: each `write()` inside is a savepoint, undone alone if it failed, and
        what the others wrote was meant. A step's writes between two of its actions (the
        checkpoint, the budget's row and the attempt before a call; the outcome, the snapshot
        row and the step's end after it) are one commit instead of three or four, on the
        request's critical path. The transaction begins with the block's first write: a
        stretch that only reads never waits for another writer's lock. Nothing slow may run
        inside: see `outside_batch`."""
        shared = self._shared
        with self._lock:
            conn = self.db.conn
            if shared.batch or conn.in_transaction:
                yield
                return
            shared.batch = True
            try:
                yield
            finally:
                shared.batch = False
                if conn.in_transaction:
                    conn.execute("COMMIT")
        self._checkpoint_if_due()

    @contextmanager
    def others_wait(self) -> Iterator[None]:
        """Every other thread's reads and writes on this store wait until the block ends: the
        proxy hands an answer over and writes the rows saying it was served inside one, so a
        reader in this process never finds them missing once the client has the answer. The
        same thread is not held (the lock is reentrant): other tasks on the proxy's event loop
        go on, each with transactions of its own."""
        with self._lock:
            yield

    @contextmanager
    def outside_batch(self) -> Iterator[None]:
        """Commit an open `batch` for the length of the block (a user's callback, which may
        take its time), so other processes' writers never wait for it; the batch goes on
        after."""
        shared = self._shared
        if not shared.batch:
            yield
            return
        with self._lock:
            if self.db.conn.in_transaction:
                self.db.conn.execute("COMMIT")
            shared.batch = False
        try:
            yield
        finally:
            shared.batch = True  # the batch's next write begins its next transaction

    def transact(self, block: Callable[[Database], T], *, one_statement: bool = False) -> T:
        """`block(db)` in one write transaction (see `write` for `one_statement`). (PostgreSQL's
        store runs it again after a lost connection, so callers give a block that is safe to
        run twice.)"""
        with self.write(one_statement=one_statement) as db:
            return block(db)

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        """Rows as dicts. Straight on the connection: sqlite-utils' `query` wraps each read in
        a SAVEPOINT and its RELEASE (three statements for one), which a step pays on its
        critical path (the breaker's row before the call and after it)."""
        with self._lock:
            cursor = self.db.conn.execute(sql, params)
            if cursor.description is None:
                raise StoreError(f"Store.query is for reads; this statement returns no rows: {sql}")
            keys = [d[0] for d in cursor.description]
            return [dict(zip(keys, row, strict=True)) for row in cursor.fetchall()]

    # -- runs ---------------------------------------------------------------------------------

    def insert_run(self, row: dict[str, Any]) -> None:
        with self.write(one_statement=True) as db:
            _insert(db.conn, "runs", row)

    def update_run(self, run_id: str, **fields: Any) -> None:
        with self.write(one_statement=True) as db:
            _update(db.conn, "runs", "id", run_id, fields)

    # -- steps --------------------------------------------------------------------------------

    def begin_step(
        self,
        step: dict[str, Any],
        messages: Sequence[dict[str, Any]],
        blob: tuple[str, str] | None,
    ) -> tuple[int, int]:
        """Write a step and only its new messages in one transaction → (step id, step number).

        The number is taken inside the transaction, so two processes continuing the same run
        can never write the same step twice."""
        with self.write() as db:
            if blob is not None:
                db.conn.execute("insert or ignore into blobs (sha, body) values (?, ?)", blob)
            step_id, number = db.conn.execute(
                f"insert into steps ({', '.join(step)}, number) "
                f"values ({', '.join('?' * len(step))}, "
                "(select coalesce(max(number), 0) + 1 from steps where run_id = ?)) "
                "returning id, number",
                [*step.values(), step["run_id"]],
            ).fetchall()[0]
            if messages:
                db.conn.executemany(
                    "insert into messages (run_id, step_id, position, role, content, sha) "
                    "values (?, ?, ?, ?, ?, ?)",
                    [
                        (
                            step["run_id"],
                            step_id,
                            m["position"],
                            m["role"],
                            pack(m["content"]),
                            m["sha"],
                        )
                        for m in messages
                    ],
                )
            return step_id, number

    def update_step(self, step_id: int, **fields: Any) -> None:
        with self.write(one_statement=True) as db:
            _update(db.conn, "steps", "id", step_id, fields)

    def finish_step(
        self,
        step_id: int,
        step: dict[str, Any],
        run_id: str,
        run: dict[str, Any],
        attempt: tuple[int, dict[str, Any]] | None = None,
    ) -> None:
        """A step's end in one transaction: its row, its run's row and (optionally) the
        outcome of its last attempt — one commit where three would cost three."""
        with self._lock:
            self._shared.steps_unchecked += 1
            with self.write() as db:
                if attempt is not None:
                    _update(db.conn, "attempts", "id", attempt[0], attempt[1])
                _update(db.conn, "steps", "id", step_id, step)
                _update(db.conn, "runs", "id", run_id, run)

    def _checkpoint_if_due(self) -> None:
        """Once CHECKPOINT_EVERY_STEPS steps have ended in this process, after the transaction
        that ended the last of them, move the WAL into the database (PASSIVE: never waits for
        another connection). A step's end is the quiet moment: the proxy writes a stream's
        after its first content is on its way, and a step's first writes never pay for a
        checkpoint (see `_configure`). The last connection to close checkpoints too."""
        shared = self._shared
        if shared.steps_unchecked < CHECKPOINT_EVERY_STEPS:
            return
        with self._lock:
            if self.db.conn.in_transaction:  # inside a caller's transaction: at its end
                return
            shared.steps_unchecked = 0
            self.db.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def conversation(self, step_id: int) -> list[dict[str, Any]]:
        """Rebuild a step's whole conversation from its own messages and its parents'."""
        return [json.loads(unpack(row["content"])) for row in self.conversation_rows(step_id)]

    def conversation_rows(self, step_id: int) -> list[dict[str, Any]]:
        """A step's conversation as stored rows (content JSON and sha), oldest first."""
        chain: list[dict[str, Any]] = []
        current: int | None = step_id
        while current is not None:
            row = self.get_step(current)
            if row is None:
                break
            chain.append(row)
            current = row["parent_id"]
        messages: list[dict[str, Any]] = []
        for row in reversed(chain):
            del messages[row["base_len"] :]
            messages.extend(
                self.query(
                    "select content, sha from messages where step_id = ? order by position",
                    [row["id"]],
                )
            )
        return messages

    # -- attempts, events, snapshots -----------------------------------------------------------

    def insert_attempt(self, row: dict[str, Any]) -> int:
        with self.write(one_statement=True) as db:
            return _insert(db.conn, "attempts", row)

    def update_attempt(self, attempt_id: int, fields: dict[str, Any]) -> None:
        with self.write(one_statement=True) as db:
            _update(db.conn, "attempts", "id", attempt_id, fields)

    def insert_event(
        self, run_id: str, kind: str, detail: dict[str, Any], *, at: float, step_id: int | None
    ) -> None:
        row = {"run_id": run_id, "step_id": step_id, "at": at, "kind": kind}
        with self.write(one_statement=True) as db:
            _insert(db.conn, "events", {**row, "detail": dumps(detail)})

    def insert_snapshot(self, row: dict[str, Any]) -> None:
        with self.write(one_statement=True) as db:
            _insert(db.conn, "snapshots", row, replace=True)

    def update_snapshot(self, commit: str, fields: dict[str, Any]) -> None:
        with self.write(one_statement=True) as db:
            _update(db.conn, "snapshots", "commit_sha", commit, fields)


# Plain SQL for the rows every step writes: sqlite-utils' insert/update look the table up
# (PRAGMA table_info, a SELECT of the row) on every call, which doubled a step's write time.
# Table and column names come from agentguard's own code, never from input.


def _insert(
    conn: sqlite3.Connection, table: str, row: dict[str, Any], *, replace: bool = False
) -> int:
    names = ", ".join(f'"{name}"' for name in row)
    verb = "insert or replace" if replace else "insert"
    cursor = conn.execute(
        f'{verb} into "{table}" ({names}) values ({", ".join("?" * len(row))})',
        [_value(v) for v in row.values()],
    )
    return int(cursor.lastrowid or 0)


def _update(
    conn: sqlite3.Connection, table: str, key: str, value: Any, fields: dict[str, Any]
) -> None:
    if not fields:
        return
    assignments = ", ".join(f'"{name}" = ?' for name in fields)
    conn.execute(
        f'update "{table}" set {assignments} where "{key}" = ?',
        [*(_value(v) for v in fields.values()), value],
    )


def _value(value: Any) -> Any:
    """A value as sqlite-utils stored it: lists and dicts as JSON text."""
    if isinstance(value, dict | list | tuple):
        return dumps(value)
    return value


def pack(text: str) -> str | bytes:
    """A message's JSON as stored: large ones zlib-compressed (tool results are mostly text).

    Keeps the database near the size of the raw messages; small messages stay readable JSON."""
    if len(text) < COMPRESS_FROM:
        return text
    return zlib.compress(text.encode(), 6)


def unpack(value: str | bytes) -> str:
    """The JSON text of a stored message, whichever way it was stored."""
    return zlib.decompress(value).decode() if isinstance(value, bytes) else value


# -- one connection per database file per process ------------------------------------------------


@dataclass
class _Shared:
    """The process's one connection to a database file, and how many handles use it."""

    key: str
    path: Path
    db: Database
    lock: threading.RLock = field(default_factory=threading.RLock)
    users: int = 1
    steps_unchecked: int = 0  # steps ended since this process last checkpointed the WAL
    batch: bool = False  # a `Store.batch` is open: writes join its transaction


_OPEN: dict[str, _Shared] = {}
_OPEN_LOCK = threading.Lock()


def _forget_inherited() -> None:
    """A forked child must never use (or close) its parent's connections: it opens its own.
    The inherited objects are left alone; closing them here could checkpoint the parent's WAL."""
    global _OPEN_LOCK
    _OPEN.clear()
    _OPEN_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_inherited)


def _acquire(path: Path) -> _Shared:
    key = os.path.realpath(path)
    with _OPEN_LOCK:
        shared = _OPEN.get(key)
        if shared is None:
            shared = _OPEN[key] = _Shared(key, path, _connect(path))
            return shared
        shared.users += 1
    try:
        with shared.lock:  # a newer agentguard may have migrated the file since
            _check_schema(shared.db, path)
    except BaseException:
        _release(shared)
        raise
    return shared


def _release(shared: _Shared) -> None:
    with _OPEN_LOCK:
        shared.users -= 1
        if shared.users > 0:
            return
        if _OPEN.get(shared.key) is shared:
            del _OPEN[shared.key]
    with shared.lock:  # never under a statement another thread is still running
        shared.db.conn.close()


def _connect(path: Path) -> Database:
    """Open, configure and migrate the one connection. Only SQLite opens the file once it
    exists; a new file is first created 0600 (WAL files inherit its mode) while this process
    has no connection to it, so that descriptor's close drops no lock of ours."""
    if not path.exists():
        _create_private(path)
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        db = Database(conn)
        _while_busy(path, lambda: _configure(conn))
        _while_busy(path, lambda: _migrate(db, path))
        return db
    except sqlite3.DatabaseError as exc:
        if conn is not None:
            conn.close()
        raise _diagnose(path, exc) from None
    except BaseException:
        if conn is not None:
            conn.close()
        raise


def _configure(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if str(mode).lower() != "wal":  # another process held the file: SQLite kept the old mode
        raise sqlite3.OperationalError("database is locked (journal mode not yet WAL)")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    # No checkpoint inside a commit: SQLite's automatic one (every 1,000 WAL pages) lands on
    # whichever commit crosses the line — a step's first write, on its critical path — and
    # costs 10–15 ms here. The store checkpoints at a step's end instead (Store.finish_step).
    conn.execute("PRAGMA wal_autocheckpoint = 0")


def _check_schema(db: Database, path: Path) -> set[str]:
    """The migrations applied to the file; refuses one written by a newer agentguard."""
    applied = {m.name for m in migrations.applied(db)}
    unknown = applied - set(KNOWN)
    if unknown:
        raise StoreError(
            f"The database {path} was written by a newer agentguard "
            f"(schema {sorted(unknown)[-1]}); upgrade agentguard to read it."
        )
    return applied


def _migrate(db: Database, path: Path) -> None:
    if len(_check_schema(db, path)) == len(KNOWN):
        return
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait, then see it done
    try:
        migrations.apply(db)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _while_busy(path: Path, action: Callable[[], None]) -> None:
    """Run `action`, waiting out another process's lock: a busy file is never 'damaged'.

    SQLite's busy handler does not cover every case (changing the journal mode of a file
    another connection is creating, a lock held across a schema change)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    delay = 0.005
    while True:
        try:
            action()
            return
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            if time.monotonic() >= deadline:
                raise StoreError(
                    f"The agentguard database {path} has been locked by another process for "
                    f"{BUSY_TIMEOUT_S:.0f} s ({exc}); stop the process that holds it, or try "
                    "again."
                ) from None
            time.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, 0.2)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _create_private(path: Path) -> None:
    """Create the database file readable by its owner alone; someone else's new file is fine."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreError(
            f"agentguard cannot create its database {path} ({exc.strerror}); "
            "set AGENTGUARD_HOME to a writable folder."
        ) from None


def _diagnose(path: Path, exc: sqlite3.DatabaseError) -> StoreError:
    """What to tell the user when SQLite refused the file. Moving the database aside throws away
    every run in it, so that advice comes only after a fresh connection's integrity check has
    failed, with what the check reported."""
    if isinstance(exc, sqlite3.OperationalError) and "unable to open" in str(exc).lower():
        return StoreError(
            f"agentguard cannot open its database {path} ({exc}); "
            "set AGENTGUARD_HOME to a writable folder."
        )
    report = integrity_report(path)
    if report == "ok":
        return StoreError(
            f"agentguard could not use its database {path} ({exc}), but SQLite's integrity "
            "check of the file passes; nothing was moved: try again, and report it if it "
            "keeps happening."
        )
    return StoreError(
        f"The agentguard database {path} is damaged or not a database (SQLite's integrity "
        f"check: {report}); move it aside (mv {path} {path}.bad) and agentguard will start a "
        "new one."
    )


def integrity_report(path: Path) -> str:
    """`PRAGMA integrity_check` of the file on a fresh read-only connection, in one line."""
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S)
    except sqlite3.DatabaseError as exc:
        return str(exc)
    try:
        rows = [str(row[0]) for row in conn.execute("PRAGMA integrity_check(5)")]
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        conn.close()
    return "; ".join(rows) if rows else "no answer"
