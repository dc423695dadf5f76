"""Read-only queries over the store, returning plain dataclasses (no widgets, no Textual).

The watch app reads through the process's one connection to the store, with `query_only` on
(the file is in WAL mode, so reading never blocks the agents writing to it). `PRAGMA
data_version` changes exactly when another connection commits, and the connection's
`total_changes` when this process commits, so polling both is how the app notices new rows. Every
load runs inside one read transaction, so a view never mixes two moments of the store.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from agentguard.errors import StoreError
from agentguard.home import project_key
from agentguard.metrics import Metrics, compute
from agentguard.store import Store
from agentguard.user_repo import GitState, from_row

ACTIVE = ("running", "waiting")
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


class StoreReader:
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

    def close(self) -> None:
        self._store.close()

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
                    f"""select run_id, count(*) as steps, coalesce(sum(substituted), 0) as subs,
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
        return RunDetail(summary, views, shadow, git=self._git_state(run_id))

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


def _settled(status: str | None, interrupted: bool) -> str | None:
    """A `pending` row of a run whose process is gone shows as `interrupted`, as
    `mark_interrupted` records it once a writer next opens the store."""
    return "interrupted" if interrupted and status == "pending" else status
