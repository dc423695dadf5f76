"""Conversation checkpoint cost and database size at steps 10, 100 and 1,000.

A tool-heavy conversation: each step adds an assistant `tool_use` of ~300 B and a user
`tool_result` of ~2 KB. agentguard stores a step's new messages only; LangGraph's SqliteSaver
(`langgraph-checkpoint-sqlite`, installed by `make bench`) stores the whole state per
checkpoint. Both store the same messages in the same run.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from agentguard.guard import Guard, Served, StepRequest
from agentguard.plan import drive
from agentguard.routes import Route
from agentguard.store import Store
from benchmarks.common import Report

CHECKPOINTS = (10, 100, 1_000)
SAMPLE = 10  # steps timed around each checkpoint


def conversation_step(step: int) -> list[dict[str, Any]]:
    call_id = f"toolu_{step:06d}"
    tool_use = {
        "role": "assistant",
        "content": [
            {"type": "text", "text": f"Step {step}: reading the next file."},
            {
                "type": "tool_use",
                "id": call_id,
                "name": "read_file",
                "input": {"path": f"src/module_{step % 97}/file_{step}.py", "limit": 400},
            },
        ],
    }
    body = (f"line {step}: def function_{step}(a, b):  return a + b\n" * 40)[:2000]
    tool_result = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": call_id, "content": body}],
    }
    return [tool_use, tool_result]


class _Reply:
    pass


def ours(workdir: Path, report: Report) -> None:
    project = workdir / "project"
    project.mkdir()
    empty = _empty_store_bytes(workdir / "home")
    guard = Guard(project, home=workdir / "home", snapshots=False)
    route = Route(provider="anthropic", model="m", kind="anthropic", base_url="http://x")
    messages: list[dict[str, Any]] = [{"role": "user", "content": "fix the bug"}]
    raw = len(json.dumps(messages))
    timings: dict[int, list[float]] = {}

    def call(_action) -> Served:
        return Served(value=_Reply(), request_id="r", model="m")

    for step in range(1, max(CHECKPOINTS) + 1):
        new = conversation_step(step)
        messages = [*messages, *new]
        raw += sum(len(json.dumps(m)) for m in new)
        request = StepRequest(route=route, messages=messages, params={"max_tokens": 8})
        start = time.perf_counter()
        state = guard._checkpoint(request)  # the conversation checkpoint alone
        elapsed = (time.perf_counter() - start) * 1000
        drive(_finish_only(guard, state), call, guard.clock)
        for mark in CHECKPOINTS:
            if mark - SAMPLE < step <= mark:
                timings.setdefault(mark, []).append(elapsed)
        if step in CHECKPOINTS:
            guard.store.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            size = _db_bytes(guard.store.path)
            median = statistics.median(timings[step])
            report.add(
                "conversation",
                f"step {step:,}",
                "agentguard write",
                median,
                "ms",
                "< 1 ms",
                median < 1.0,
            )
            grown = (size - empty) / raw
            report.add(
                "conversation",
                f"step {step:,}",
                "agentguard db growth / raw bytes",
                grown,
                "×",
                "≤ 1.3×",
                grown <= 1.3,
                note=f"{(size - empty) / 1e6:.3f} MB for {raw / 1e6:.3f} MB of messages",
            )
            report.add(
                "conversation",
                f"step {step:,}",
                "agentguard whole db / raw bytes",
                size / raw,
                "×",
                note=f"{size / 1e6:.2f} MB file, of which {empty / 1e6:.2f} MB is the empty "
                "store every run on the machine shares",
            )
    guard.close()


def _finish_only(guard: Guard, state: Any):
    """Finish the step as the guard would after a call: the write path, no network."""
    served, route, failed = yield from guard._serve(state, [state.request.route])
    return guard._finish(state, served, route, failed)


def _empty_store_bytes(home: Path) -> int:
    """The store before any run: its schema (26 tables and indexes), paid once per machine."""
    store = Store.open(home)
    store.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = _db_bytes(store.path)
    store.close()
    return size


def _db_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def langgraph(workdir: Path, report: Report) -> None:
    try:
        from langgraph.checkpoint.base import empty_checkpoint
        from langgraph.checkpoint.sqlite import SqliteSaver
    except ImportError:
        report.add(
            "conversation",
            "LangGraph",
            "not installed",
            0,
            "",
            note="pip install langgraph-checkpoint-sqlite (make bench does)",
        )
        return
    path = workdir / "langgraph.db"
    conn = sqlite3.connect(path, check_same_thread=False)
    saver = SqliteSaver(conn)
    saver.setup()
    conn.commit()
    empty = _db_bytes(path)
    config: dict[str, Any] = {"configurable": {"thread_id": "bench", "checkpoint_ns": ""}}
    messages: list[dict[str, Any]] = [{"role": "user", "content": "fix the bug"}]
    raw = len(json.dumps(messages))
    timings: dict[int, list[float]] = {}
    for step in range(1, max(CHECKPOINTS) + 1):
        new = conversation_step(step)
        messages = [*messages, *new]
        raw += sum(len(json.dumps(m)) for m in new)
        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = {"messages": messages}
        checkpoint["channel_versions"] = {"messages": step}
        start = time.perf_counter()
        config = saver.put(config, checkpoint, {"step": step}, {"messages": step})
        elapsed = (time.perf_counter() - start) * 1000
        for mark in CHECKPOINTS:
            if mark - SAMPLE < step <= mark:
                timings.setdefault(mark, []).append(elapsed)
        if step in CHECKPOINTS:
            conn.commit()
            size = _db_bytes(path)
            report.add(
                "conversation",
                f"step {step:,}",
                "LangGraph write",
                statistics.median(timings[step]),
                "ms",
            )
            report.add(
                "conversation",
                f"step {step:,}",
                "LangGraph db growth / raw bytes",
                (size - empty) / raw,
                "×",
                note=f"{size / 1e6:.1f} MB db",
            )
    conn.close()


def main() -> Report:
    report = Report()
    workdir = Path(tempfile.mkdtemp(prefix="agentguard-bench-conv-"))
    try:
        ours(workdir, report)
        langgraph(workdir, report)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


if __name__ == "__main__":
    result = main()
    print(result.table())
    print(result.save("conversation"))
