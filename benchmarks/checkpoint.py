"""Working-tree checkpoint cost at 1k, 10k and 50k files, beside raw git plumbing.

Each step modifies 10 files, creates 1 and deletes 1. The baseline is plain git doing the
same work with its own index: `GIT_INDEX_FILE=… git add -A && git write-tree && git
commit-tree` for a snapshot and `git read-tree -u --reset` for a restore, measured in the same
run on the same tree. It is a baseline, not a floor: a snapshot can cost less than it (the
shadow store keeps a split index and stats the tree on several threads). The caller's wait is
the time a step adds around a model call that takes 200 ms (the healthy fallback's latency in
the goodput benchmark): the snapshot runs during the call.
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


class Baseline:
    """Plain git plumbing with a private index, doing the snapshot's and the restore's work."""

    def __init__(self, project: Path, where: Path) -> None:
        self.project = project
        self.env = {
            "GIT_DIR": str(where / "baseline.git"),
            "GIT_WORK_TREE": str(project),
            "GIT_INDEX_FILE": str(where / "baseline.index"),
        }
        git(where, "init", "-q", "--bare", str(where / "baseline.git"))
        self.parent: str | None = None

    def snapshot(self) -> str:
        git(self.project, "add", "-A", env=self.env)
        tree = git(self.project, "write-tree", env=self.env)
        args = ["commit-tree", tree, "-m", "baseline"]
        if self.parent:
            args += ["-p", self.parent]
        self.parent = git(self.project, *args, env=self.env)
        return self.parent

    def restore(self, commit: str) -> None:
        git(self.project, "read-tree", "-u", "--reset", commit, env=self.env)


def _check_step(baseline: Baseline, before: str, after: str, step: int) -> None:
    """The set-up checks itself: the step changed the 10 + 1 + 1 files it says it did."""
    out = git(baseline.project, "diff-tree", "-r", "--name-status", before, after, env=baseline.env)
    kinds = sorted(line.split()[0] for line in out.splitlines())
    want = sorted(["M"] * 10 + ["A"] + (["D"] if step > 1 else []))
    if kinds != want:
        raise AssertionError(f"set-up: step {step} changed {kinds}, not {want}")


def measure(size: int, report: Report, workdir: Path) -> None:
    project = make_repo(workdir / f"repo{size}", size)
    (workdir / f"baseline{size}").mkdir()
    baseline = Baseline(project, workdir / f"baseline{size}")
    shadow = ShadowRepo(project, workdir / f"shadow{size}")
    baselines = [baseline.snapshot()]
    shadow.snapshot()
    ours, base, commits = [], [], []
    for step in range(1, STEPS + 1):
        agent_step_edit(project, step, size)
        pair = [("baseline", baseline.snapshot), ("ours", shadow.snapshot)]
        random.shuffle(pair)  # neither always gets the warm page cache
        for who, fn in pair:
            made = baselines if who == "baseline" else commits
            took = timed(lambda fn=fn, made=made: made.append(fn()), repeat=1)
            (base if who == "baseline" else ours).append(took)
        _check_step(baseline, baselines[-2], baselines[-1], step)
    snap, snap_base = statistics.median(ours), statistics.median(base)
    ratio = snap / snap_base
    case = f"{size:,} files"
    report.add(
        "checkpoint",
        case,
        "snapshot",
        snap,
        "ms",
        "≤ 1.3× baseline",
        ratio <= 1.3,
        snap_base,
        note=f"{ratio:.2f}× baseline",
    )

    back = commits[2].commit
    restore_ours = timed(lambda: shadow.restore(back), repeat=1)
    restore_base = timed(lambda: baseline.restore(baselines[3]), repeat=1)
    report.add(
        "checkpoint",
        case,
        "restore",
        restore_ours,
        "ms",
        "",
        None,
        restore_base,
        note="includes the backup snapshot taken first",
    )
    shadow.restore(commits[-1].commit)
    baseline.restore(baselines[-1])

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
