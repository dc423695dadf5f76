"""What snapshots, diffs and restores return."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_FILE_BYTES = 10 * 1024 * 1024

TOO_LARGE = "too_large"
NESTED_REPO = "nested_repo"


@dataclass(frozen=True)
class SkippedPath:
    """A path the snapshot deliberately left out, so callers can say so instead of hiding it."""

    path: str  # posix path relative to the project
    reason: str  # "too_large" | "nested_repo"
    size: int | None


@dataclass(frozen=True)
class Snapshot:
    """One commit in the shadow store and what it cost."""

    commit: str
    tree: str
    parent: str | None
    changed: int  # paths added/updated/removed in the private index by this snapshot
    skipped: tuple[SkippedPath, ...]
    duration_ms: float


@dataclass(frozen=True)
class Change:
    """One path that differs between two snapshots (from `a` to `b`)."""

    status: str  # "A" added, "M" modified, "D" deleted, "T" type change
    path: str


@dataclass(frozen=True)
class RestoreResult:
    """What a restore did, including how to undo it: `restore(result.backup.commit)`."""

    target: str
    backup: Snapshot
    changes: tuple[Change, ...]
    preserved: tuple[str, ...]  # files copied to <store_dir>/preserved/... before being replaced


@dataclass(frozen=True)
class RawChange:
    """One line of `git diff-tree --raw`: enough to put the old entry back."""

    old_mode: str
    old_oid: str
    status: str
    path: bytes
