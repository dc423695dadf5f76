"""Rewind a run's project to one of its snapshots, undoably: the one restore the CLI and the TUI
share (and `resume()` too).

A restore first makes sure no live process still drives the run (`ensure_not_live`), then
commits the tree as it is now to the shadow store (the *backup*), rewrites the tree, and records
the backup as a `backup` snapshot row of the run and in a `restored` event, so that
`agentguard restore RUN --undo` can put it back whoever made the restore.

Step numbers mean one thing everywhere: step N's checkpoint is the tree just *before* step N's
model call, so `restore --step N` brings back the tree step N's call was made on, and "the diff
at step N" is what step N's tools did: checkpoint N → the next checkpoint (for the newest step,
→ the working tree now).

A run's snapshots live in the shadow store of its project folder (`runs.project`). When a run
is resumed in a folder it moved to (`resume(project=NEW)`), its snapshots are copied into the
new folder's store and `runs.project` is updated (with a `project_moved` event), so `diff`,
`restore`, `show`, the TUI and the steps the resumed run goes on with all use one store.

Shadow stores stay on their machine, also in fleet mode (one PostgreSQL store for many
machines): a `restored` event names its host, and an --undo of a restore made on another
machine, whose backup is not here, says where it is instead of calling it pruned.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentguard.errors import AgentGuardError, ProjectError, SnapshotError
from agentguard.home import project_key
from agentguard.resuming import ensure_not_live
from agentguard.shadow.bare import BareGit
from agentguard.snapshots import RestoreResult, ShadowRepo, Snapshot
from agentguard.store import Store, dumps
from agentguard.user_repo import columns, moved_since, read_state

try:  # pragma: no cover - Windows has no fcntl
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "UNDOABLE",
    "Restored",
    "Target",
    "checkpoint_of",
    "move_project",
    "moved_before_rewind",
    "open_shadow",
    "record_backup",
    "require_commit",
    "restore",
    "restore_step",
    "shadow_dir",
    "snapshot_target",
    "step_by_number",
    "step_diff_span",
    "step_target",
    "undo_target",
]

UNDOABLE = ("restored", "resume_prepared")  # events whose `backup` an --undo puts back
RUNS_PREFIX = "refs/agentguard/runs/"


class RestoreRefused(AgentGuardError):
    """The restore (or diff) cannot go ahead; nothing was changed."""


@dataclass(frozen=True)
class Target:
    """What a restore brings back."""

    commit: str
    label: str  # "run 3f2a1b9c0d1e step 3" | "snapshot 9f8e7d6c5b4a" | "the tree saved before …"
    via: str  # "step" | "snapshot" | "undo"
    step_id: int | None = None


@dataclass(frozen=True)
class Restored:
    """A restore that happened: the backup of the tree it replaced, and how to undo it."""

    run_id: str
    project: Path
    target: Target
    result: RestoreResult

    @property
    def backup(self) -> str:
        return self.result.backup.commit

    @property
    def undo(self) -> str:
        return f"agentguard restore {self.run_id} --undo"


# -- a run's shadow store and its checkpoints ---------------------------------------------------


def shadow_dir(store: Store, run: dict[str, Any]) -> Path:
    """Where the run's snapshots are: the shadow store of its (current) project folder."""
    return store.home / "shadow" / project_key(Path(run["project"]))


def open_shadow(store: Store, run: dict[str, Any], project: Path | None = None) -> ShadowRepo:
    """The run's shadow store, refusing (without creating anything) when it cannot be used."""
    folder = project if project is not None else Path(run["project"])
    if not folder.is_dir():
        raise ProjectError(
            f"Run {run['id']}'s project folder {folder} no longer exists; move it back "
            f"(or continue the run elsewhere with `agentguard resume {run['id']} --project DIR`)."
        )
    where = shadow_dir(store, run)
    if not (where / "repo.git" / "HEAD").is_file():
        raise RestoreRefused(
            f"Run {run['id']} has no shadow store at {where}; it ran with snapshots off, "
            "or its snapshots were removed, so there is no working tree to compare or restore."
        )
    return ShadowRepo(folder, where)


