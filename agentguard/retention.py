"""Retention: keep the shadow git stores bounded without ever touching the user's repository.

`collect()` walks every shadow store under `$AGENTGUARD_HOME/shadow/`, decides which runs lose
their snapshots (`RetentionPolicy`), and makes their objects really go away.

Why deleting a run's refs is not enough: every snapshot's parent is the store's previous head
(`refs/agentguard/head`), so the head's history reaches every commit ever made, and a kept
run's checkpoints reach every older run's. gc therefore cuts that history where it enters a
pruned run, with git's own *shallow* mechanism (`repo.git/shallow` lists commits whose parents
git must treat as absent). Nothing is rewritten: every kept commit keeps its SHA, so the SHAs
recorded in the store (steps.checkpoint, snapshots.commit_sha, events) stay valid, the head
stays where it is, and the private index keeps its blobs (git's repack and prune keep what the
index references), so the next snapshot still costs O(changed files).

A commit of a kept run that only a pruned commit led to (e.g. a drift snapshot of a run that
was resumed after another run) gets a ref of its own, `refs/agentguard/runs/<run>/kept/<sha>`.

gc works on the bare repositories alone, with the same scrubbed git environment snapshots use
(no GIT_WORK_TREE at all), under the store's lock file, so it never reads or writes the
project folder or its `.git`, and it also handles stores whose project folder is gone.

On a store shared by a fleet (PostgreSQL), the snapshot rows describe every machine's shadow
stores but gc sees only this machine's (those under its own AGENTGUARD_HOME): a row whose
commit is not here may be another machine's, so gc marks pruned only the rows whose commits it
saw here and removed, never rows merely absent from this machine.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from agentguard.errors import SnapshotError
from agentguard.home import project_key
from agentguard.shadow.bare import BareGit
from agentguard.snapshots import HEAD_REF
from agentguard.store import Store

try:  # pragma: no cover - Windows has no fcntl
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_POLICY",
    "KEPT_REF",
    "PROTECTED_STATUSES",
    "GcReport",
    "RetentionPolicy",
    "StoreGc",
    "collect",
    "format_bytes",
    "pruned_message",
]

log = logging.getLogger("agentguard")

PROTECTED_STATUSES = frozenset({"running", "waiting"})  # may still be resumed: never pruned
RUNS_PREFIX = "refs/agentguard/runs/"
KEPT_REF = RUNS_PREFIX + "{run}/kept/{commit}"
DAY_S = 86_400.0
_CHUNK = 500  # SQLite host parameters per statement


@dataclass(frozen=True)
class RetentionPolicy:
    """Which runs keep their working-tree snapshots.

    Runs that are `running` or `waiting` are never pruned, whatever the policy says.
    """

    max_age_days: float | None = 30.0  # runs last updated longer ago than this lose their snapshots
    keep_runs: int | None = 50  # per project: the newest N runs always keep theirs (wins over age)
    max_bytes: int | None = None  # per shadow store: then drop oldest runs' snapshots until it fits

    def __post_init__(self) -> None:
        if self.max_age_days is not None and not self.max_age_days >= 0:
            raise ValueError(f"max_age_days must be >= 0 or None, not {self.max_age_days!r}")
        if self.keep_runs is not None and self.keep_runs < 0:
            raise ValueError(f"keep_runs must be >= 0 or None, not {self.keep_runs!r}")
        if self.max_bytes is not None and self.max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0 or None, not {self.max_bytes!r}")


DEFAULT_POLICY = RetentionPolicy()


@dataclass(frozen=True)
class StoreGc:
    """What gc did (or, in a dry run, would do) to one project's shadow store."""

    key: str  # the store's folder name under shadow/ (home.project_key of the project)
    path: Path
    project: str | None  # the project folder its runs name, when the store knows it
    project_exists: bool
    runs_pruned: tuple[str, ...]
    refs_deleted: int
    snapshots_pruned: int  # snapshot rows marked pruned (in a dry run: that would be)
    bytes_before: int
    bytes_after: int  # in a dry run: an estimate
    over_budget: bool = False  # still above max_bytes: what is left is protected
    error: str | None = None

    @property
    def freed(self) -> int:
        return max(self.bytes_before - self.bytes_after, 0)


