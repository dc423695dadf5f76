"""Eight agent processes, one store: nothing is lost, nothing is locked out.

Eight real agent loops (tests/agent_child.py, forked from one zygote) start at the same instant
and write to ONE AGENTGUARD_HOME: four share one project folder (and so one shadow store, whose
lock they take in turn), four have a folder each. Every agent runs STEPS guarded steps of a
tool loop, streaming every second and third step, with its own scripted 529s, 503s and
mid-stream overloads so retries and attempt rows interleave with the other processes' writes.

The fake provider's request log is the ground truth: every process exits 0 with nothing from
SQLite in its output, and the store holds exactly the rows that log implies — one attempt row
per request (same request-id, same outcome), one step per answered request, each step's
conversation exactly what its requests carried, only the new messages stored, one checkpoint
per step — and passes `PRAGMA integrity_check`.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentguard.store import Store
from agentguard.testing import FakeProvider, Reply, error, midstream_error, ok, overloaded
from tests.agent_child import MARKER_HEADER, Zygote, scripted_turn
from tests.conftest import GIT_ENV

AGENTS = 8
SHARED = 4  # agents 0..3 work in one project folder, the others in one each
TOTAL = 9  # tool calls per agent
STEPS = TOTAL + 1  # ... then the final answer


def faults(agent: int) -> list[list[Reply]]:
    """Each agent's own script, step by step: a different mix of failures, then an answer."""
    mixes = [[], [overloaded()], [error(503)], [overloaded(), overloaded()], [midstream_error(2)]]
    return [
        [*mixes[(agent + step) % len(mixes)], ok(latency=0.002 * (agent % 3))]
        for step in range(STEPS)
    ]


def expected_replies(agent: int) -> list[str]:
    """What the fake answers, request by request (the agent streams steps 1, 2, 4, 5, ...;
    a mid-stream overload on a step sent without streaming is a plain 529)."""
    return [
        reply.sent_as(stream=step % 3 != 0).label
        for step, replies in enumerate(faults(agent))
        for reply in replies
    ]


@pytest.fixture(scope="module")
def fleet() -> Iterator[tuple[FakeProvider, Zygote]]:
    with FakeProvider() as fake:
        fake.set_model(lambda request: scripted_turn(request.messages, TOTAL))
        zygote = Zygote(warm_up_url=fake.base_url)
        try:
            yield fake, zygote
        finally:
            zygote.close()


def make_project(path: Path) -> Path:
    path.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | GIT_ENV
    (path / "app.py").write_text("print('hello')\n")
    (path / "scratch.txt").write_text("scratch\n")
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=path, env=env, check=True)
    subprocess.run(["git", "add", "-A"], cwd=path, env=env, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "init"], cwd=path, env=env, check=True)
    return path


def rows(db: sqlite3.Connection, sql: str, *params: Any) -> list[dict[str, Any]]:
    return [dict(row) for row in db.execute(sql, params)]


