"""Writing the store's refs: plain names as loose files (saving a git process per snapshot),
anything unusual through `git update-ref`, which validates it. Either way each update is
logged in the ref's reflog, as git's `core.logAllRefUpdates = always` would."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from agentguard.shadow.gitenv import HEAD_REF, IDENTITY, ZERO_OID

_WHO = f"{IDENTITY['GIT_COMMITTER_NAME']} <{IDENTITY['GIT_COMMITTER_EMAIL']}>"

# Ref names simple enough to write as files without git's full check-ref-format rules.
PLAIN_REF = re.compile(
    r"refs/(?:[A-Za-z0-9_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*/)+"
    r"[A-Za-z0-9_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*"
)


def ref_names(ref: str | None) -> list[str]:
    """The refs a snapshot moves: its own `ref` first, then the head."""
    return [HEAD_REF] if ref is None else [ref, HEAD_REF]


def are_plain(names: list[str]) -> bool:
    return all(PLAIN_REF.fullmatch(n) and ".lock/" not in f"{n}/" for n in names)


def write_loose(
    git_dir: Path, names: list[str], commit: str, olds: dict[str, str | None], message: str
) -> bool:
    """Write each ref the way git's files backend does (lock file, reflog entry, rename).

    False when that is not possible (e.g. a folder where the ref file should go): then the
    caller lets `git update-ref` do it and explain.
    """
    try:
        for name in names:
            path = git_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = path.with_name(f"{path.name}.lock")
            lock.write_text(f"{commit}\n", encoding="ascii")
            _log(git_dir, name, olds.get(name) or ZERO_OID, commit, message)
            os.replace(lock, path)
    except OSError:
        return False
    return True


def reflog_message(message: str) -> str:
    """A snapshot message as a reflog line holds it: its first line."""
    return message.strip().split("\n", 1)[0]


def _log(git_dir: Path, name: str, old: str, new: str, message: str) -> None:
    """Append one reflog entry in git's format, in one write (an append never tears a line)."""
    log = git_dir / "logs" / name
    log.parent.mkdir(parents=True, exist_ok=True)
    line = f"{old} {new} {_WHO} {int(time.time())} +0000\t{reflog_message(message)}\n"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def update_script(commit: str, parent: str | None, ref: str | None) -> bytes:
    """`git update-ref --stdin` input that moves the head (checking its old value) and `ref`."""
    lines = f"update {HEAD_REF} {commit} {parent or ZERO_OID}\n"
    if ref is not None:
        lines += f"update {ref} {commit}\n"
    return lines.encode()


def read_loose(git_dir: Path, name: str) -> str | None:
    """A loose ref's value, or None (absent, packed, or half-written)."""
    try:
        value = (git_dir / name).read_text().strip()
    except OSError:
        return None
    return value if len(value) in (40, 64) else None