@dataclass(frozen=True)
class GcReport:
    """The outcome of one `collect()`; `summary()` says it in one line."""

    projects: int  # shadow stores examined
    runs_pruned: list[str]
    refs_deleted: int
    bytes_before: int
    bytes_after: int  # in a dry run: an estimate of the size after a real gc
    dry_run: bool
    snapshots_pruned: int = 0
    stores: tuple[StoreGc, ...] = ()
    max_bytes: int | None = None

    @property
    def freed(self) -> int:
        return sum(s.freed for s in self.stores)

    @property
    def projects_pruned(self) -> int:
        return sum(1 for s in self.stores if s.runs_pruned or s.snapshots_pruned)

    @property
    def over_budget(self) -> tuple[StoreGc, ...]:
        return tuple(s for s in self.stores if s.over_budget)

    @property
    def errors(self) -> tuple[str, ...]:
        return tuple(f"{s.project or s.path}: {s.error}" for s in self.stores if s.error)

    def summary(self) -> str:
        """E.g. `freed 12.3 MB from 3 projects, 41 runs (1,204 refs); shadow stores now 45.6 MB
        across 5 projects`; a dry run says `would free about …` and that nothing changed."""
        total = f"{format_bytes(self.bytes_after)} across {_plural(self.projects, 'project')}"
        if self.projects == 0:
            text = "no shadow stores to collect"
        elif not self.runs_pruned and not self.snapshots_pruned:
            text = f"nothing to prune; shadow stores hold {total}"
            if self.dry_run:
                text = f"dry run: {text}"
        else:
            what = (
                f"{format_bytes(self.freed)} from {_plural(self.projects_pruned, 'project')}, "
                f"{_plural(len(self.runs_pruned), 'run')} "
                f"({_plural(self.refs_deleted, 'ref')}, "
                f"{_plural(self.snapshots_pruned, 'snapshot')})"
            )
            if self.dry_run:
                text = (
                    f"dry run: would free about {what}; shadow stores would hold about {total}; "
                    "nothing was changed"
                )
            else:
                text = f"freed {what}; shadow stores now {total}"
        over = self.over_budget
        if over and self.max_bytes is not None:
            text += (
                f"; {_plural(len(over), 'project')} "
                f"{'would still be' if self.dry_run else 'still'} over max_bytes "
                f"({format_bytes(self.max_bytes)}): the rest is protected "
                "(running/waiting runs and the newest keep_runs runs)"
            )
        for error in self.errors:
            text += f"\nnot collected: {error}"
        return text


def pruned_message(pruned_at: float) -> str:
    """What to show for a snapshot row whose commit gc removed."""
    day = datetime.fromtimestamp(pruned_at).astimezone().strftime("%Y-%m-%d")
    return f"snapshot pruned by gc on {day}"


