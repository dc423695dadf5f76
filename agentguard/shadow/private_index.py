"""Where a shadow store's private index lives: in memory-backed storage when the machine has it.

git rewrites the index by writing `index.lock` and renaming it over `index` — twice per
snapshot (update-index, write-tree). Renaming over an existing file makes ext4 (and others
with delayed allocation) start writing the new file out at once, and on a busy disk that
write now and then holds the rename for 100 ms or more, while the agent's answer waits for
the snapshot. In /dev/shm the same rename takes microseconds.

The index is only a cache of what the last snapshot read (stat data → blob ids); the
snapshots themselves stay in the store on disk. Losing it (a reboot) costs one snapshot that
reads every file again. But a cache that is stale is not harmless: an index from before a
sweep (of files that became ignored, or secret) would carry those files into the next
snapshot. So the store records the one index in use (`repo.git/info/agentguard-index`), and
whoever changes where it is starts the new one empty and deletes the old — always under the
store's lock. gc reads the same record, so it protects what the index in use references.
Beside each index in the folder a note names its store; a store that no longer records it
(deleted, or moved on) has its index removed the next time any store starts a new one.

`AGENTGUARD_INDEX_DIR` names another folder; set to an empty string it keeps the index inside
the store.
"""

from __future__ import annotations

import os
import secrets
import stat
import sys
import time
from pathlib import Path

from agentguard.shadow.gitenv import write_atomic

INDEX_DIR_ENV = "AGENTGUARD_INDEX_DIR"
SHARED_MEMORY = Path("/dev/shm")
# Below this much free space the folder is not used: a container's /dev/shm can be as small
# as 64 MB, and an index that cannot be written fails every snapshot, where the store's
# disk has room.
MIN_FREE_BYTES = 32 * 1024 * 1024
RECORD = Path("info") / "agentguard-index"


def index_in_use(store_dir: Path) -> Path:
    """The index the store records as in use (no side effects: gc's dry run may ask)."""
    recorded = _recorded(store_dir / "repo.git")
    return recorded if recorded is not None else store_dir / "index"


def choose_index(store_dir: Path) -> Path:
    """The index this process should use now; call with the store's lock held.

    The recorded one if it is where this process would put it; otherwise a new, empty one
    there (a random name, never shared with another store), recorded, and the old deleted.
    """
    git_dir = store_dir / "repo.git"
    recorded = _recorded(git_dir)
    folder = index_folder()
    place = store_dir if folder is None else folder
    if recorded is not None and recorded.parent == place:
        return recorded
    if recorded is None and folder is None:
        chosen = store_dir / "index"  # a store made before the record: its index is current
    else:
        if recorded is not None:
            recorded.unlink(missing_ok=True)
            if recorded.parent != store_dir:
                recorded.with_suffix(".store").unlink(missing_ok=True)
        chosen = store_dir / "index" if folder is None else _new_index(folder, store_dir)
        chosen.unlink(missing_ok=True)  # one left from an earlier time there is stale
    _record(git_dir, chosen)
    return chosen


def index_folder(shared_memory: Path = SHARED_MEMORY) -> Path | None:
    """A folder only this user can write for private indexes, or None (keep them in stores).

    Checked on every snapshot (an lstat and a statvfs): a folder in a world-writable place
    that someone else made, or made open to others, is never used — an index written there
    could be read, or replaced with one that makes a snapshot record the wrong content — nor
    one with less than MIN_FREE_BYTES free.
    """
    chosen = os.environ.get(INDEX_DIR_ENV)
    if chosen is not None:
        return _own_folder(Path(os.path.abspath(os.path.expanduser(chosen)))) if chosen else None
    if not sys.platform.startswith("linux") or not shared_memory.is_dir():
        return None
    return _own_folder(shared_memory / f"agentguard-{os.getuid()}")


def _own_folder(folder: Path) -> Path | None:
    if not hasattr(os, "getuid"):
        return None
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(folder)
        mine = info.st_uid == os.getuid() and not info.st_mode & 0o077
        if not (stat.S_ISDIR(info.st_mode) and mine):
            return None
        space = os.statvfs(folder)
    except OSError:
        return None
    return folder if space.f_bavail * space.f_frsize >= MIN_FREE_BYTES else None


def _new_index(folder: Path, store_dir: Path) -> Path:
    """A new index's name in `folder`, beside a note of its store; first, the indexes of
    stores that are gone (a deleted AGENTGUARD_HOME, a demo's) are removed: in memory they
    would stay until the next reboot."""
    _sweep(folder)
    name = secrets.token_hex(16)
    (folder / f"{name}.store").write_text(f"{store_dir}\n", encoding="utf-8")
    return folder / f"{name}.index"


def _sweep(folder: Path, *, older_than_s: float = 60.0) -> None:
    now = time.time()
    for note in folder.glob("*.store"):
        index = note.with_suffix(".index")
        try:
            if now - note.stat().st_mtime < older_than_s:
                continue  # being set up by another process right now
            store = Path(note.read_text(encoding="utf-8").strip())
        except (OSError, UnicodeDecodeError):
            continue
        if _recorded(store / "repo.git") != index:
            index.unlink(missing_ok=True)
            note.unlink(missing_ok=True)


def _recorded(git_dir: Path) -> Path | None:
    try:
        text = (git_dir / RECORD).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return Path(text) if text and os.path.isabs(text) else None


def _record(git_dir: Path, index: Path) -> None:
    write_atomic(git_dir / RECORD, f"{index}\n".encode())
