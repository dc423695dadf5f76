"""A streamed step hands its first content over before the rows that say it was served.

The proxy passes a stream on live; what the client waits for before its first token is the
proxy's own work. The rows saying the step was served (the attempt's outcome, the step's `ok`,
the breaker's success) are written once that first content is on its way
(`Guard.step(defer_record=True)`, `Guard.record_handed_over`), and always before the stream's
end reaches the client, so a client that reads the store after its stream ends finds the step
complete. Held-back rows are never lost: `close()` writes them; a substitution is never held
back. The store is held up here the way another process would: by its write lock.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx2

import agentguard
from agentguard.plan import drive
from agentguard.routes import Route
from agentguard.step_types import Served, StepRequest
from agentguard.store import DB_NAME
from agentguard.testing import FakeProvider, RecordedRequest, Turn
from tests.conftest import API_KEY, user

OPUS = "claude-opus-4-7"
SONNET = "claude-sonnet-4-6"


def _route(model: str) -> Route:
    return Route(provider="anthropic", model=model, kind="anthropic", base_url="http://x")


def _served(model: str) -> Served:
    return Served(value=SimpleNamespace(answer=model), request_id="req_1", model=model)


def _step(guard: agentguard.Guard, answered_by: str, *, defer_record: bool) -> Any:
    """One step asking OPUS; the provider answers as `answered_by`."""
    request = StepRequest(route=_route(OPUS), messages=[user("hi")], params={"max_tokens": 8})
    plan = guard.step(request, chain=[_route(OPUS)], defer_record=defer_record)
    return drive(plan, lambda action: _served(answered_by), guard.clock)


def _outcomes(guard: agentguard.Guard) -> tuple[str, list[str]]:
    [step] = guard.store.steps(guard.run_id)
    return step["status"], [a["outcome"] for a in guard.store.attempts(step["id"])]


def test_held_back_rows_are_written_on_hand_over(home: Path, project: Path) -> None:
    guard = agentguard.Guard(project, snapshots=False)
    value = _step(guard, OPUS, defer_record=True)
    assert value.answer == OPUS
    assert _outcomes(guard) == ("pending", ["pending"])  # handed over, not yet recorded
    [step] = guard.store.steps(guard.run_id)
    guard.record_handed_over(step["id"])
    assert _outcomes(guard) == ("ok", ["ok"])
    guard.record_handed_over(step["id"])  # once
    assert _outcomes(guard) == ("ok", ["ok"])
    guard.close()


def test_close_writes_rows_never_handed_over(home: Path, project: Path) -> None:
    """The caller died between the answer and its hand-over: nothing the step learnt is lost."""
    guard = agentguard.Guard(project, snapshots=False)
    _step(guard, OPUS, defer_record=True)
    guard.close()
    assert _outcomes(guard) == ("ok", ["ok"])
    assert guard.store.get_run(guard.run_id)["status"] == "completed"


def test_a_substitution_is_never_held_back(home: Path, project: Path) -> None:
    """The provider swapped the model: recorded and announced before the answer goes out."""
    guard = agentguard.Guard(project, snapshots=False, policy={"substitution": "allow"})
    _step(guard, SONNET, defer_record=True)
    [step] = guard.store.steps(guard.run_id)
    assert step["status"] == "ok" and step["substituted"] == 1
    assert [a["outcome"] for a in guard.store.attempts(step["id"])][-1] == "ok"
    kinds = [e["kind"] for e in guard.store.events(guard.run_id)]
    assert "substitution" in kinds
    guard.close()


def test_without_defer_record_rows_come_before_the_answer(home: Path, project: Path) -> None:
    guard = agentguard.Guard(project, snapshots=False)
    _step(guard, OPUS, defer_record=False)
    assert _outcomes(guard) == ("ok", ["ok"])
    guard.close()


def test_the_snapshot_starts_once_the_first_attempt_is_written(home: Path, project: Path) -> None:
    """The snapshot thread competes with the event loop for the interpreter: it starts after
    the step's writes before the call, yet before the call is made."""
    guard = agentguard.Guard(project)
    request = StepRequest(route=_route(OPUS), messages=[user("hi")], params={"max_tokens": 8})
    state = guard._checkpoint(request)  # the step's row and messages: no snapshot yet
    assert state.snapshot is None and state.snapshot_job is not None
    seen: list[tuple[str, list[str]]] = []
    real = guard._snapshot_step

    def snapshot_step(*args: Any, **kwargs: Any) -> Any:
        [step] = guard.store.steps(guard.run_id)[-1:]
        seen.append((step["number"], [a["outcome"] for a in guard.store.attempts(step["id"])]))
        return real(*args, **kwargs)

    guard._snapshot_step = snapshot_step  # type: ignore[method-assign]

    def call(action: Any) -> Served:
        guard._executor.submit(lambda: None).result()  # the snapshot, submitted before, ran
        assert seen == [(2, ["pending"])]  # after the attempt's row, before it was sent
        return _served(OPUS)

    drive(guard.step(request, chain=[_route(OPUS)]), call, guard.clock)
    [_, step] = guard.store.steps(guard.run_id)
    assert step["status"] == "ok" and step["checkpoint"]
    guard.close()


@contextlib.contextmanager
def _write_locked(db: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(db, isolation_level=None, timeout=30, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def test_first_content_goes_out_while_the_store_is_busy(
    fake: FakeProvider, home: Path, start_proxy: Any
) -> None:
    """The store's writer lock is taken once the request reaches the provider: the client
    still gets the first content, before the step's rows; once the lock goes, the stream ends
    with the step recorded as served."""
    proxy = start_proxy(snapshots=False)
    locked = threading.Event()
    lock: list[contextlib.ExitStack] = []

    def model(request: RecordedRequest) -> Turn:
        stack = contextlib.ExitStack()
        stack.enter_context(_write_locked(home / DB_NAME))
        lock.append(stack)
        locked.set()
        return Turn(text="first words, then more")

    fake.set_model(model)
    body = {"model": OPUS, "max_tokens": 64, "stream": True, "messages": [user("go")]}
    headers = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
    reader = sqlite3.connect(f"file:{home / DB_NAME}?mode=ro", uri=True)
    try:
        with (
            httpx2.Client(timeout=20) as client,
            client.stream("POST", proxy.url + "/v1/messages", json=body, headers=headers) as r,
        ):
            lines = r.iter_lines()
            for line in lines:
                if line.startswith("data:") and "content_block_delta" in line:
                    break
            assert locked.is_set()
            pending = reader.execute(
                "select s.status, a.outcome from steps s join attempts a on a.step_id = s.id"
            ).fetchall()
            assert pending == [("pending", "pending")]  # the content did not wait for them
            lock.pop().close()
            rest = [json.loads(x[5:]) for x in lines if x.startswith("data:")]
        assert rest[-1]["type"] == "message_stop"
        served = reader.execute(
            "select s.status, a.outcome from steps s join attempts a on a.step_id = s.id"
        ).fetchall()
        assert served == [("ok", "ok")]
    finally:
        for stack in lock:
            stack.close()
        reader.close()