def format_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def collect(
    store: Store,
    policy: RetentionPolicy = DEFAULT_POLICY,
    *,
    dry_run: bool = False,
    now: float | None = None,
) -> GcReport:
    """Prune snapshots of runs the policy lets go, in every shadow store under `store.home`.

    A dry run computes the same decisions and estimates the bytes a real gc would free
    (from git's on-disk object sizes) without changing a file or a row.
    """
    now = time.time() if now is None else now
    shadow_root = store.home / "shadow"
    shared = not isinstance(store, Store)  # a fleet's store: rows of other machines' stores too
    runs = _load_runs(store)
    rows = store.query(
        "select commit_sha, run_id, project from snapshots where pruned_at is null "
        "and commit_sha is not null"
    )
    keys = _KeyCache()
    runs_by_key: dict[str, list[dict[str, Any]]] = {}
    for run in runs.values():
        runs_by_key.setdefault(keys(run["project"]), []).append(run)
    rows_by_key: dict[str, list[tuple[str, str | None]]] = {}
    for row in rows:
        run = runs.get(row["run_id"]) if row["run_id"] else None
        project = run["project"] if run else row["project"]
        rows_by_key.setdefault(keys(project), []).append((row["commit_sha"], row["run_id"]))

    results: list[StoreGc] = []
    for store_dir in _shadow_stores(shadow_root):
        key = store_dir.name
        known_runs = runs_by_key.get(key, [])
        projects = sorted({r["project"] for r in known_runs if r["project"]})
        project = projects[-1] if len(projects) == 1 else None
        collector = _StoreCollector(
            store_dir,
            known_runs={r["id"]: r for r in known_runs},
            rows=rows_by_key.get(key, []),
            policy=policy,
            now=now,
            dry_run=dry_run,
            shared=shared,
        )
        try:
            outcome = collector.collect()
        except (SnapshotError, OSError) as exc:
            log.warning("agentguard gc: %s: %s", store_dir, exc)
            size = _dir_size(store_dir)
            failed = StoreGc(key, store_dir, project, _is_dir(project), (), 0, 0, size, size)
            results.append(replace(failed, error=str(exc)))
            continue
        marked = 0
        if not dry_run:
            marked = _mark_pruned(store, outcome.missing_rows, now)
            for run_id in outcome.runs_pruned:
                if run_id in runs:
                    store.insert_event(
                        run_id,
                        "snapshots_pruned",
                        {
                            "store": str(store_dir),
                            "host": socket.gethostname(),
                            "policy": asdict(policy),
                        },
                        at=now,
                        step_id=None,
                    )
        results.append(
            StoreGc(
                key=key,
                path=store_dir,
                project=project,
                project_exists=_is_dir(project),
                runs_pruned=outcome.runs_pruned,
                refs_deleted=outcome.refs_deleted,
                snapshots_pruned=len(outcome.missing_rows) if dry_run else marked,
                bytes_before=outcome.bytes_before,
                bytes_after=outcome.bytes_after,
                over_budget=outcome.over_budget,
            )
        )
    return GcReport(
        projects=len(results),
        runs_pruned=[run for s in results for run in s.runs_pruned],
        refs_deleted=sum(s.refs_deleted for s in results),
        bytes_before=sum(s.bytes_before for s in results),
        bytes_after=sum(s.bytes_after for s in results),
        dry_run=dry_run,
        snapshots_pruned=sum(s.snapshots_pruned for s in results),
        stores=tuple(results),
        max_bytes=policy.max_bytes,
    )


# -- one shadow store ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Outcome:
    runs_pruned: tuple[str, ...]
    refs_deleted: int
    missing_rows: tuple[str, ...]  # commits of unpruned rows that are (or would be) gone
    bytes_before: int
    bytes_after: int
    over_budget: bool


@dataclass
class _State:
    """The shadow repository as git sees it now."""

    refs: dict[str, str]  # refname -> commit
    parents: dict[str, tuple[str, ...]]  # every commit reachable from a ref, shallow-aware
    times: dict[str, int]  # committer time of each of them
    shallow: frozenset[str]
    bytes: int  # all files under the store folder
    object_bytes: int  # files under repo.git/objects


@dataclass
class _Plan:
    """What pruning a set of runs means for one store's refs and history."""

    pruned: frozenset[str]
    keep: set[str]  # commits that stay
    shallow: set[str]  # commits whose parents git must treat as absent
    delete_refs: list[str]
    new_refs: dict[str, str]  # refname -> commit (kept commits only a pruned one led to)
    changes: bool


@dataclass
class _Run:
    id: str
    status: str | None
    updated_at: float
    protected: bool = False