def step_ref(run_id: str, number: int) -> str:
    return f"{RUNS_PREFIX}{run_id}/steps/{number}"


def checkpoint_of(shadow: ShadowRepo, run_id: str, step: dict[str, Any]) -> str | None:
    """A step's checkpoint: recorded in the store, or found by its ref (finished after a crash)."""
    return step["checkpoint"] or shadow.resolve_ref(step_ref(run_id, step["number"]))


def require_commit(
    store: Store,
    shadow: ShadowRepo,
    commit: str,
    what: str,
    *,
    hint: str = "pick another step or snapshot that still exists",
) -> None:
    """Refuse when the shadow store no longer holds `commit` (saying why when gc pruned it)."""
    if shadow.has_commit(commit):
        return
    from agentguard.retention import pruned_message

    rows = store.query(
        "select pruned_at from snapshots where commit_sha = ? and pruned_at is not null", [commit]
    )
    here, there = socket.gethostname(), None if rows else _saved_on(store, commit)
    if there is not None and there != here:
        raise SnapshotError(
            f"{what} ({commit[:12]}) was saved on {there}, in that machine's shadow store, not "
            f"in this one's ({here}); run this on {there}."
        )
    why = f"{pruned_message(rows[0]['pruned_at'])}" if rows else "it may have been pruned"
    raise SnapshotError(
        f"{what} ({commit[:12]}) is missing from the shadow store {shadow.store_dir} ({why}); "
        f"{hint}."
    )


def _saved_on(store: Store, commit: str) -> str | None:
    """The machine a backup was saved on, as its restore (or resume) recorded it: in a fleet's
    shared store, another machine's backup is in that machine's shadow store."""
    import json

    for event in store.query(
        "select detail from events where kind in (?, ?) and detail like ? order by id desc",
        [*UNDOABLE, f'%"backup":"{commit}"%'],
    ):
        host = json.loads(event["detail"] or "{}").get("host")
        if isinstance(host, str) and host:
            return host
    return None


def step_by_number(steps: list[dict[str, Any]], run_id: str, number: int) -> dict[str, Any]:
    for step in steps:
        if step["number"] == number:
            return step
    last = steps[-1]["number"] if steps else 0
    have = f"steps 1–{last}" if last > 1 else ("step 1" if last else "no steps")
    raise RestoreRefused(f"Run {run_id} has no step {number} (it has {have}); pick one of those.")


def step_checkpoint(store: Store, shadow: ShadowRepo, run_id: str, step: dict[str, Any]) -> str:
    """A step's checkpoint, refusing when it has none or the shadow store lost it."""
    commit = checkpoint_of(shadow, run_id, step)
    if commit is None:
        raise RestoreRefused(
            f"Step {step['number']} of run {run_id} has no checkpoint (its snapshot failed or "
            "snapshots were off); pick another step."
        )
    require_commit(store, shadow, commit, f"The checkpoint of step {step['number']}")
    return commit


