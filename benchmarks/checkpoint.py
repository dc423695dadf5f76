"""Working-tree checkpoint cost at 1k, 10k and 50k files, beside raw git plumbing.

Each step modifies 10 files, creates 1 and deletes 1. The floor is git doing the same work
with its own index: `GIT_INDEX_FILE=… git add -A && git write-tree && git commit-tree` for a
snapshot and `git read-tree -u --reset` for a restore, measured in the same run on the same
tree. The caller's wait is the time a step adds around a model call that takes 200 ms (the
healthy fallback's latency in DESIGN.md's targets): the snapshot runs during the call.
"""

from __future__ import annotations

import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agentguard.guard import Guard, Served, StepRequest
from agentguard.plan import drive
from agentguard.routes import Route
from agentguard.snapshots import ShadowRepo
from benchmarks.common import Report, agent_step_edit, git, make_repo, timed

SIZES = (1_000, 10_000, 50_000)
STEPS = 6
CALL_S = 0.2


class Floor:
    """Raw git plumbing with a private index: the least any snapshot can cost."""

    def __init__(self, project: Path, where: Path) -> None:
        self.project = project
        self.env = {
            "GIT_DIR": str(where / "floor.git"),
            "GIT_WORK_TREE": str(project),
            "GIT_INDEX_FILE": str(where / "floor.index"),
        }
        git(where, "init", "-q", "--bare", str(where / "floor.git"))
        self.parent: str | None = None

    def snapshot(self) -> str:
        git(self.project, "add", "-A", env=self.env)
        tree = git(self.project, "write-tree", env=self.env)
        args = ["commit-tree", tree, "-m", "floor"]
        if self.parent:
            args += ["-p", self.parent]
        self.parent = git(self.project, *args, env=self.env)
        return self.parent

    def restore(self, commit: str) -> None:
        git(self.project, "read-tree", "-u", "--reset", commit, env=self.env)


def measure(size: int, report: Report, workdir: Path) -> None:
    project = make_repo(workdir / f"repo{size}", size)
    floor = Floor(project, workdir)
    shadow = ShadowRepo(project, workdir / f"shadow{size}")
    floor.snapshot()
    shadow.snapshot()
    ours, base, commits, floors = [], [], [], []
    for step in range(1, STEPS + 1):
        agent_step_edit(project, step, size)
        pair = [("floor", floor.snapshot), ("ours", shadow.snapshot)]
        random.shuffle(pair)  # neither always gets the warm page cache
        for who, fn in pair:
            made = floors if who == "floor" else commits
            took = timed(lambda fn=fn, made=made: made.append(fn()), repeat=1)
            (base if who == "floor" else ours).append(took)
    snap, snap_floor = statistics.median(ours), statistics.median(base)
    ratio = snap / snap_floor
    case = f"{size:,} files"
    report.add(
        "checkpoint",
        case,
        "snapshot",
        snap,
        "ms",
        "≤ 1.3× floor",
        ratio <= 1.3,
        snap_floor,
        note=f"{ratio:.2f}× floor",
    )

    back = commits[2].commit
    restore_ours = timed(lambda: shadow.restore(back), repeat=1)
    restore_floor = timed(lambda: floor.restore(floors[2]), repeat=1)
    report.add(
        "checkpoint",
        case,
        "restore",
        restore_ours,
        "ms",
        "",
        None,
        restore_floor,
        note="includes the backup snapshot taken first",
    )
    shadow.restore(commits[-1].commit)
    floor.restore(floors[-1])

    report.add(
        "checkpoint",
        case,
        "caller wait",
        caller_wait(project, workdir, size),
        "ms",
        "< 10 ms",
        None,
    )
    fig = report.figures[-1]
    fig.meets = fig.value < 10


class _Reply:
    """Stands in for the SDK's response object."""


def caller_wait(project: Path, workdir: Path, size: int) -> float:
    """What a guarded step adds around a 200 ms model call (median of a few steps)."""
    guard = Guard(project, home=workdir / f"home{size}")
    route = Route(provider="anthropic", model="m", kind="anthropic", base_url="http://x")

    def call(_action) -> Served:
        time.sleep(CALL_S)
        return Served(value=_Reply(), request_id="r", model="m")

    added = []
    messages = [{"role": "user", "content": "go"}]
    for step in range(STEPS):
        agent_step_edit(project, 100 + step, size)
        messages = [
            *messages,
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "x"},
        ]
        request = StepRequest(route=route, messages=messages, params={"max_tokens": 5})
        start = time.perf_counter()
        drive(guard.step(request), call, guard.clock)
        added.append((time.perf_counter() - start - CALL_S) * 1000)
    guard.close()
    return statistics.median(added[1:])  # the first snapshot of a new store hashes everything


def main(sizes: tuple[int, ...] = SIZES) -> Report:
    report = Report()
    workdir = Path(tempfile.mkdtemp(prefix="agentguard-bench-"))
    try:
        for size in sizes:
            measure(size, report, workdir)
            print(f"  checkpoint: {size:,} files done", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


if __name__ == "__main__":
    chosen = tuple(int(a) for a in sys.argv[1:]) or SIZES
    result = main(chosen)
    print(result.table())
    print(result.save("checkpoint"))
