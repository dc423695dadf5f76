"""Where a shadow store's private index lives: in memory-backed storage when the machine has it.

git rewrites the index by writing `index.lock` and renaming it over `index` — twice per
snapshot (update-index, write-tree). Renaming over an existing file makes ext4 (and others
with delayed allocation) start writing the new file out at once, and on a busy disk that
write now and then holds the rename for 100 ms to 1 s, while the agent's answer waits for
the snapshot. In /dev/shm the same rename takes microseconds.

The index is only a cache of what the last snapshot read (stat data → blob ids); the
snapshots themselves stay in the store on disk. Losing it (a reboot) costs one snapshot that
reads every file again, nothing else. `AGENTGUARD_INDEX_DIR` names another folder; set to an
empty string it keeps the index inside the store, as before.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import sys
from pathlib import Path

INDEX_DIR_ENV = "AGENTGUARD_INDEX_DIR"
SHARED_MEMORY = Path("/dev/shm")
# Below this much free space the folder is not used: a container's /dev/shm can be as small
# as 64 MB, and an index that cannot be written fails every snapshot, where the store's
# disk has room.
MIN_FREE_BYTES = 32 * 1024 * 1024


def private_index(store_dir: Path, *, shared_memory: Path = SHARED_MEMORY) -> Path:
    """The index file of the store at `store_dir`, created by git on first use."""
    store_dir = store_dir.resolve()
    folder = index_folder(shared_memory)
    if folder is None:
        return store_dir / "index"
    name = hashlib.sha256(os.fsencode(store_dir)).hexdigest()[:32]
    index = folder / f"{name}.index"
    _adopt(store_dir / "index", index)
    return index


def index_folder(shared_memory: Path = SHARED_MEMORY) -> Path | None:
    """A folder only this user can write for private indexes, or None (keep them in stores).

    Checked on every snapshot (an lstat and a statvfs): a folder in a world-writable place
    that someone else made, or made open to others, is never used — an index written there
    could be read, or replaced with one that makes a snapshot record the wrong content — nor
    one with less than MIN_FREE_BYTES free.
    """
    chosen = os.environ.get(INDEX_DIR_ENV)
    if chosen is not None:
        return _own_folder(Path(chosen).expanduser()) if chosen.strip() else None
    if not sys.platform.startswith("linux") or not shared_memory.is_dir():
        return None
    return _own_folder(shared_memory / f"agentguard-{os.getuid()}")


def _own_folder(folder: Path) -> Path | None:
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(folder)
    except OSError:
        return None
    mine = info.st_uid == os.getuid() and not info.st_mode & 0o077
    if not (stat.S_ISDIR(info.st_mode) and mine):
        return None
    space = os.statvfs(folder)
    return folder if space.f_bavail * space.f_frsize >= MIN_FREE_BYTES else None


def _adopt(old: Path, new: Path) -> None:
    """A store made before indexes moved out of it: start from its index (same mtime, so git's
    racy-entry check stays exact) instead of re-reading every file, then drop the old copy.
    Made by a link, so two processes adopting at once never overwrite one another's index."""
    if new.exists() or not old.is_file():
        return
    copy = new.with_name(f"{new.name}.{os.getpid()}.adopting")
    try:
        shutil.copy2(old, copy)
        os.link(copy, new)
        old.unlink(missing_ok=True)
    except OSError:
        pass  # someone else adopted it, or no room: the first snapshot reads every file instead
    finally:
        copy.unlink(missing_ok=True)
