"""`agentguard statusline`'s lookup in a big store: 2,000 other runs and 60,000 events.

Claude Code runs the status-line command after each of its messages, so the lookup must stay
quick however many runs the store holds. The store is built the way
tests/test_statusline.py builds it: one guarded step (a 529, then an answer) in a run that a
Claude Code session named, then 2,000 other runs and 60,000 events written beside it. The
figure is the median of 20 lookups (`statusline.status_line`, in process: the store's query,
not Python's start-up); each must find the session's run and print its line.
"""

from __future__ import annotations

import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import anthropic

import agentguard
from agentguard.clock import FakeClock
from agentguard.commands import statusline
from agentguard.store import Store
from agentguard.testing import FakeProvider, overloaded
from benchmarks.common import Report, make_repo

SESSION = "5b7c2a7e-1f0d-4c47-9a43-2f1e3d4c5b6a"
RUNS, EVENTS, LOOKUPS = 2_000, 60_000, 20
EXPECTED = "agentguard ✓ opus-4-7 · 1 retry"


def session() -> dict[str, object]:
    """What Claude Code writes to the status-line command's stdin (its fields that matter)."""
    return {
        "session_id": SESSION,
        "cwd": "/nowhere",
        "model": {"id": "claude-opus-4-7", "display_name": "Opus 4.7"},
        "workspace": {"current_dir": "/nowhere", "project_dir": "/nowhere", "added_dirs": []},
    }


def main() -> Report:
    report = Report()
    workdir = Path(tempfile.mkdtemp(prefix="agentguard-bench-statusline-"))
    home = workdir / "home"
    try:
        project = make_repo(workdir / "project", 10)
        with FakeProvider() as fake:
            client = agentguard.wrap(
                anthropic.Anthropic(base_url=fake.base_url, api_key="bench-not-a-key"),
                project=project,
                home=home,
                run="the-proxy-run",
                clock=FakeClock(),
                rng=random.Random(42),
            )
            client.agentguard.event(None, statusline.SESSION_EVENT, session_id=SESSION)
            fake.script(overloaded())
            client.messages.create(
                model="claude-opus-4-7",
                max_tokens=64,
                messages=[{"role": "user", "content": "hi"}],
            )
            store = Store.open(home)
            with store.write() as db:
                db["runs"].insert_all(
                    {"id": f"r{i:05d}", "name": f"run {i}", "project": f"/p/{i}", "created_at": i}
                    for i in range(RUNS)
                )
                db["events"].insert_all(
                    {"run_id": f"r{i % RUNS:05d}", "at": i, "kind": "attempt", "detail": "{}"}
                    for i in range(EVENTS)
                )
            store.close()
            samples = []
            for _ in range(LOOKUPS):
                started = time.perf_counter()
                line = statusline.status_line(session(), str(home))
                samples.append((time.perf_counter() - started) * 1000)
                if line != EXPECTED:
                    raise AssertionError(f"set-up: the lookup printed {line!r}, not {EXPECTED!r}")
            client.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    median = statistics.median(samples)
    report.add(
        "statusline",
        f"{RUNS:,} other runs, {EVENTS:,} events",
        "lookup of a session's line",
        median,
        "ms",
        "< 100 ms",
        median < 100,
        note=f"median of {LOOKUPS}, max {max(samples):.1f} ms; in process (no Python start-up)",
    )
    return report


if __name__ == "__main__":
    result = main()
    print(result.table())
    print(result.save("statusline"))
