"""What a restore must leave alone, and what it must copy aside before git replaces it."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from agentguard.errors import SnapshotError
from agentguard.shadow.gitenv import ZERO_OID, failure, nul_join
from agentguard.shadow.model import RawChange
from agentguard.shadow.worktree import MISSING, REPO, contains_repo, obstacle, walk_files


class RunGit(Protocol):
    def __call__(
        self,
        args: Sequence[str],
        *,
        stdin: bytes | None = None,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]: ...


def protect(
    root: bytes,
    raw: Sequence[RawChange],
    ignored: Callable[[Sequence[bytes]], set[bytes]],
    secret: Callable[[Iterable[bytes]], set[bytes]],
) -> tuple[set[bytes], list[bytes]]:
    """Decide which changed paths restore must leave alone, and what it must copy aside.

    `ignored` names the paths git must not write (ignore rules, secret files); `secret` the
    files that must not even be copied aside. Returns (paths to keep as they are, files to
    copy to the preserved folder first).
    """
    folders: dict[bytes, str] = {}
    obstacles = {c.path: obstacle(root, c.path, folders) for c in raw}
    keep = {path for path, found in obstacles.items() if found and found[0] == REPO}
    deleted = {c.path for c in raw if c.status == "D"}
    added = [c.path for c in raw if c.status == "A" and c.path not in keep]

    # Where a folder must go, a file or symlink the store does not hold (ignored, too large)
    # would be replaced by git; one the store holds is a deletion git makes anyway.
    blockers: dict[bytes, bytes] = {}
    queries: list[bytes] = []
    for path in added:
        found = obstacles[path]
        if found is None or found[0] == MISSING:
            queries.append(path)
        elif found[1] not in deleted:
            blockers[path] = found[1]
    left_alone = ignored([*queries, *dict.fromkeys(blockers.values())])

    to_copy: dict[bytes, None] = {}
    for path in added:
        blocker = blockers.get(path)
        if blocker is not None:
            if blocker in left_alone:
                keep.add(path)
            else:
                to_copy[blocker] = None
            continue
        if path in left_alone:
            keep.add(path)
            continue
        full = root + b"/" + path
        try:
            st = os.lstat(full)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            to_copy[path] = None
        elif contains_repo(full):
            keep.add(path)
        else:  # git would delete this folder to write a file: keep what only it holds
            inside = [p for p in walk_files(full, path) if p not in deleted]
            if secret(inside):  # a secret file is never copied into the store: keep the folder
                keep.add(path)
            else:
                to_copy.update(dict.fromkeys(inside))
    return keep, list(to_copy)


def ignored(run: RunGit, env: dict[str, str], store: Path, paths: Sequence[bytes]) -> set[bytes]:
    """Which of `paths` the store's ignore rules exclude."""
    if not paths:
        return set()
    # check-ignore takes paths, not pathspecs, and rejects the literal-pathspec switch.
    env = {k: v for k, v in env.items() if k != "GIT_LITERAL_PATHSPECS"}
    result = run(["check-ignore", "-z", "--stdin"], stdin=nul_join(paths), check=False, env=env)
    if result.returncode not in (0, 1):
        raise SnapshotError(failure("check-ignore", result.stderr, store))
    return {p for p in result.stdout.split(b"\0") if p}


def preserve(root: bytes, store: Path, paths: Iterable[bytes]) -> list[str]:
    """Copy files into <store>/preserved/<time>/ before a restore replaces them."""
    paths = list(paths)
    if not paths:
        return []
    base = store / "preserved"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    folder = base / stamp
    suffix = 0
    while folder.exists():
        suffix += 1
        folder = base / f"{stamp}-{suffix}"
    saved: list[str] = []
    for path in paths:
        rel = os.fsdecode(path)
        dest = folder / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copy2(os.fsdecode(root + b"/" + path), dest, follow_symlinks=False)
        except OSError as exc:
            raise SnapshotError(
                f"Could not copy {rel} aside before restoring ({exc.strerror}); "
                f"free space in {store} or move the file yourself and retry."
            ) from None
        saved.append(rel)
    return saved


def tree_keeping(
    run: RunGit, env: dict[str, str], store: Path, target: str, kept: Sequence[RawChange]
) -> str:
    """`target`'s tree, except that kept paths stay as the backup has them."""
    if not kept:
        return target
    scratch = store / "index.restore"
    scratch.unlink(missing_ok=True)
    Path(f"{scratch}.lock").unlink(missing_ok=True)
    env = {**env, "GIT_INDEX_FILE": str(scratch)}
    try:
        run(["read-tree", target], env=env)
        info = b"".join(
            (
                f"{c.old_mode} {c.old_oid}\t".encode()
                if c.old_mode != "000000"
                else f"0 {ZERO_OID}\t".encode()
            )
            + c.path
            + b"\0"
            for c in kept
        )
        run(["update-index", "-z", "--index-info"], stdin=info, env=env)
        return run(["write-tree"], env=env).stdout.decode().strip()
    finally:
        scratch.unlink(missing_ok=True)
