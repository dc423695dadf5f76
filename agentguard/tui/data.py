"""Read-only queries over the store, returning plain dataclasses (no widgets, no Textual).

Two readers, one per engine, answer the same questions (`Reader`); the app polls
`data_version()` and reloads only when it moved. Every load runs inside one read transaction,
so a view never mixes two moments of the store, and none of its queries can write.

- SQLite (`StoreReader`): the process's one connection to the file, with `query_only` on (the
  file is in WAL mode, so reading never blocks the agents writing to it). `PRAGMA data_version`
  changes exactly when another connection commits, and the connection's `total_changes` when
  this process commits.
- PostgreSQL (`PostgresReader`, fleet mode): a connection of its own, each load a repeatable-read
  read-only transaction. The version is the count of the store's change announcements (every
  machine's writers NOTIFY, migration m007), heard by a LISTEN connection: an idle poll asks the
  server nothing.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from agentguard.errors import StoreError
from agentguard.home import home_dir, project_key
from agentguard.metrics import Metrics, compute, count_where
from agentguard.store import Store
from agentguard.user_repo import GitState, from_row

if TYPE_CHECKING:
    from agentguard.store_pg import PostgresStore

ACTIVE = ("running", "waiting")
# Substituted steps, counted alike on both engines (PostgreSQL's sum of a bigint is numeric).
SUBSTITUTED = count_where("substituted != 0")
_SEP = "\x1f"


@dataclass(frozen=True)
class RunSummary:
    """One row of the runs list."""

    id: str
    name: str
    project: str
    status: str  # as shown: a `running` run whose process is gone shows as `interrupted`
    stored_status: str
    created_at: float | None
    updated_at: float | None
    ended_at: float | None
    next_attempt_at: float | None
    last_error: str | None
    primary_model: str | None
    served_models: tuple[str, ...]
    steps: int
    substitutions: int
    pid: int | None = None
    hostname: str | None = None
    policy: str | None = None

    @property
    def project_name(self) -> str:
        return os.path.basename(self.project.rstrip("/")) or self.project


@dataclass(frozen=True)
class RunsPage:
    """The runs the list shows: every run created since `since`, plus every active run."""

    runs: tuple[RunSummary, ...]
    total: int  # runs in the store
    by_status: dict[str, int]
    since: float | None  # created_at of the oldest run in the window


@dataclass(frozen=True)
class AttemptView:
    id: int
    number: int
    provider: str | None
    model: str | None
    started_at: float | None
    slept_before_ms: float | None
    latency_ms: float | None
    status_code: int | None
    error_type: str | None
    error_code: str | None
    request_id: str | None
    outcome: str | None
    message: str | None


@dataclass(frozen=True)
class StepView:
    id: int
    number: int
    status: str
    requested_provider: str | None
    requested_model: str | None
    served_provider: str | None
    served_model: str | None
    substituted: bool
    reason: str | None
    checkpoint: str | None
    checkpoint_pruned_at: float | None
    started_at: float | None
    ended_at: float | None
    latency_ms: float | None
    error: str | None
    attempts: tuple[AttemptView, ...] = ()

    @property
    def slept_ms(self) -> float:
        return sum(a.slept_before_ms or 0.0 for a in self.attempts)


@dataclass(frozen=True)
class RunDetail:
    run: RunSummary
    steps: tuple[StepView, ...]
    shadow_dir: Path  # where the run's checkpoints live
    git: GitState | None = None  # the user's repository at the run's latest checkpoint
    elsewhere: str | None = None  # the machine that ran it, when not this one (fleet mode)

    @property
    def substituted(self) -> tuple[StepView, ...]:
        return tuple(s for s in self.steps if s.substituted)

    def step(self, step_id: int) -> StepView | None:
        return next((s for s in self.steps if s.id == step_id), None)


@dataclass(frozen=True)
class MetricsView:
    """What the metrics panel shows: the figures and the window they cover."""

    window: str
    metrics: Metrics


def is_postgres_locator(locator: str | os.PathLike[str]) -> bool:
    return str(locator).startswith(("postgresql://", "postgres://"))


def open_reader(
    locator: str | os.PathLike[str], *, home: str | os.PathLike[str] | None = None
) -> Reader:
    """The reader for a SQLite file, or for a postgresql:// URL (fleet mode; `home` is this
    machine's AGENTGUARD_HOME, where its shadow git store lives)."""
    if is_postgres_locator(locator):
        return PostgresReader(str(locator), home=home)
    return StoreReader(locator)


