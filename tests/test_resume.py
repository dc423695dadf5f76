"""Resume: the last consistent (conversation, tree) pair, and the same run going on.

Every test runs on both engines: the SQLite file under AGENTGUARD_HOME, and a PostgreSQL
schema named by $AGENTGUARD_STORE (fleet mode), which every store the test opens then uses."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

import agentguard
from agentguard.guard import StepRequest
from agentguard.metrics import compute
from agentguard.resuming import due_runs, mark_interrupted
from agentguard.routes import Route
from agentguard.store import DB_NAME, STORE_ENV, open_store
from agentguard.testing import ToolCall, Turn, overloaded
from tests.conftest import API_KEY, ENGINES, dead_pid, storm, user

MODEL = "claude-opus-4-7"
TOOLS = [{"name": "write_file", "description": "write", "input_schema": {"type": "object"}}]


@pytest.fixture(autouse=True, params=ENGINES)
def engine_name(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, home: Path
) -> Iterator[str]:
    """The store every guard, resume() and open_store() of the test uses."""
    if request.param == "postgresql":
        monkeypatch.setenv(STORE_ENV, request.getfixturevalue("postgres_schema_url"))
    else:
        monkeypatch.delenv(STORE_ENV, raising=False)
    yield request.param
    if request.param == "postgresql":  # it ran on PostgreSQL: nothing went to a SQLite file
        assert not (home / DB_NAME).exists()


@pytest.fixture
def opened() -> Iterator[Callable[[], Any]]:
    """Factory: a handle on the test's store, closed after the test."""
    handles: list[Any] = []

    def make() -> Any:
        handles.append(open_store())
        return handles[-1]

    yield make
    for handle in handles:
        handle.close()


def writer_model(request):
    """Asks to write step-K.txt until it has seen three tool results."""
    done = json.dumps(request.body).count("tool_result")
    if done >= 3:
        return Turn(text="all done")
    return Turn(text="", tool_calls=[ToolCall("write_file", {"path": f"step-{done}.txt"})])


def agent_loop(client, project: Path, messages: list, steps: int) -> list:
    """A small tool loop: the model asks for a file, the agent writes it and answers."""
    for _ in range(steps):
        reply = client.messages.create(
            model=MODEL, max_tokens=64, system="be brief", tools=TOOLS, messages=messages
        )
        messages = [*messages, {"role": "assistant", "content": reply.content}]
        calls = [b for b in reply.content if b.type == "tool_use"]
        if not calls:
            break
        results = []
        for call in calls:
            (project / call.input["path"]).write_text(f"written by {call.id}\n")
            results.append({"type": "tool_result", "tool_use_id": call.id, "content": "ok"})
        messages = [*messages, {"role": "user", "content": results}]
    return messages


def test_resume_brings_back_the_last_step_and_its_tree(opened, fake, guarded, project, home):
    fake.set_model(writer_model)
    client = guarded()
    agent_loop(client, project, [user("write three files")], steps=2)
    run_id = client.run_id
    client.agentguard.close(status="interrupted")
    (project / "app.py").write_text("broken by a half-finished tool call\n")

    run = agentguard.resume(run_id)
    assert (run.run_id, run.step, run.model, run.status) == (run_id, 2, MODEL, "interrupted")
    # step 2's conversation plus its recorded response: the response is not asked for again
    assert len(run.messages) == 4 and run.messages[-1]["role"] == "assistant"
    assert run.pending_tool_calls[0]["input"] == {"path": "step-1.txt"}
    assert run.system == "be brief" and run.tools[0]["name"] == "write_file"
    # the tree is back at step 2's checkpoint: step-0.txt existed, step-1.txt did not yet
    assert (project / "app.py").read_text() == "def add(a, b):\n    return a - b\n"
    assert (project / "step-0.txt").exists() and not (project / "step-1.txt").exists()
    # ... and what was there is kept, so the restore can be undone
    shadow = opened().home / "shadow"
    assert run.restored is not None and run.restored.backup.commit
    assert any(shadow.rglob("*"))


def test_a_resumed_run_keeps_its_id_and_continues_its_steps(opened, fake, project, home, clock):
    fake.set_model(writer_model)
    first = agentguard.wrap(
        anthropic.Anthropic(base_url=fake.base_url, api_key=API_KEY), project=project, clock=clock
    )
    agent_loop(first, project, [user("write three files")], steps=2)
    first.agentguard.close(status="interrupted")

    run = agentguard.resume(first.run_id)
    client = run.wrap(anthropic.Anthropic(base_url=fake.base_url, api_key=API_KEY), clock=clock)
    assert client.run_id == first.run_id
    before = len(fake.requests)
    messages = list(run.messages)
    for call in run.pending_tool_calls:  # run the tools of the recorded response
        (project / call["input"]["path"]).write_text("resumed\n")
        messages.append(
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "ok"}],
            }
        )
    agent_loop(client, project, messages, steps=3)
    client.agentguard.close()

    store = opened()
    steps = store.steps(first.run_id)
    assert [s["number"] for s in steps] == [1, 2, 3, 4]
    assert len(fake.requests) - before == 2  # step 2's response was not sent again
    assert steps[2]["parent_id"] == steps[1]["id"]
    assert (steps[2]["base_len"], steps[2]["total_len"]) == (3, 5)  # only 2 new messages
    assert store.get_run(first.run_id)["status"] == "completed"
    kinds = [e["kind"] for e in store.events(first.run_id)]
    assert "resume_prepared" in kinds and "resumed" in kinds
    assert (project / "step-2.txt").exists()


