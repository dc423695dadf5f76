"""The slowest snapshots: the shadow store's private index kept in the store on disk, beside
the same index in memory-backed /dev/shm (the default on Linux since agentguard.shadow.
private_index).

git rewrites the index twice per snapshot by renaming a new file over it; on ext4 such a
rename first starts writing the new file out, and on a busy disk that now and then holds it
for 100 ms or more — the step (and in the proxy, the agent's answer) waits. The two stores
snapshot the same 10,000-file tree, in random order, after each agent edit and a 150 ms pause
(the model call); each pair must record the same tree (the set-up checks itself). The figures
are the tail — p99, the slowest, how many took over 100 ms — not the median, which both share.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from agentguard.shadow.private_index import INDEX_DIR_ENV, index_folder, index_in_use
from agentguard.snapshots import ShadowRepo
from benchmarks.common import Report, agent_step_edit, make_repo

FILES = 10_000
ROUNDS = 600
PAUSE_S = 0.150
SLOW_MS = 100.0


def stores(project: Path, workdir: Path) -> dict[str, ShadowRepo]:
    """The two stores: the old place (env set and empty: inside the store), then the default
    (env unset for the whole run: `main` takes it away)."""
    os.environ[INDEX_DIR_ENV] = ""
    on_disk = ShadowRepo(project, workdir / "store-disk")
    del os.environ[INDEX_DIR_ENV]
    if index_folder() is None:
        raise SystemExit("set-up: this machine has no /dev/shm folder for private indexes")
    in_memory = ShadowRepo(project, workdir / "store-memory")
    return {"index in the store (disk)": on_disk, "index in /dev/shm": in_memory}


def main(rounds: int = ROUNDS) -> Report:
    report = Report()
    workdir = Path(tempfile.mkdtemp(prefix="agentguard-bench-tail-"))
    saved = os.environ.pop(INDEX_DIR_ENV, None)  # the default place is what is measured
    try:
        project = make_repo(workdir / "project", FILES)
        repos = stores(project, workdir)
        for repo in repos.values():
            repo.snapshot("first")  # reads every file: not part of the tail measured here
        taken: dict[str, list[float]] = {name: [] for name in repos}
        rng = random.Random(7)
        for n in range(1, rounds + 1):
            agent_step_edit(project, n, FILES)
            time.sleep(PAUSE_S)
            order = list(repos)
            rng.shuffle(order)
            trees = set()
            for name in order:
                if name.endswith("/dev/shm") and index_in_use(workdir / "store-memory").parent == (
                    workdir / "store-memory"
                ):
                    raise SystemExit("set-up: the /dev/shm store moved its index into the store")
                start = time.perf_counter()
                snap = repos[name].snapshot(f"round {n}")
                taken[name].append((time.perf_counter() - start) * 1000)
                trees.add(snap.tree)
            if len(trees) != 1:
                raise SystemExit(f"set-up: the two stores recorded different trees in round {n}")
        case = f"{FILES:,} files, {rounds} snapshots, 12 files changed before each"
        for name, values in taken.items():
            values.sort()
            slow = sum(v > SLOW_MS for v in values)
            note = (
                f"p50 {values[len(values) // 2]:.1f} ms; {slow} of {len(values)} over "
                f"{SLOW_MS:.0f} ms"
            )
            report.add(
                "snapshot_tail", case, f"{name}: p99", values[int(len(values) * 0.99)], "ms",
                note=note,
            )  # fmt: skip
            report.add("snapshot_tail", case, f"{name}: slowest", values[-1], "ms")
    finally:
        _forget_index(workdir / "store-memory")
        shutil.rmtree(workdir, ignore_errors=True)
        if saved is not None:
            os.environ[INDEX_DIR_ENV] = saved
    return report


def _forget_index(store: Path) -> None:
    """The benchmark's in-memory index goes with its store."""
    index = index_in_use(store)
    if index.parent != store:
        index.unlink(missing_ok=True)


if __name__ == "__main__":
    result = main(int(sys.argv[1]) if len(sys.argv) > 1 else ROUNDS)
    print(result.table())
    print(result.save("snapshot_tail"))
