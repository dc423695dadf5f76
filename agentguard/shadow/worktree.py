"""Looking at the project folder directly, never by running git on the user's repository."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

REPO, MISSING, OTHER = "repo", "missing", "other"


def obstacle(root: bytes, path: bytes, cache: dict[bytes, str]) -> tuple[str, bytes] | None:
    """The first enclosing folder of `path` that is not a plain folder, and what it is.

    REPO: a git repository of its own; MISSING: absent; OTHER: a file or a symlink.
    """
    prefix = b""
    for part in path.split(b"/")[:-1]:
        prefix = prefix + b"/" + part if prefix else part
        kind = cache.get(prefix)
        if kind is None:
            full = root + b"/" + prefix
            try:
                mode = os.lstat(full).st_mode
            except OSError:
                kind = MISSING
            else:
                if not stat.S_ISDIR(mode):
                    kind = OTHER
                else:
                    kind = REPO if os.path.lexists(full + b"/.git") else ""
            cache[prefix] = kind
        if kind:
            return kind, prefix
    return None


def user_exclude_file(project: Path) -> Path | None:
    """The project's own info/exclude, found without running git on the user's repository."""
    dot_git = project / ".git"
    try:
        if dot_git.is_dir():
            return dot_git / "info" / "exclude"
        if not dot_git.is_file():
            return None
        line = dot_git.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    if not line.startswith("gitdir:"):
        return None
    git_dir = (project / line.removeprefix("gitdir:").strip()).resolve()
    try:  # a linked worktree keeps info/ in the common directory
        common = (git_dir / "commondir").read_text(encoding="utf-8").strip()
        git_dir = (git_dir / common).resolve()
    except OSError:
        pass
    return git_dir / "info" / "exclude"


def contains_repo(folder: bytes) -> bool:
    return any(".git" in dirs or ".git" in files for _, dirs, files in os.walk(os.fsdecode(folder)))


def walk_files(folder: bytes, rel: bytes) -> Iterator[bytes]:
    """Every non-directory under `folder`, as project-relative paths."""
    for dirpath, dirs, files in os.walk(folder):
        base = rel + dirpath[len(folder) :]
        yield from (base + b"/" + name for name in files)
        yield from (base + b"/" + d for d in dirs if os.path.islink(os.path.join(dirpath, d)))
