"""Writing the store's refs: plain names as loose files (saving a git process per snapshot),
anything unusual through `git update-ref`, which validates it. Either way each update is
logged in the ref's reflog, as git's `core.logAllRefUpdates = always` would."""

from __future__ import annotations

import ctypes
import os
import re
import sys
import time
from collections.abc import Callable
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
            _move_into_place(lock, path)
    except OSError:
        return False
    return True


def _move_into_place(lock: Path, path: Path) -> None:
    """`os.replace(lock, path)`, but where the kernel can, as an atomic exchange of the two
    files followed by removing the old one: renaming over an existing file makes ext4 write
    the new one out first, and on a busy disk that holds the rename (and the snapshot, and the
    agent's answer waiting for it) for 100 ms or more now and then; an exchange does not. A
    process killed between the two steps leaves the old value in `path`.lock, which the next
    snapshot clears as a stale lock."""
    exchange = _exchange if path.exists() else None
    if exchange and exchange(-100, os.fsencode(lock), -100, os.fsencode(path), _EXCHANGE) == 0:
        lock.unlink(missing_ok=True)
        return
    os.replace(lock, path)  # no such call here, or a file system without it


def _renameat2() -> Callable[..., int] | None:
    """glibc's renameat2 (Linux ≥ 3.15), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    function.argtypes += [ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_EXCHANGE = 2  # RENAME_EXCHANGE in linux/fs.h; -100 above is AT_FDCWD
_exchange = _renameat2()


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


def reflog_tip(git_dir: Path, name: str) -> str | None:
    """The value the ref's last reflog entry moved it to, or None. A ref file emptied by a
    power loss (written, never flushed) still has its reflog line: appends land whole."""
    try:
        with open(git_dir / "logs" / name, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 4096))
            lines = log.read().splitlines()
    except OSError:
        return None
    fields = lines[-1].split(b" ", 2) if lines else []
    value = fields[1].decode("ascii", "replace") if len(fields) == 3 else ""
    return value if len(value) in (40, 64) and set(value) <= set("0123456789abcdef") else None


def read_loose(git_dir: Path, name: str) -> str | None:
    """A loose ref's value, or None (absent, packed, or half-written)."""
    try:
        value = (git_dir / name).read_text().strip()
    except OSError:
        return None
    return value if len(value) in (40, 64) else None
