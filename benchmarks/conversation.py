"""A step's store writes and the database size at steps 10, 100 and 1,000 of a conversation.

A tool-heavy conversation of real text (`benchmarks.corpus`): each step adds an assistant
`tool_use` and a user `tool_result` holding a file of this repository or the output of a real
command run on it (≈ 3.7 KB on average).

agentguard is driven as users drive it: `agentguard.wrap` over `anthropic.Anthropic`, each step
one `messages.create` to the fake provider on 127.0.0.1 (snapshots off: this benchmark is
about the conversation store). The time measured is every store write transaction the step
makes, from asking for the write to its COMMIT, summed per step: the checkpoint (the step row
and its new messages), the attempt row and its outcome, the retry budget's and the breaker's
rows, the step's finish and the run's update. `Store.write` is wrapped to time each one;
nothing is subtracted.

LangGraph's SqliteSaver (`langgraph-checkpoint-sqlite`, installed by `make bench`) stores the
same messages in the same run the way it is built to: the whole state per checkpoint.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anthropic

import agentguard
from agentguard.store import Store
from agentguard.testing import FakeProvider
from benchmarks.common import Report
from benchmarks.corpus import tool_output

CHECKPOINTS = (10, 100, 1_000)
SAMPLE = 10  # steps timed around each checkpoint
MODEL = "claude-opus-4-7"


def conversation_step(step: int) -> list[dict[str, Any]]:
    """One step of the conversation: the model's tool call and the tool's real output."""
    call_id = f"toolu_{step:06d}"
    out = tool_output(step)
    tool_use = {
        "role": "assistant",
        "content": [
            {"type": "text", "text": f"Step {step}: let me look at that."},
            {"type": "tool_use", "id": call_id, "name": out.name, "input": out.input},
        ],
    }
    tool_result = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": call_id, "content": out.text}],
    }
    return [tool_use, tool_result]


@contextmanager
def _timed_writes(samples: list[tuple[str, float]]) -> Iterator[None]:
    """Time every `Store.write` transaction (waiting for it, its body, its COMMIT), noting the
    function that wrote (`begin_step`, `insert_attempt`, `note`, ...)."""
    real = Store.write

    @contextmanager
    def write(store: Store) -> Iterator[Any]:
        caller = sys._getframe(2).f_code.co_qualname  # past contextlib's __enter__
        start = time.perf_counter()
        with real(store) as db:
            yield db
        samples.append((caller, (time.perf_counter() - start) * 1000))

    Store.write = write  # type: ignore[method-assign]
    try:
        yield
    finally:
        Store.write = real  # type: ignore[method-assign]


def ours(workdir: Path, report: Report) -> None:
    project = workdir / "project"
    project.mkdir()
    home = workdir / "home"
    empty = _empty_store_bytes(home)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "fix the bug"}]
    raw = len(json.dumps(messages))
    per_step: dict[int, list[list[tuple[str, float]]]] = {}
    writes: list[tuple[str, float]] = []
    with FakeProvider() as fake, _timed_writes(writes):
        client = agentguard.wrap(
            anthropic.Anthropic(base_url=fake.base_url, api_key="bench"),
            project=project,
            home=home,
            snapshots=False,
        )
        store = client.agentguard.store
        for step in range(1, max(CHECKPOINTS) + 1):
            new = conversation_step(step)
            messages = [*messages, *new]
            raw += sum(len(json.dumps(m)) for m in new)
            del writes[:]
            client.messages.create(model=MODEL, max_tokens=64, messages=messages)
            fake.reset()  # the fake keeps every request body otherwise
            for mark in CHECKPOINTS:
                if mark - SAMPLE < step <= mark:
                    per_step.setdefault(mark, []).append(list(writes))
            if step in CHECKPOINTS:
                _report(report, step, store, per_step[step], raw, empty)
        client.close()


def _report(
    report: Report,
    step: int,
    store: Store,
    steps: list[list[tuple[str, float]]],
    raw: int,
    empty: int,
) -> None:
    store.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = _db_bytes(store.path)
    totals = [sum(ms for _, ms in writes) for writes in steps]
    median = statistics.median(totals)
    report.add(
        "conversation",
        f"step {step:,}",
        "agentguard store writes per step",
        median,
        "ms",
        "< 1 ms",
        median < 1.0,
        note=f"median of steps {step - SAMPLE + 1}–{step}, max {max(totals):.2f} ms; "
        f"{statistics.median(len(w) for w in steps):g} write transactions a step: "
        + _by_writer(steps),
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


def _by_writer(steps: list[list[tuple[str, float]]]) -> str:
    """Each writing function's median time per step, slowest first."""
    names = {name for writes in steps for name, _ in writes}
    each = {
        name: statistics.median(sum(ms for n, ms in writes if n == name) for writes in steps)
        for name in names
    }
    return ", ".join(f"{name} {ms:.2f}" for name, ms in sorted(each.items(), key=lambda kv: -kv[1]))


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