def test_a_failed_step_is_resumed_to_be_sent_again(fake, guarded, project):
    fake.script(*storm())
    client = guarded()
    with pytest.raises(agentguard.RetriesExhausted):
        client.messages.create(model=MODEL, max_tokens=8, messages=[user("hello")])
    run = agentguard.resume(client.run_id)
    assert run.response is None and run.messages == [user("hello")]
    assert run.request()["model"] == MODEL and run.status == "failed"


def test_a_checkpoint_the_store_never_heard_of_is_found_by_its_ref(
    opened, fake, guarded, home, project
):
    client = guarded()
    msg = client.messages.create(model=MODEL, max_tokens=8, messages=[user("hello")])
    checkpoint = agentguard.info(msg).checkpoint
    store = opened()
    step_id = agentguard.info(msg).step_id
    store.update_step(step_id, checkpoint=None, status="pending", response=None)
    run = agentguard.resume(client.run_id)
    assert run.checkpoint == checkpoint and run.response is None


def test_restore_false_leaves_the_tree_alone(fake, guarded, project):
    client = guarded()
    client.messages.create(model=MODEL, max_tokens=8, messages=[user("hello")])
    (project / "app.py").write_text("mine\n")
    run = agentguard.resume(client.run_id, restore=False)
    assert run.restored is None and (project / "app.py").read_text() == "mine\n"


def test_bad_input_is_one_sentence_and_deletes_nothing(
    opened, fake, guarded, project, home, tmp_path
):
    with pytest.raises(agentguard.RunNotFound, match=r"No run 'nope'.*agentguard runs"):
        agentguard.resume("nope")

    client = guarded()
    client.messages.create(model=MODEL, max_tokens=8, messages=[user("hello")])
    client.agentguard.close()
    store = opened()
    step = store.steps(client.run_id)[0]
    store.update_step(step["id"], checkpoint="0" * 40)
    with pytest.raises(
        agentguard.SnapshotError, match=r"missing from the shadow store.*--no-restore"
    ):
        agentguard.resume(client.run_id)

    moved = tmp_path / "moved"
    shutil.move(project, moved)
    with pytest.raises(agentguard.ProjectError, match=r"no longer exists; move it back"):
        agentguard.resume(client.run_id)
    assert (moved / "app.py").exists()
    run = agentguard.resume(client.run_id, project=moved, restore=False)
    assert run.project == moved.resolve()


def test_waiting_runs_are_due_when_their_time_comes(opened, fake, guarded, home, clock):
    fake.script(*[overloaded() for _ in range(10)])
    client = guarded(policy="high_stakes")
    with pytest.raises(agentguard.RunQueued) as queued:
        client.messages.create(model=MODEL, max_tokens=8, messages=[user("hello")])
    store = opened()
    when = queued.value.next_attempt_at.timestamp()
    assert due_runs(store, now=when - 1) == []
    assert [r["id"] for r in due_runs(store, now=when + 1)] == [client.run_id]


def test_a_run_whose_process_died_is_marked_interrupted(home, project):
    guard = agentguard.Guard(project, snapshots=False)
    store = guard.store
    store.update_run(guard.run_id, pid=dead_pid())
    assert mark_interrupted(store) == [guard.run_id]
    assert store.get_run(guard.run_id)["status"] == "interrupted"
    guard._closed = True  # its process "died": nothing may mark it completed


def test_a_dead_runs_in_flight_step_and_attempt_become_interrupted(home, project):
    guard = agentguard.Guard(project, snapshots=False)
    route = Route(provider="anthropic", model=MODEL, kind="anthropic", base_url="http://x")
    request = StepRequest(route=route, messages=[user("hello")], params={"max_tokens": 8})
    state = guard._checkpoint(request)  # the step row is written, then its attempt ...
    guard._open_attempt(state, route, 1, guard.clock.now())  # ... and the process dies
    store = guard.store
    store.update_run(guard.run_id, pid=dead_pid())
    assert mark_interrupted(store) == [guard.run_id]
    [step] = store.steps(guard.run_id)
    assert step["status"] == "interrupted" and "process ended" in step["error"]
    [attempt] = store.attempts(step["id"])
    assert attempt["outcome"] == "interrupted" and "may or may not" in attempt["message"]
    assert compute(store, since=None, until=guard.clock.now() + 1).attempts == 0  # no outcome
    assert mark_interrupted(store) == []  # once
    guard._closed = True


def test_a_run_still_running_elsewhere_cannot_be_resumed(fake, home, project, monkeypatch):
    guard = agentguard.Guard(project, snapshots=False)
    guard.store.update_run(guard.run_id, pid=os.getppid())  # a live process that is not us
    closed: list[Any] = []
    close = type(guard.store).close

    def recording_close(store: Any) -> None:
        closed.append(store)
        close(store)

    monkeypatch.setattr(type(guard.store), "close", recording_close)
    with pytest.raises(agentguard.RunBusy, match="still running in process"):
        agentguard.Guard(project, snapshots=False, resume=guard.run_id)
    # the refused guard closed the store it had opened (a PostgreSQL pool left to the garbage
    # collector held its connections until then, and warned)
    assert len(closed) == 1 and closed[0] is not guard.store
    guard.close()