def test_eight_processes_share_one_store_without_losing_a_row(
    fleet: tuple[FakeProvider, Zygote], tmp_path: Path
) -> None:
    fake, zygote = fleet
    home = tmp_path / "home"
    shared = make_project(tmp_path / "shared")
    start_at = time.time() + 0.5  # every agent forked and ready before any begins
    jobs = []
    for agent in range(AGENTS):
        model = f"claude-fleet-{tmp_path.name}-{agent}"
        fake.script(*(reply for replies in faults(agent) for reply in replies), model=model)
        project = shared if agent < SHARED else make_project(tmp_path / f"own-{agent}")
        jobs.append(
            {
                "id": f"{tmp_path.name}-{agent}",
                "base_url": fake.base_url,
                "project": str(project),
                "home": str(home),
                "marker": f"{tmp_path.name}-agent-{agent}",
                "model": model,
                "result": str(tmp_path / f"agent-{agent}.json"),
                "log": str(tmp_path / f"agent-{agent}.log"),
                "start_at": start_at,
            }
        )
    for job in jobs:
        zygote.start(job)
    ends = [zygote.wait(job["id"], timeout=120) for job in jobs]

    for job, end in zip(jobs, ends, strict=True):
        log = Path(job["log"]).read_text() if Path(job["log"]).exists() else ""
        assert (end["code"], end["signal"]) == (0, None), f"{job['id']}: {end}\n{log}"
        for trouble in ("database is locked", "OperationalError", "Traceback", "snapshot failed"):
            assert trouble not in log, f"{job['id']}: {log}"

    requests = fake.requests
    spans: dict[str, tuple[float, float]] = {}
    for request in requests:
        marker = request.headers.get(MARKER_HEADER, "")
        first, last = spans.get(marker, (request.received_at, request.received_at))
        spans[marker] = (min(first, request.received_at), max(last, request.received_at))
    db = sqlite3.connect(home / "agentguard.db")
    db.row_factory = sqlite3.Row
    try:
        assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
        all_attempts = rows(db, "select * from attempts")
        all_steps = rows(db, "select * from steps")
        assert len(rows(db, "select id from runs")) == AGENTS
        total_requests = 0
        for agent, job in enumerate(jobs):
            run_id = json.loads(Path(job["result"]).read_text())["run_id"]
            sent = sorted(
                (r for r in requests if r.headers.get(MARKER_HEADER) == job["marker"]),
                key=lambda r: r.received_at,
            )
            total_requests += len(sent)
            assert [r.reply for r in sent] == expected_replies(agent), job["id"]
            check_run(db, run_id, sent, job)
        assert len(all_attempts) == total_requests
        # they really ran at the same time: every agent had begun before any had finished
        firsts, lasts = zip(*(spans[job["marker"]] for job in jobs), strict=True)
        assert max(firsts) < min(lasts), "the agents did not overlap"
        assert len(all_steps) == AGENTS * STEPS
    finally:
        db.close()
    # the four agents of the shared folder took turns in one shadow store
    shadows = sorted(p.name for p in (home / "shadow").iterdir())
    assert len(shadows) == AGENTS - SHARED + 1
    shutil.rmtree(home / "shadow")  # large; nothing else needs it


def check_run(db: sqlite3.Connection, run_id: str, sent: list[Any], job: dict) -> None:
    """One agent's rows are exactly what its requests imply."""
    [run] = rows(db, "select * from runs where id = ?", run_id)
    assert run["status"] == "completed", run
    attempts = rows(db, "select * from attempts where run_id = ? order by id", run_id)
    # one attempt row per request, in order, carrying that request's id and outcome
    assert [a["request_id"] for a in attempts] == [r.request_id for r in sent], job["id"]
    for attempt, request in zip(attempts, sent, strict=True):
        if request.reply == "ok":
            assert (attempt["outcome"], attempt["status_code"]) == ("ok", 200)
        else:
            code = 200 if request.reply == "midstream_error" else int(request.reply[6:])
            assert (attempt["outcome"], attempt["status_code"]) == ("retry", code), request.reply
    answered = [r for r in sent if r.reply == "ok"]
    assert len(answered) == STEPS

    steps = rows(db, "select * from steps where run_id = ? order by number", run_id)
    assert [s["number"] for s in steps] == list(range(1, STEPS + 1))
    assert all(s["status"] == "ok" and s["checkpoint"] and s["response"] for s in steps)
    store_messages = rows(db, "select * from messages where run_id = ?", run_id)
    by_step = {s["id"]: s for s in steps}
    for step in steps:
        mine = [a for a in attempts if a["step_id"] == step["id"]]
        assert [a["number"] for a in mine] == list(range(1, len(mine) + 1))
        assert mine[-1]["outcome"] == "ok" and all(a["outcome"] == "retry" for a in mine[:-1])
        ids = {a["request_id"] for a in mine}
        carried = {len(r.body["messages"]) for r in sent if r.request_id in ids}
        assert carried == {step["total_len"]}, step["number"]
        new = [m for m in store_messages if m["step_id"] == step["id"]]
        parent = by_step.get(step["parent_id"])
        assert len(new) == step["total_len"] - (parent["total_len"] if parent else 0)
    # only the new messages: the whole conversation is stored once
    assert len(store_messages) == len(answered[-1].body["messages"]) == 1 + 2 * TOTAL
    snapshots = rows(db, "select * from snapshots where run_id = ? and kind = 'checkpoint'", run_id)
    assert sorted(s["step_id"] for s in snapshots) == sorted(by_step)
    # each step's stored conversation is exactly what its requests carried
    store = Store.open(Path(job["home"]))
    try:
        for step in steps:
            conversation = store.conversation(step["id"])
            ids = {a["request_id"] for a in attempts if a["step_id"] == step["id"]}
            assert all(r.body["messages"] == conversation for r in sent if r.request_id in ids)
    finally:
        store.close()