def step_diff_span(
    shadow: ShadowRepo, run_id: str, steps: list[dict[str, Any]], number: int
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The diff at step N: (step N, the next step with a checkpoint — None: the working tree).

    Step N's checkpoint is the tree before its call; the next checkpoint is the tree after its
    tools ran, so the difference is what step N did."""
    step = step_by_number(steps, run_id, number)
    later = (s for s in steps if s["number"] > number and checkpoint_of(shadow, run_id, s))
    return step, next(later, None)


# -- restore targets -------------------------------------------------------------------------


def step_target(store: Store, shadow: ShadowRepo, run: dict[str, Any], number: int) -> Target:
    """Step N's checkpoint: the tree just before step N's model call."""
    step = step_by_number(store.steps(run["id"]), run["id"], number)
    commit = step_checkpoint(store, shadow, run["id"], step)
    return Target(commit, f"run {run['id']} step {number}", "step", step["id"])


def snapshot_target(shadow: ShadowRepo, run: dict[str, Any], commit: str) -> Target:
    commit = commit.strip()
    if not shadow.has_commit(commit):
        raise RestoreRefused(
            f"Snapshot {commit!r} is not in run {run['id']}'s shadow store "
            f"{shadow.store_dir}; use a commit printed by `agentguard restore` or "
            "`agentguard show`."
        )
    return Target(commit, f"snapshot {commit[:12]}", "snapshot")


def undo_target(store: Store, run: dict[str, Any]) -> Target:
    """The backup of the run's latest restore (or resume): a second undo redoes it."""
    import json

    for event in reversed(store.events(run["id"])):
        if event["kind"] not in UNDOABLE:
            continue
        detail = json.loads(event["detail"] or "{}")
        if detail.get("backup"):
            label = "the tree saved before the last restore"
            return Target(detail["backup"], label, "undo", event["step_id"])
    raise RestoreRefused(
        f"Run {run['id']} has no restore to undo; `agentguard show {run['id']}` lists its events."
    )


# -- the restore ---------------------------------------------------------------------------------


def record_backup(
    store: Store,
    run: dict[str, Any],
    snap: Snapshot,
    *,
    step_id: int | None,
    project: Path,
    now: float,
) -> None:
    """Keep a backup findable (and owned by its run, so gc treats it like its checkpoints)."""
    store.insert_snapshot(
        {
            "commit_sha": snap.commit,
            "project": str(project),
            "run_id": run["id"],
            "step_id": step_id,
            "kind": "backup",
            "created_at": now,
            "tree": snap.tree,
            "changed": snap.changed,
            "skipped": dumps([s.__dict__ for s in snap.skipped]),
            "duration_ms": snap.duration_ms,
            # where the user's repository was, so an --undo can say if it has moved since
            **columns(read_state(project)),
        }
    )


def moved_before_rewind(
    store: Store, shadow: ShadowRepo, commit: str, what: str = "the checkpoint"
) -> str | None:
    """How the project moved since `commit` was taken ("the project is now on branch main at
    3f2a1b9, the checkpoint was taken on feature/login at 88da3ac"), when its branch or HEAD
    changed and restoring it would rewrite files; None when there is nothing to ask about
    (not moved, nothing recorded, or the tree already matches)."""
    sentence = moved_since(store, shadow.project, commit, what=what)
    if sentence is None or not shadow.diff(commit):
        return None
    return sentence


def rewind(
    store: Store,
    run: dict[str, Any],
    shadow: ShadowRepo,
    commit: str,
    *,
    step_id: int | None,
    now: float,
) -> RestoreResult:
    """Restore `commit` and record the backup of the tree it replaced (the caller checked the
    run is not live and records its own event)."""
    result = shadow.restore(commit)
    record_backup(store, run, result.backup, step_id=step_id, project=shadow.project, now=now)
    return result


def restore(
    store: Store,
    run_id: str,
    target: Target,
    *,
    now: float | None = None,
) -> Restored:
    """Make the run's project tree equal `target`, undoably.

    Refuses (RunBusy) while another live process drives the run, before touching anything; the
    tree as it is now is committed to the shadow store first and recorded as a `backup` row and
    in a `restored` event, which `agentguard restore RUN --undo` puts back.
    """
    run = ensure_not_live(store, run_id, "rewinding its working tree")
    shadow = open_shadow(store, run)
    require_commit(store, shadow, target.commit, target.label[:1].upper() + target.label[1:])
    moment = time.time() if now is None else now
    result = rewind(store, run, shadow, target.commit, step_id=target.step_id, now=moment)
    paths = [c.path for c in result.changes]
    store.insert_event(
        run["id"],
        "restored",
        {
            "target": result.target,
            "label": target.label,
            "via": target.via,
            "backup": result.backup.commit,
            "changes": len(paths),
            "paths": paths[:50],
            "preserved": list(result.preserved),
            "project": str(shadow.project),
            "host": socket.gethostname(),
        },
        at=moment,
        step_id=target.step_id,
    )
    return Restored(run["id"], shadow.project, target, result)


def restore_step(store: Store, run_id: str, number: int, *, now: float | None = None) -> Restored:
    """Restore step N's checkpoint (the tree just before step N's call): `restore` by number."""
    run = ensure_not_live(store, run_id, "rewinding its working tree")
    shadow = open_shadow(store, run)
    return restore(store, run_id, step_target(store, shadow, run, number), now=now)


# -- a run resumed in a folder it moved to ------------------------------------------------------


def move_project(
    store: Store, run: dict[str, Any], folder: Path, *, now: float | None = None
) -> dict[str, Any]:
    """Make `folder` the run's project: its snapshots are copied into that folder's shadow
    store (nothing is removed from the old one), then `runs.project` is updated and a
    `project_moved` event records both folders. Returns the run's updated row."""
    old, new = Path(run["project"]), folder.resolve()
    if project_key(old) == project_key(new):
        return run
    old_dir, new_dir = shadow_dir(store, run), store.home / "shadow" / project_key(new)
    copied = 0
    if (old_dir / "repo.git" / "HEAD").is_file():
        ShadowRepo(new, new_dir)  # creates the new folder's store if it has none yet
        copied = _copy_run_snapshots(store, run["id"], old_dir, new_dir)
    moment = time.time() if now is None else now
    store.update_run(run["id"], project=str(new), updated_at=moment)
    store.insert_event(
        run["id"],
        "project_moved",
        {
            "old": str(old),
            "new": str(new),
            "old_store": str(old_dir),
            "new_store": str(new_dir),
            "snapshots_copied": copied,
        },
        at=moment,
        step_id=None,
    )
    moved = store.get_run(run["id"])
    assert moved is not None
    return moved


def _run_commits(store: Store, run_id: str) -> set[str]:
    """Every snapshot the store says belongs to the run: checkpoints, backups, drift, events."""
    import json

    commits = {
        r["checkpoint"]
        for r in store.query(
            "select checkpoint from steps where run_id = ? and checkpoint is not null", [run_id]
        )
    }
    commits |= {
        r["commit_sha"]
        for r in store.query(
            "select commit_sha from snapshots where run_id = ? and commit_sha is not null",
            [run_id],
        )
    }
    for event in store.events(run_id):
        detail = json.loads(event["detail"] or "{}")
        if not isinstance(detail, dict):
            continue
        for key in ("backup", "target", "checkpoint", "snapshot"):
            value = detail.get(key)
            if isinstance(value, str) and len(value) == 40:
                commits.add(value)
    return {c for c in commits if c}


def _copy_run_snapshots(store: Store, run_id: str, old_dir: Path, new_dir: Path) -> int:
    """Fetch the run's refs, and a `kept` ref for each of its other snapshots, from the old
    shadow store into the new one (git copies the objects; the old store keeps its own). A store
    gc has cut (shallow) passes its cut on: the new store never holds a commit without its
    parents unless its `shallow` file says so."""
    old = BareGit(old_dir, purpose="copy runs")
    prefix = f"{RUNS_PREFIX}{run_id}/"
    with _store_locks(old_dir, new_dir):
        listing = old.run(["for-each-ref", "--format=%(objectname) %(refname)", prefix])
        pointed = {line.split(" ", 1)[0] for line in listing.decode().splitlines() if line}
        wanted = sorted(_run_commits(store, run_id) - pointed)
        present = old.existing_commits(wanted)
        if present:
            lines = "".join(f"update {prefix}kept/{c} {c}\n" for c in present)
            old.run(["update-ref", "--stdin"], stdin=lines.encode())
        if not pointed and not present:
            return 0
        BareGit(new_dir, purpose="copy runs").run(
            [
                "fetch",
                "--quiet",
                "--no-tags",
                "--update-shallow",
                str(old_dir / "repo.git"),
                f"+{prefix}*:{prefix}*",
            ]
        )
    return len(pointed | set(present))


@contextmanager
def _store_locks(*store_dirs: Path) -> Iterator[None]:
    """The lock files snapshots and gc take on each store (in one order: no deadlock)."""
    with ExitStack() as stack:
        for where in sorted(store_dirs):
            fd = os.open(where / "lock", os.O_RDWR | os.O_CREAT, 0o600)
            stack.callback(os.close, fd)
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
