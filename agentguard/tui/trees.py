"""A step's working-tree diff and restore, through the run's shadow store (no Textual).

A step's checkpoint is the tree *before* its model call; what the step changed (the tools its
answer ran) is the difference to the next step's checkpoint — or, for the newest step, to the
working tree as it is now. These functions run in worker threads: they call git.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from agentguard.errors import SnapshotError
from agentguard.snapshots import Change, RestoreResult, ShadowRepo
from agentguard.tui.data import RunDetail, StepView

MAX_DIFF_BYTES = 512 * 1024
MAX_DIFF_LINES = 2000


@dataclass(frozen=True)
class TreeDiff:
    """Paths that differ from a step's checkpoint to `target`."""

    step: int
    base: str  # the step's checkpoint
    target: str  # the next checkpoint, or a snapshot of the working tree taken now
    target_label: str  # "step 4's checkpoint" | "the working tree now"
    changes: tuple[Change, ...]


def repo_for(detail: RunDetail) -> ShadowRepo:
    return ShadowRepo(Path(detail.run.project), detail.shadow_dir)


def checkpoint_problem(detail: RunDetail, step: StepView) -> str | None:
    """Why a step's checkpoint cannot be diffed or restored, in one sentence (None: it can).

    A run of another machine (fleet mode) is refused first: its checkpoints are in that
    machine's shadow store and its project folder is a path there, so nothing here is its."""
    if detail.elsewhere is not None:
        run = detail.run.id
        return (
            f"Run {run} ran on {detail.elsewhere}: its checkpoints are in that machine's shadow "
            f"store, so diff or restore it there (or resume it here with `agentguard resume "
            f"{run} --project DIR`, which fetches them from its snapshot_remote)."
        )
    if not step.checkpoint:
        return (
            f"Step {step.number} has no checkpoint (snapshots were off, failed, or the step "
            "has not finished its snapshot yet)."
        )
    if step.checkpoint_pruned_at is not None:
        return f"Step {step.number}'s checkpoint {step.checkpoint[:12]} was pruned by gc."
    if not Path(detail.run.project).is_dir():
        return f"The run's project folder {detail.run.project} no longer exists."
    return None


def step_diff(detail: RunDetail, step: StepView) -> TreeDiff:
    """What changed from `step`'s checkpoint to the next checkpoint (or the tree now)."""
    assert step.checkpoint is not None
    repo = repo_for(detail)
    later = [s for s in detail.steps if s.number > step.number and s.checkpoint]
    nxt = later[0] if later else None
    if nxt is not None and nxt.checkpoint and repo.has_commit(nxt.checkpoint):
        target, label = nxt.checkpoint, f"step {nxt.number}'s checkpoint"
    else:
        target = repo.snapshot("agentguard watch: the working tree, for a diff").commit
        label = "the working tree now"
    changes = tuple(repo.diff(step.checkpoint, target))
    return TreeDiff(step.number, step.checkpoint, target, label, changes)


def file_diff(detail: RunDetail, diff: TreeDiff, path: str) -> str:
    """A unified diff of one path between the two snapshots of `diff`."""
    repo = repo_for(detail)
    old = _read(repo, diff.base, path)
    new = _read(repo, diff.target, path)
    if old is None and new is None:
        return f"{path}: not a regular file in either snapshot"
    for data in (old, new):
        if data is not None and (b"\0" in data[:8192] or len(data) > MAX_DIFF_BYTES):
            return f"{path}: binary or large file ({_size(old)} → {_size(new)})"
    a = (old or b"").decode("utf-8", "replace").splitlines(keepends=True)
    b = (new or b"").decode("utf-8", "replace").splitlines(keepends=True)
    lines = list(
        difflib.unified_diff(
            a,
            b,
            fromfile=f"a/{path}" if old is not None else "/dev/null",
            tofile=f"b/{path}" if new is not None else "/dev/null",
        )
    )
    if not lines:
        return f"{path}: same content (mode or type changed)"
    if len(lines) > MAX_DIFF_LINES:
        lines = [*lines[:MAX_DIFF_LINES], f"… {len(lines) - MAX_DIFF_LINES} more lines\n"]
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def restore_step(detail: RunDetail, step: StepView) -> RestoreResult:
    """Make the project's tree equal the step's checkpoint (snapshotting it first)."""
    assert step.checkpoint is not None
    return repo_for(detail).restore(step.checkpoint)


def _read(repo: ShadowRepo, commit: str, path: str) -> bytes | None:
    try:
        return repo.read_file(commit, path)
    except SnapshotError:  # not in this snapshot (added or deleted)
        return None


def _size(data: bytes | None) -> str:
    return "absent" if data is None else f"{len(data)} bytes"