@dataclass
class _StoreCollector:
    store_dir: Path
    known_runs: dict[str, dict[str, Any]]
    rows: list[tuple[str, str | None]]  # (commit, run id) of snapshot rows not yet pruned
    policy: RetentionPolicy
    now: float
    dry_run: bool
    shared: bool = False  # the rows may name other machines' commits: see the module
    git: BareGit = field(init=False)

    def __post_init__(self) -> None:
        self.git = BareGit(self.store_dir, purpose="run gc")

    def collect(self) -> _Outcome:
        budget = self.policy.max_bytes
        with self._locked():
            state = self._inspect()
            before = state.bytes
            compact = budget is not None and before > budget  # repack even if nothing is pruned
            owners = self._owners(state)
            runs = self._live_runs(state, owners)
            pruned, extra = self._choose(runs)
            plan = self._fit(state, owners, pruned, extra, compact)
            refs_deleted = len(plan.delete_refs)
            dropped = len(plan.pruned - pruned)
            commits = [c for c, _ in self.rows]
            # Rows whose commits are not here already: on this machine's own store, pruned
            # before (or lost) and marked now; on a shared store, perhaps another machine's.
            absent = set(self._missing(commits)) if self.dry_run or self.shared else set()
            if self.dry_run:
                after = self._estimate(state, plan, compact)
                gone = set() if self.shared else absent
                reachable = state.parents.keys()
                missing = [
                    c for c in commits if c not in plan.keep and (c in reachable or c in gone)
                ]
            else:
                if plan.changes or compact:
                    self._apply(plan)
                state = self._inspect()
                after = state.bytes
                # The measured size can exceed the estimate: then drop more, re-estimating
                # from the store as it is now (packed, so git's sizes are close to the truth).
                while budget is not None and after > budget and dropped < len(extra):
                    rest = extra[dropped:]
                    owners = self._owners(state)
                    more = self._fit(state, owners, frozenset(), rest, True, at_least=1)
                    self._apply(more)
                    refs_deleted += len(more.delete_refs)
                    dropped += len(more.pruned)
                    state = self._inspect()
                    after = state.bytes
                missing = self._missing(commits)
                if self.shared:
                    missing = [c for c in missing if c not in absent]
            pruned |= {r.id for r in extra[:dropped]}
        gone = set(missing)
        pruned |= {run for commit, run in self.rows if run and commit in gone}
        return _Outcome(
            runs_pruned=tuple(r.id for r in runs if r.id in pruned)
            + tuple(sorted(pruned - {r.id for r in runs})),
            refs_deleted=refs_deleted,
            missing_rows=tuple(dict.fromkeys(missing)),
            bytes_before=before,
            bytes_after=after,
            over_budget=budget is not None and after > budget,
        )

    def _fit(
        self,
        state: _State,
        owners: dict[str, set[str]],
        pruned: frozenset[str],
        extra: Sequence[_Run],
        compact: bool,
        *,
        at_least: int = 0,
    ) -> _Plan:
        """The plan pruning `pruned`, plus as few of `extra` (oldest first) as max_bytes needs.

        Dropping more runs never keeps more objects, so a binary search over how many is enough.
        """

        def plan_for(count: int) -> _Plan:
            return self._plan(state, owners, pruned | {r.id for r in extra[:count]})

        budget = self.policy.max_bytes
        if budget is None or not extra:
            return plan_for(0)
        lo, hi = min(at_least, len(extra)), len(extra)
        while lo < hi:
            mid = (lo + hi) // 2
            if self._estimate(state, plan_for(mid), compact) <= budget:
                hi = mid
            else:
                lo = mid + 1
        return plan_for(lo)

    # -- deciding -----------------------------------------------------------------------------

    def _owners(self, state: _State) -> dict[str, set[str]]:
        """Which runs each reachable commit belongs to (from run refs and snapshot rows)."""
        owners: dict[str, set[str]] = {}
        for name, commit in state.refs.items():
            run = _run_of_ref(name)
            if run is not None:
                owners.setdefault(commit, set()).add(run)
        for commit, run in self.rows:
            if run and commit in state.parents:
                owners.setdefault(commit, set()).add(run)
        return owners

    def _live_runs(self, state: _State, owners: dict[str, set[str]]) -> list[_Run]:
        """Runs that still have snapshots in this store, newest first."""
        tips: dict[str, int] = {}
        for commit, runs in owners.items():
            for run in runs:
                tips[run] = max(tips.get(run, 0), state.times.get(commit, 0))
        live: list[_Run] = []
        for run_id, newest_commit in tips.items():
            row = self.known_runs.get(run_id)
            if row is None:  # refs without a row (the database was replaced): age by commit time
                live.append(_Run(run_id, None, float(newest_commit)))
                continue
            updated = row["updated_at"] if row["updated_at"] is not None else row["created_at"]
            live.append(_Run(run_id, row["status"], float(updated or newest_commit or self.now)))
        live.sort(key=lambda r: (r.updated_at, r.id), reverse=True)
        keep = self.policy.keep_runs
        for rank, run in enumerate(live):
            run.protected = run.status in PROTECTED_STATUSES or (keep is not None and rank < keep)
        return live

    def _choose(self, runs: list[_Run]) -> tuple[frozenset[str], list[_Run]]:
        """Runs pruned by age, and the others max_bytes may still drop (oldest first)."""
        max_age = self.policy.max_age_days
        cutoff = -math.inf if max_age is None else self.now - max_age * DAY_S
        aged = frozenset(r.id for r in runs if not r.protected and r.updated_at < cutoff)
        extra = [r for r in reversed(runs) if not r.protected and r.id not in aged]
        return aged, extra

    def _plan(self, state: _State, owners: dict[str, set[str]], pruned: frozenset[str]) -> _Plan:
        tips = {c for name, c in state.refs.items() if _run_of_ref(name) not in pruned}
        kept_owner = {
            c: min(runs - pruned)
            for c, runs in owners.items()
            if c in state.parents and runs - pruned
        }
        dropped = {c for c, runs in owners.items() if runs <= pruned} - tips
        seeds = (tips & state.parents.keys()) | kept_owner.keys()
        keep = _closure(seeds, state.parents, blocked=dropped)
        shallow = {c for c in keep if any(p not in keep for p in state.parents[c])}
        shallow |= state.shallow & keep
        reach = _closure(tips & keep, state.parents, blocked=set(), stop=shallow)
        new_refs = {
            KEPT_REF.format(run=kept_owner[c], commit=c): c
            for c in sorted(kept_owner.keys() - reach)
        }
        delete = sorted(n for n in state.refs if _run_of_ref(n) in pruned)
        changes = bool(delete or new_refs or shallow != state.shallow)
        return _Plan(pruned, keep, shallow, delete, new_refs, changes)

    def _estimate(self, state: _State, plan: _Plan, compact: bool) -> int:
        """The store's size after applying `plan` and repacking, from git's object sizes."""
        if not plan.changes and not compact:
            return state.bytes
        kept = self.git.run(
            ["rev-list", "--disk-usage", "--objects", "--no-walk", "--indexed-objects", "--stdin"],
            stdin="".join(f"{c}\n" for c in sorted(plan.keep)).encode(),
        )
        return max(state.bytes - state.object_bytes + int(kept.strip() or 0), 0)

    # -- acting -------------------------------------------------------------------------------

    def _apply(self, plan: _Plan) -> None:
        """Cut the history, drop the refs, then let git delete what nothing reaches any more.

        The order keeps the repository consistent if gc is killed at any point: new refs first,
        then the shallow list, then the deletions, then repack and prune.
        """
        git_dir = self.git.git_dir
        for stale in ("shallow.lock", "packed-refs.lock"):  # we hold the store's lock
            (git_dir / stale).unlink(missing_ok=True)
        if plan.new_refs:
            lines = "".join(f"create {name} {c}\n" for name, c in plan.new_refs.items())
            self.git.run(["update-ref", "--stdin"], stdin=lines.encode())
        shallow = git_dir / "shallow"
        if plan.shallow:
            lock = git_dir / "shallow.lock"
            lock.write_text("".join(f"{c}\n" for c in sorted(plan.shallow)), encoding="ascii")
            os.replace(lock, shallow)
        else:
            shallow.unlink(missing_ok=True)
        if plan.delete_refs:
            for run in plan.pruned:  # a killed snapshot may have left a ref's lock file
                for stale in (git_dir / RUNS_PREFIX / run).rglob("*.lock"):
                    stale.unlink(missing_ok=True)
            lines = "".join(f"delete {name}\n" for name in plan.delete_refs)
            self.git.run(["update-ref", "--stdin"], stdin=lines.encode())
        self.git.run(["reflog", "expire", "--expire=now", "--expire-unreachable=now", "--all"])
        self.git.run(["-c", "repack.writeBitmaps=false", "repack", "-a", "-d", "-q"])
        self.git.run(["prune", "--expire=now"])

    def _inspect(self) -> _State:
        refs: dict[str, str] = {}
        listing = self.git.run(["for-each-ref", "--format=%(objectname) %(refname)"])
        for line in listing.decode().splitlines():
            commit, _, name = line.partition(" ")
            if name:
                refs[name] = commit
        parents: dict[str, tuple[str, ...]] = {}
        times: dict[str, int] = {}
        if refs:
            out = self.git.run(["rev-list", "--all", "--parents", "--timestamp"])
            for line in out.decode().splitlines():
                stamp, commit, *rest = line.split()
                parents[commit] = tuple(rest)
                times[commit] = int(stamp)
        try:
            listed = (self.git.git_dir / "shallow").read_text(encoding="ascii").split()
        except FileNotFoundError:
            listed = []
        return _State(
            refs=refs,
            parents=parents,
            times=times,
            shallow=frozenset(listed),
            bytes=_dir_size(self.store_dir),
            object_bytes=_dir_size(self.git.git_dir / "objects"),
        )

    def _missing(self, commits: Sequence[str]) -> list[str]:
        if not commits:
            return []
        out = self.git.run(
            ["cat-file", "--batch-check=%(objectname)"], stdin="".join(f"{c}\n" for c in commits)
        )
        return [line.split()[0] for line in out.decode().splitlines() if line.endswith(" missing")]

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The lock every snapshot and restore of this store takes (see snapshots.ShadowRepo).

        A prune while a snapshot is between writing its objects and its ref would delete them.
        """
        path = self.store_dir / "lock"
        if self.dry_run:
            try:  # a dry run creates nothing, not even the lock file
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                yield
                return
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


# -- helpers ---------------------------------------------------------------------------------


def _load_runs(store: Store) -> dict[str, dict[str, Any]]:
    rows = store.query("select id, project, status, created_at, updated_at from runs")
    return {row["id"]: row for row in rows}


class _KeyCache:
    """project path -> shadow store key, computed the way Guard names the store."""

    def __init__(self) -> None:
        self._keys: dict[str | None, str] = {}

    def __call__(self, project: str | None) -> str:
        if project not in self._keys:
            self._keys[project] = project_key(Path(project)) if project else ""
        return self._keys[project]


def _shadow_stores(root: Path) -> list[Path]:
    try:
        entries = sorted(root.iterdir())
    except FileNotFoundError:
        return []
    return [p for p in entries if (p / "repo.git" / "HEAD").is_file()]


def _run_of_ref(name: str) -> str | None:
    if not name.startswith(RUNS_PREFIX) or name == HEAD_REF:
        return None
    run, _, rest = name[len(RUNS_PREFIX) :].partition("/")
    return run if run and rest else None


def _closure(
    seeds: Iterable[str],
    parents: dict[str, tuple[str, ...]],
    *,
    blocked: set[str],
    stop: set[str] | None = None,
) -> set[str]:
    """Commits reachable from `seeds` without entering `blocked` or going past `stop`."""
    seen = set(seeds)
    todo = list(seen)
    while todo:
        commit = todo.pop()
        if stop is not None and commit in stop:
            continue
        for parent in parents.get(commit, ()):
            if parent not in seen and parent not in blocked and parent in parents:
                seen.add(parent)
                todo.append(parent)
    return seen


def _mark_pruned(store: Store, commits: Sequence[str], now: float) -> int:
    marked = 0
    with store.write() as db:
        for start in range(0, len(commits), _CHUNK):
            chunk = list(commits[start : start + _CHUNK])
            cursor = db.conn.execute(
                f"update snapshots set pruned_at = ? where pruned_at is null "
                f"and commit_sha in ({', '.join('?' * len(chunk))})",
                [now, *chunk],
            )
            marked += cursor.rowcount
    return marked


def _dir_size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


def _is_dir(project: str | None) -> bool:
    return bool(project) and Path(project).is_dir()


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"