class Reader(ABC):
    """What the watch app asks of a store, whichever the engine: each engine supplies the
    primitives (a version, a read transaction, rows); the questions are asked the same way,
    in SQL both engines read alike."""

    fleet = False  # one store for many machines: each run's host is worth showing
    _host: str  # this machine

    @property
    @abstractmethod
    def home(self) -> Path:
        """This machine's AGENTGUARD_HOME, where the shadow git store of its runs lives."""

    @property
    @abstractmethod
    def display(self) -> str:
        """The store as messages name it (a path, or a URL without its password)."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def data_version(self) -> int:
        """Changes whenever a commit has happened since the last call."""

    @abstractmethod
    def query(
        self, sql: str, params: Sequence[Any] | dict[str, Any] = ()
    ) -> list[dict[str, Any]]: ...

    @abstractmethod
    def reading(self) -> AbstractContextManager[None]:
        """One read transaction: every query inside sees the same moment of the store, and
        none of them can write."""

    @abstractmethod
    def open_store(self) -> Store | PostgresStore:
        """A writable handle on the same store, for one action (restore, accept): the app's
        own reads never write."""

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Any]:
        """Rows that index by column name."""
        return self.query(sql, params)

    # -- runs ---------------------------------------------------------------------------------

    def runs_page(self, *, limit: int = 500, since: float | None = None) -> RunsPage:
        """The latest `limit` runs (or every run created since `since`) and all active runs."""
        with self.reading():
            if since is None:
                rows = self._rows(
                    "select created_at from runs order by created_at desc, id desc limit 1 "
                    "offset ?",
                    [max(limit - 1, 0)],
                )
                since = rows[0]["created_at"] if rows else None
            if since is None:
                picked = "select id from runs"
                params: list[Any] = []
            else:
                picked = "select id from runs where created_at >= ? or status in (?, ?)"
                params = [since, *ACTIVE]
            runs = self._rows(
                f"select * from runs where id in ({picked}) order by created_at, id", params
            )
            counts = {
                r["run_id"]: r
                for r in self._rows(
                    f"""select run_id, count(*) as steps, {SUBSTITUTED} as subs,
                               (select s2.requested_model from steps s2
                                where s2.run_id = s.run_id order by s2.number limit 1) as first
                        from steps s where run_id in ({picked}) group by run_id""",
                    params,
                )
            }
            served: dict[str, list[str]] = {}
            for r in self._rows(
                f"""select run_id, served_model from steps
                    where run_id in ({picked}) and served_model is not null
                    group by run_id, served_model order by run_id, min(number)""",
                params,
            ):
                served.setdefault(r["run_id"], []).append(r["served_model"])
            by_status = {
                r["status"]: r["n"]
                for r in self._rows("select status, count(*) as n from runs group by status")
            }
        summaries = tuple(
            self._summary(run, counts.get(run["id"]), served.get(run["id"], [])) for run in runs
        )
        return RunsPage(summaries, sum(by_status.values()), by_status, since)

    def _summary(self, run: Any, counts: Any, served: list[str]) -> RunSummary:
        """A run row (dict or sqlite3.Row) with its step counts → RunSummary."""
        status = run["status"] or "running"
        if status == "running" and self._process_gone(run):
            status = "interrupted"
        return RunSummary(
            id=run["id"],
            name=run["name"] or run["id"],
            project=run["project"] or "",
            status=status,
            stored_status=run["status"] or "",
            created_at=run["created_at"],
            updated_at=run["updated_at"],
            ended_at=run["ended_at"],
            next_attempt_at=run["next_attempt_at"],
            last_error=run["last_error"],
            primary_model=run["primary_model"] or (counts["first"] if counts else None),
            served_models=tuple(served),
            steps=counts["steps"] if counts else 0,
            substitutions=counts["subs"] if counts else 0,
            pid=run["pid"],
            hostname=run["hostname"],
            policy=run["policy"],
        )

    def _process_gone(self, run: Any) -> bool:
        """A `running` run on this machine whose process has died (shown as interrupted)."""
        pid = run["pid"]
        if not pid or run["hostname"] != self._host:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except (PermissionError, OSError):
            return False
        return False

    def run_detail(self, run_id: str) -> RunDetail | None:
        """A run with its steps, each with its attempts and checkpoint."""
        with self.reading():
            page = self.query("select * from runs where id = ?", [run_id])
            if not page:
                return None
            steps = self.query(
                """select id, number, status, requested_provider, requested_model,
                          served_provider, served_model, substituted, reason, checkpoint,
                          started_at, ended_at, latency_ms, error
                   from steps where run_id = ? order by number""",
                [run_id],
            )
            attempts: dict[int, list[AttemptView]] = {}
            for a in self.query(
                """select id, step_id, number, provider, model, started_at, slept_before_ms,
                          latency_ms, status_code, error_type, error_code, request_id, outcome,
                          message
                   from attempts
                   where step_id in (select id from steps where run_id = ?)
                   order by step_id, number, id""",
                [run_id],
            ):
                step_id = a.pop("step_id")
                attempts.setdefault(step_id, []).append(AttemptView(**a))
            pruned = {
                r["commit_sha"]: r["pruned_at"]
                for r in self.query(
                    "select commit_sha, pruned_at from snapshots "
                    "where run_id = ? and pruned_at is not null",
                    [run_id],
                )
            }
        run = page[0]
        served = []
        for s in steps:
            if s["served_model"] and s["served_model"] not in served:
                served.append(s["served_model"])
        summary = self._summary(
            run,
            {
                "steps": len(steps),
                "subs": sum(bool(s["substituted"]) for s in steps),
                "first": steps[0]["requested_model"] if steps else None,
            },
            served,
        )
        cut = summary.status == "interrupted"  # nothing of a dead process is still in flight
        views = tuple(
            StepView(
                **{
                    **s,
                    "substituted": bool(s["substituted"]),
                    "status": _settled(s["status"] or "pending", cut),
                },
                checkpoint_pruned_at=pruned.get(s["checkpoint"]) if s["checkpoint"] else None,
                attempts=tuple(
                    replace(a, outcome=_settled(a.outcome, cut)) for a in attempts.get(s["id"], ())
                ),
            )
            for s in steps
        )
        shadow = self.home / "shadow" / project_key(Path(run["project"] or "."))
        host = run["hostname"]
        elsewhere = host if self.fleet and host and host != self._host else None
        return RunDetail(summary, views, shadow, git=self._git_state(run_id), elsewhere=elsewhere)

    def _git_state(self, run_id: str) -> GitState | None:
        rows = self.query(
            "select git_branch, git_head, git_dirty from snapshots where run_id = ? "
            "and kind = 'checkpoint' and git_dirty is not null order by created_at desc limit 1",
            [run_id],
        )
        return from_row(rows[0] if rows else None)

    # -- metrics ------------------------------------------------------------------------------

    def metrics(self, *, since: float | None, until: float, window: str) -> MetricsView:
        """agentguard.metrics.compute over this read-only connection."""
        with self.reading():
            figures = compute(cast(Store, self), since=since, until=until)
        return MetricsView(window, figures)


class StoreReader(Reader):
    """Read-only queries over the process's one connection to the store (see `Store`),
    shared by the app's worker threads; every query runs with `query_only` on."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(
                f"No agentguard database at {self.path}; run an agent with agentguard.wrap() "
                "first, or pass the right file with --db."
            )
        self._store = Store(self.path)
        self._conn = self._store.db.conn
        self._lock = self._store._lock
        self._host = socket.gethostname()

    @property
    def home(self) -> Path:
        return self.path.parent

    @property
    def display(self) -> str:
        return str(self.path)

    def close(self) -> None:
        self._store.close()

    def open_store(self) -> Store:
        """It shares the process's one connection to the file (see `Store`)."""
        return Store(self.path)

    # -- primitives ---------------------------------------------------------------------------

    def data_version(self) -> int:
        """Changes whenever a commit has happened since the last call: another connection's
        (`PRAGMA data_version`) or this process's own on the shared connection."""
        with self._lock:
            (version,) = self._conn.execute("PRAGMA data_version").fetchone()
            return (int(version) << 64) + self._conn.total_changes

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        with self.reading():
            cursor = self._conn.execute(sql, params)
            names = [d[0] for d in cursor.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cursor]

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Rows as sqlite3.Row (no dict per row: the runs page reads hundreds every poll)."""
        with self.reading():
            cursor = self._conn.cursor()
            cursor.row_factory = sqlite3.Row
            return cursor.execute(sql, params).fetchall()

    @contextmanager
    def reading(self) -> Iterator[None]:
        """One read transaction: every query inside sees the same moment of the store, and
        none of them can write."""
        with self._lock:
            if self._conn.in_transaction:
                yield
                return
            self._conn.execute("PRAGMA query_only = 1")
            try:
                self._conn.execute("BEGIN")
                try:
                    yield
                finally:
                    self._conn.execute("COMMIT")
            finally:
                self._conn.execute("PRAGMA query_only = 0")


class PostgresReader(Reader):
    """Read-only queries over a connection of its own to the fleet's PostgreSQL store, shared
    by the app's worker threads (one at a time); each load is one repeatable-read, read-only
    transaction. Its version is the count of the store's change announcements, so an idle
    poll costs the server nothing."""

    fleet = True

    def __init__(self, url: str, *, home: str | os.PathLike[str] | None = None) -> None:
        from agentguard.store_pg import masked, psycopg
        from agentguard.store_pg_changes import CHANGES_CHANNEL, Listener
        from agentguard.store_pg_setup import NO_PSYCOPG

        if psycopg is None:
            raise StoreError(NO_PSYCOPG)
        self.url = url
        self.path = masked(url)
        self._home = home_dir(home)
        self._host = socket.gethostname()
        self._lock = threading.RLock()
        self._conn: Any = None
        self._in_transaction = False
        with self._errors():
            (schema,) = self._connection().execute("select current_schema()").fetchone()
        self._schema = schema
        # Started before the first load, so nothing committed after that load goes unheard.
        self._changes = Listener(self._listen, CHANGES_CHANNEL, payload=schema)

    @property
    def home(self) -> Path:
        return self._home

    @property
    def display(self) -> str:
        return self.path

    def close(self) -> None:
        self._changes.close()
        with self._lock:
            if self._conn is not None:
                self._conn.close()

    def open_store(self) -> PostgresStore:
        from agentguard.store_pg import PostgresStore

        return PostgresStore(self.url, self._home)

    # -- primitives ---------------------------------------------------------------------------

    def data_version(self) -> int:
        """The announcements heard so far: every commit to the run log, from any machine
        (this process's own included), and each reconnection of the listener."""
        return self._changes.mark()

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        from psycopg.rows import dict_row

        from agentguard.store_pg import translate

        text, values = translate(sql, params)
        with self.reading(), self._errors(), self._conn.cursor(row_factory=dict_row) as cur:
            cur.execute(text, values)
            return cur.fetchall() if cur.description else []

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._lock:
            if self._in_transaction:
                yield
                return
            with self._errors(), ExitStack() as stack:
                self._begin(stack)
                self._in_transaction = True
                try:
                    yield
                finally:
                    self._in_transaction = False

    def _begin(self, stack: ExitStack) -> None:
        """BEGIN REPEATABLE READ, READ ONLY (ended with `stack`), on a new connection if the
        server dropped the idle one since the last load (a restart, an idle timeout): such a
        drop costs no failed poll."""
        from agentguard.store_pg import psycopg

        try:
            stack.enter_context(self._connection().transaction())
        except psycopg.OperationalError:
            if self._conn is None or not self._conn.broken:
                raise
            stack.enter_context(self._connection().transaction())

    def _connection(self) -> Any:
        """The reading connection, made again if the server dropped it (a restart)."""
        from agentguard.store_pg import psycopg
        from agentguard.store_pg_setup import connect_options

        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            conn = psycopg.connect(self.url, **connect_options(self.url))
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            self._conn = conn
        return self._conn

    def _listen(self) -> Any:
        """The listener's connection, named so that the schema's writers know someone is
        watching (they announce only then, see migration m007)."""
        from agentguard.store_pg import CONNECT_TIMEOUT_S, psycopg
        from agentguard.store_pg_changes import watcher_application

        return psycopg.connect(
            self.url,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name=watcher_application(self._schema),
        )

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """A lost or refused connection as one sentence; errors of the SQL itself pass."""
        from agentguard.store_pg import describe_connect_error, psycopg

        try:
            yield
        except psycopg.OperationalError as exc:
            if self._conn is not None and not self._conn.broken and not self._conn.closed:
                raise
            raise StoreError(describe_connect_error(self.path, exc, self.url)) from None


def _settled(status: str | None, interrupted: bool) -> str | None:
    """A `pending` row of a run whose process is gone shows as `interrupted`, as
    `mark_interrupted` records it once a writer next opens the store."""
    return "interrupted" if interrupted and status == "pending" else status
