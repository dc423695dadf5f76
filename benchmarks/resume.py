"""Resume time: a 500-message run on a 10k-file tree with 50 files changed since its checkpoint.

Measures `agentguard.resume()` end to end: reading the run, rebuilding the conversation from
its step chain, snapshotting the current tree (so the restore can be undone) and restoring
the checkpoint. Target: under 300 ms.

The set-up checks itself: before each timed resume `git status` in the project must list
exactly the 50 edited files (the checkpoint's tree is the repo's HEAD), and after it none
(the restore put them back).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import agentguard
from agentguard.guard import Guard, Served, StepRequest
from agentguard.plan import drive
from agentguard.routes import Route
from benchmarks.common import Report, changed_paths, make_repo, repo_file
from benchmarks.conversation import conversation_step

FILES, MESSAGES, CHANGED, REPEAT = 10_000, 500, 50, 5


class _Reply:
    pass


def build(workdir: Path) -> tuple[str, Path, Path]:
    project = make_repo(workdir / "repo", FILES)
    home = workdir / "home"
    guard = Guard(project, home=home)
    route = Route(provider="anthropic", model="m", kind="anthropic", base_url="http://x")
    messages: list = [{"role": "user", "content": "fix the bug"}]
    step = 0
    while len(messages) < MESSAGES:
        step += 1
        messages = [*messages, *conversation_step(step)]
        request = StepRequest(route=route, messages=messages, params={"max_tokens": 8})
        drive(
            guard.step(request),
            lambda _a: Served(value=_Reply(), request_id="r", model="m"),
            guard.clock,
        )
    guard.close(status="interrupted")
    return guard.run_id, project, home


def change(project: Path, round_: int) -> None:
    """50 files differ from the checkpoint, as if a tool call was half-way through."""
    for i in range(CHANGED):
        path = repo_file(project, (i * 197 + round_) % FILES)  # 197 is prime to 10,000
        path.write_text(path.read_text() + f"# half-finished edit {round_}\n")
    changed = changed_paths(project)
    if len(changed) != CHANGED:
        raise AssertionError(f"set-up: {len(changed)} files differ, not {CHANGED}: {changed[:5]}")


def main() -> Report:
    report = Report()
    workdir = Path(tempfile.mkdtemp(prefix="agentguard-bench-resume-"))
    try:
        run_id, project, home = build(workdir)
        if changed_paths(project):
            raise AssertionError("set-up: the tree should be the checkpoint's before the edits")
        samples = []
        for round_ in range(REPEAT):
            change(project, round_)
            start = time.perf_counter()
            run = agentguard.resume(run_id, home=home)
            samples.append((time.perf_counter() - start) * 1000)
            assert len(run.messages) >= MESSAGES and run.restored is not None
            if left := changed_paths(project):
                raise AssertionError(f"resume left {len(left)} files changed: {left[:5]}")
        value = statistics.median(samples)
        report.add(
            "resume",
            f"{MESSAGES} messages, {FILES:,} files, {CHANGED} changed",
            "resume()",
            value,
            "ms",
            "< 300 ms",
            value < 300,
            note=f"min {min(samples):.0f} ms, max {max(samples):.0f} ms",
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


if __name__ == "__main__":
    result = main()
    print(result.table())
    print(result.save("resume"))
