"""The run log: runs, steps, attempts, messages and events in one SQLite file.

Every agent process on the machine writes to the same file, so it runs in WAL mode with a busy
timeout, and every write transaction starts with BEGIN IMMEDIATE (a deferred transaction that
later wants to write can fail at once with "database is locked" instead of waiting).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from agentguard.errors import StoreError
from agentguard.home import ensure_home, home_dir
from agentguard.migrations import KNOWN, migrations

DB_NAME = "agentguard.db"
BUSY_TIMEOUT_S = 30.0
_SQLITE_MAGIC = b"SQLite format 3\x00"
COMPRESS_FROM = 512  # bytes of JSON


def dumps(value: Any) -> str:
    """Compact, key-sorted JSON: the same value always gives the same bytes (and hash)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False, default=str)


class Store:
    """One connection to the store, safe to share between the threads of one process."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        ensure_home(self.path.parent)
        _check_is_sqlite(self.path)
        _create_private(self.path)
        try:
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self.db = Database(conn)
            self._lock = threading.RLock()
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise _corrupt(self.path, exc) from None

    @classmethod
    def open(cls, home: str | os.PathLike[str] | None = None) -> Store:
        """The store under `home`, $AGENTGUARD_HOME or the per-user data folder."""
        return cls(home_dir(home) / DB_NAME)

    @property
    def home(self) -> Path:
        return self.path.parent

    def close(self) -> None:
        self.db.conn.close()

    def _migrate(self) -> None:
        with self._lock:
            applied = {m.name for m in migrations.applied(self.db)}
            unknown = applied - set(KNOWN)
            if unknown:
                raise StoreError(
                    f"The database {self.path} was written by a newer agentguard "
                    f"(schema {sorted(unknown)[-1]}); upgrade agentguard to read it."
                )
            if len(applied) == len(KNOWN):
                return
            for _ in range(3):  # another process may be migrating the same file right now
                try:
                    with self.write():
                        migrations.apply(self.db)
                    return
                except sqlite3.OperationalError as exc:
                    if "already exists" not in str(exc):
                        raise
            migrations.apply(self.db)

    @contextmanager
    def write(self) -> Iterator[Database]:
        """A write transaction begun IMMEDIATE, so it waits its turn rather than failing."""
        with self._lock:
            conn = self.db.conn
            if conn.in_transaction:
                with self.db.atomic():
                    yield self.db
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.db.query(sql, params))

    # -- runs ---------------------------------------------------------------------------------

    def insert_run(self, row: dict[str, Any]) -> None:
        with self.write() as db:
            db["runs"].insert(row)

    def update_run(self, run_id: str, **fields: Any) -> None:
        with self.write() as db:
            db["runs"].update(run_id, fields)

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        rows = self.query("select * from runs where id = ?", [run_id])
        return rows[0] if rows else None

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
            (number,) = db.conn.execute(
                "select coalesce(max(number), 0) + 1 from steps where run_id = ?", [step["run_id"]]
            ).fetchone()
            step = {**step, "number": number}
            if blob is not None:
                db.conn.execute("insert or ignore into blobs (sha, body) values (?, ?)", blob)
            cursor = db.conn.execute(
                f"insert into steps ({', '.join(step)}) values ({', '.join('?' * len(step))})",
                list(step.values()),
            )
            step_id = int(cursor.lastrowid or 0)
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
        with self.write() as db:
            db["steps"].update(step_id, fields)

    def get_step(self, step_id: int) -> dict[str, Any] | None:
        rows = self.query("select * from steps where id = ?", [step_id])
        return rows[0] if rows else None

    def steps(self, run_id: str) -> list[dict[str, Any]]:
        return self.query("select * from steps where run_id = ? order by number", [run_id])

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

    def blob(self, sha: str) -> Any:
        rows = self.query("select body from blobs where sha = ?", [sha])
        return json.loads(rows[0]["body"]) if rows else None

    # -- attempts, events, snapshots -----------------------------------------------------------

    def insert_attempt(self, row: dict[str, Any]) -> int:
        with self.write() as db:
            return int(db["attempts"].insert(row).last_pk)

    def update_attempt(self, attempt_id: int, fields: dict[str, Any]) -> None:
        with self.write() as db:
            db["attempts"].update(attempt_id, fields)

    def attempts(self, step_id: int) -> list[dict[str, Any]]:
        return self.query("select * from attempts where step_id = ? order by number", [step_id])

    def insert_event(
        self, run_id: str, kind: str, detail: dict[str, Any], *, at: float, step_id: int | None
    ) -> None:
        with self.write() as db:
            db["events"].insert(
                {
                    "run_id": run_id,
                    "step_id": step_id,
                    "at": at,
                    "kind": kind,
                    "detail": dumps(detail),
                }
            )

    def events(self, run_id: str) -> list[dict[str, Any]]:
        return self.query("select * from events where run_id = ? order by id", [run_id])

    def insert_snapshot(self, row: dict[str, Any]) -> None:
        with self.write() as db:
            db["snapshots"].insert(row, replace=True)


def pack(text: str) -> str | bytes:
    """A message's JSON as stored: large ones zlib-compressed (tool results are mostly text).

    Keeps the database near the size of the raw messages; small messages stay readable JSON."""
    if len(text) < COMPRESS_FROM:
        return text
    return zlib.compress(text.encode(), 6)


def unpack(value: str | bytes) -> str:
    """The JSON text of a stored message, whichever way it was stored."""
    return zlib.decompress(value).decode() if isinstance(value, bytes) else value


def _check_is_sqlite(path: Path) -> None:
    """Refuse a file that is not SQLite before SQLite gets a chance to misread it."""
    try:
        with path.open("rb") as handle:
            header = handle.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"agentguard cannot read its database {path} ({exc.strerror}).") from None
    if header and header != _SQLITE_MAGIC:
        raise _corrupt(path, None)


def _create_private(path: Path) -> None:
    """Create the database file readable by its owner alone (WAL files inherit the mode)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
    except OSError as exc:
        raise StoreError(
            f"agentguard cannot create its database {path} ({exc.strerror}); "
            "set AGENTGUARD_HOME to a writable folder."
        ) from None


def _corrupt(path: Path, exc: Exception | None) -> StoreError:
    detail = f" ({exc})" if exc else ""
    return StoreError(
        f"The agentguard database {path} is damaged or not a database{detail}; "
        f"move it aside (mv {path} {path}.bad) and agentguard will start a new one."
    )
