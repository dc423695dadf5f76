"""A step's writes between two of its actions commit together, just before the action
(`Guard._batched`, `Store.batch`): one commit before the model call where there were three
(the checkpoint, the retry budget's row, the attempt), one after the answer where there were
two or more. What is written before a call is committed — seen by another connection — before
the provider sees the request; a user's callback runs with no transaction open."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import anthropic
import pytest

import agentguard
from agentguard.errors import StoreError
from agentguard.snapshots import ShadowRepo
from agentguard.store import DB_NAME, Store
from agentguard.testing import FakeProvider, RecordedRequest, Turn
from tests.conftest import API_KEY, ATTEMPTS, storm, user

OPUS, SONNET = "claude-opus-4-7", "claude-sonnet-4-6"


def commits_of(store: Store) -> list[str]:
    """Every COMMIT the process's connection to the store runs from now on."""
    seen: list[str] = []
    store.db.conn.set_trace_callback(lambda sql: seen.append(sql) if sql == "COMMIT" else None)
    return seen


def other_connection(home: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(home / DB_NAME, timeout=0)  # never waits: a lock held is an error
    conn.row_factory = sqlite3.Row
    return conn


def test_what_a_step_writes_before_its_call_is_one_commit_seen_before_the_call(
    project: Path, home: Path, clock: Any
) -> None:
    seen_at_call: dict[str, Any] = {}

    def model(request: RecordedRequest) -> Turn:
        # the provider has the request: what another connection (a watcher, another
        # process, a crash) finds in the store now
        with other_connection(home) as conn:
            seen_at_call["steps"] = [dict(r) for r in conn.execute("select * from steps")]
            seen_at_call["attempts"] = [dict(r) for r in conn.execute("select * from attempts")]
            seen_at_call["messages"] = conn.execute("select count(*) from messages").fetchone()[0]
            seen_at_call["traffic"] = conn.execute("select count(*) from route_traffic").fetchone()
        seen_at_call["commits"] = len(commits)
        return Turn(text="fixed")

    with FakeProvider(model) as fake:
        client = agentguard.wrap(
            anthropic.Anthropic(base_url=fake.base_url, api_key=API_KEY),
            project=project,
            clock=clock,
            snapshots=False,  # no snapshot join between the answer and the step's end
        )
        store = Store.open(home)
        commits = commits_of(store)
        message = client.messages.create(model=OPUS, max_tokens=64, messages=[user("fix the bug")])
        total = len(commits)
        client.agentguard.close()
    assert message.content[0].text == "fixed"
    [step] = seen_at_call["steps"]
    [attempt] = seen_at_call["attempts"]
    assert step["status"] == "pending" and seen_at_call["messages"] == 1
    assert attempt["step_id"] == step["id"] and attempt["outcome"] == "pending"
    assert seen_at_call["traffic"][0] == 1  # the retry budget's row
    assert seen_at_call["commits"] == 1  # the step, its message, the budget, the attempt
    assert total == 2  # then the outcome and the step's end, together
    rows = Store.open(home).attempts(step["id"])
    assert [r["outcome"] for r in rows] == ["ok"]
    assert Store.open(home).get_step(step["id"])["status"] == "ok"


def test_a_callback_runs_with_no_transaction_open(fake: FakeProvider, guarded: Any, home: Path):
    """`on_substitution` is the user's code, and may take its time (ask someone): the step's
    batch is committed while it runs, so another process can write meanwhile."""
    fake.script(*storm(), model=OPUS)
    wrote: list[str] = []

    def on_substitution(info: Any) -> None:
        with other_connection(home) as conn:  # timeout 0: fails at once if a lock is held
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("insert into events (run_id, kind, at) values ('x', 'probe', 0)")
            conn.execute("ROLLBACK")
        wrote.append(info.served_model)

    client = guarded(
        chain=[f"anthropic:{OPUS}", f"anthropic:{SONNET}"], on_substitution=on_substitution
    )
    message = client.messages.create(model=OPUS, max_tokens=64, messages=[user("fix it")])
    assert agentguard.info(message).served_model == SONNET
    assert wrote == [SONNET]
    assert len(Store.open(home).attempts(agentguard.info(message).step_id)) == ATTEMPTS + 1


def test_a_failed_write_inside_a_batch_is_undone_alone(tmp_path: Path) -> None:
    store = Store(tmp_path / DB_NAME)
    store.insert_run({"id": "r", "status": "running", "created_at": 1.0, "updated_at": 1.0})
    with pytest.raises(RuntimeError, match="the step broke"), store.batch():
        store.insert_event("r", "kept", {}, at=2.0, step_id=None)
        with pytest.raises(sqlite3.IntegrityError), store.write() as db:
            db.conn.execute("insert into events (run_id, kind, at) values ('r', 'half', 3)")
            db.conn.execute("insert into runs (id) values ('r')")  # a duplicate key
        raise RuntimeError("the step broke")  # after the writes: what they wrote was meant
    with other_connection(tmp_path) as conn:
        kinds = [r["kind"] for r in conn.execute("select kind from events order by id")]
    assert kinds == ["kept"]
    assert not store.db.conn.in_transaction
    store.close()


def test_a_failed_first_write_of_a_batch_is_undone_and_the_batch_goes_on(tmp_path: Path) -> None:
    """The batch's first write runs without a savepoint (undoing it is rolling back the
    transaction it began): a failure half-way through it leaves nothing of it, and the
    batch's later writes still commit, in a transaction of their own."""
    store = Store(tmp_path / DB_NAME)
    store.insert_run({"id": "r", "status": "running", "created_at": 1.0, "updated_at": 1.0})
    with store.batch():
        with pytest.raises(sqlite3.IntegrityError), store.write() as db:
            db.conn.execute("insert into events (run_id, kind, at) values ('r', 'half', 3)")
            db.conn.execute("insert into runs (id) values ('r')")  # a duplicate key
        assert not store.db.conn.in_transaction
        store.insert_event("r", "kept", {}, at=4.0, step_id=None)
    with other_connection(tmp_path) as conn:
        kinds = [r["kind"] for r in conn.execute("select kind from events order by id")]
    assert kinds == ["kept"]
    store.close()


def test_a_failed_one_statement_write_inside_a_batch_is_undone_alone(tmp_path: Path) -> None:
    """A store method that runs one statement takes no savepoint inside a batch: SQLite
    undoes the failed statement itself, and what the batch wrote before and after stays."""
    store = Store(tmp_path / DB_NAME)
    store.insert_run({"id": "r", "status": "running", "created_at": 1.0, "updated_at": 1.0})
    statements: list[str] = []
    store.db.conn.set_trace_callback(statements.append)
    with store.batch():
        store.insert_event("r", "before", {}, at=2.0, step_id=None)
        with pytest.raises(sqlite3.IntegrityError):
            store.insert_run({"id": "r", "status": "running"})  # a duplicate key
        store.insert_event("r", "after", {}, at=3.0, step_id=None)
    store.db.conn.set_trace_callback(None)
    assert not [s for s in statements if s.startswith(("SAVEPOINT", "RELEASE", "ROLLBACK"))]
    with other_connection(tmp_path) as conn:
        kinds = [r["kind"] for r in conn.execute("select kind from events order by id")]
        runs = conn.execute("select count(*) from runs").fetchone()[0]
    assert kinds == ["before", "after"] and runs == 1
    store.close()


def test_a_step_takes_one_savepoint_at_most(project: Path, home: Path, clock: Any) -> None:
    """Savepoints cost two statements each on the request's critical path: a served step
    takes one (its end, two rows) where it took one per row."""
    with FakeProvider(lambda _request: Turn(text="fixed")) as fake:
        client = agentguard.wrap(
            anthropic.Anthropic(base_url=fake.base_url, api_key=API_KEY),
            project=project,
            clock=clock,
            snapshots=False,
        )
        store = Store.open(home)
        client.messages.create(model=OPUS, max_tokens=64, messages=[user("warm up")])
        statements: list[str] = []
        store.db.conn.set_trace_callback(statements.append)
        message = client.messages.create(model=OPUS, max_tokens=64, messages=[user("fix it")])
        store.db.conn.set_trace_callback(None)
        client.agentguard.close()
    assert agentguard.info(message).served_model == OPUS
    assert sum(s.startswith("SAVEPOINT") for s in statements) <= 1, statements
    assert statements.count("COMMIT") == 2


def test_query_is_for_reads(tmp_path: Path) -> None:
    store = Store(tmp_path / DB_NAME)
    with pytest.raises(StoreError, match="for reads"):
        store.query("create table t (x)")
    assert store.query("select 1 as one") == [{"one": 1}]
    store.close()


def test_the_wal_is_still_checkpointed_when_steps_end_inside_batches(tmp_path: Path) -> None:
    """The step ends inside a batch now; the WAL checkpoint that was due runs when it commits
    (without it the WAL grows ~29 MB over these steps)."""
    store = Store(tmp_path / DB_NAME)
    store.insert_run({"id": "r", "status": "running", "created_at": 1.0, "updated_at": 1.0})
    big = [{"position": 0, "role": "user", "content": json.dumps("x" * 3000), "sha": "s"}]
    for i in range(1000):
        with store.batch():
            step = {"run_id": "r", "status": "running", "started_at": float(i), "request": "q"}
            step_id, _ = store.begin_step(step, big, None)
        with store.batch():
            store.finish_step(step_id, {"status": "ok"}, "r", {"updated_at": float(i)})
    assert (tmp_path / f"{DB_NAME}-wal").stat().st_size < 4_000_000
    store.close()


class SnapshotsStarted(threading.Event):
    """Set when a working-tree snapshot starts; `at`: when each did (time.monotonic)."""

    def __init__(self) -> None:
        super().__init__()
        self.at: list[float] = []


def snapshots_started(monkeypatch: pytest.MonkeyPatch) -> SnapshotsStarted:
    """Watch ShadowRepo.snapshot (it runs on the snapshot thread) start, from now on."""
    started = SnapshotsStarted()
    snapshot = ShadowRepo.snapshot

    def watched(self: ShadowRepo, *args: Any, **kwargs: Any) -> Any:
        started.at.append(time.monotonic())
        started.set()
        return snapshot(self, *args, **kwargs)

    monkeypatch.setattr(ShadowRepo, "snapshot", watched)
    return started


def test_a_steps_snapshot_starts_only_after_its_call_is_on_its_way(
    project: Path, home: Path, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The snapshot's git processes wait SNAPSHOT_START_DELAY_S after the commit that sends
    the call: a provider on this machine (a gateway, a local model server) reads the request
    first instead of sharing the CPUs with them."""
    from agentguard.tree_keeping import SNAPSHOT_START_DELAY_S

    started = snapshots_started(monkeypatch)
    marks: dict[str, float] = {}

    def on_sql(sql: str) -> None:
        if sql == "COMMIT":
            marks.setdefault("commit", time.monotonic())  # the step's first: before the call

    with FakeProvider(lambda _request: Turn(text="fixed")) as fake:
        client = agentguard.wrap(
            anthropic.Anthropic(base_url=fake.base_url, api_key=API_KEY),
            project=project,
            clock=clock,
        )
        client.agentguard.store.db.conn.set_trace_callback(on_sql)
        message = client.messages.create(model=OPUS, max_tokens=64, messages=[user("fix it")])
        client.agentguard.close()
    assert message.content[0].text == "fixed"
    assert agentguard.info(message).checkpoint is not None  # the snapshot was taken, joined
    assert started.at[0] - marks["commit"] >= SNAPSHOT_START_DELAY_S


def test_a_blocking_call_made_inside_a_running_loop_still_snapshots_during_the_call(
    project: Path, home: Path, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync client used where an event loop is running (a notebook, an async function that
    blocks): the snapshot is not deferred to a loop turn that only comes after the answer —
    it runs while the provider works, as in any blocking call."""
    import asyncio

    started = snapshots_started(monkeypatch)
    during_call: list[bool] = []

    def model(_request: RecordedRequest) -> Turn:
        during_call.append(started.wait(timeout=5))  # set at once unless it was deferred
        return Turn(text="fixed")

    async def in_a_loop() -> Any:
        client = agentguard.wrap(
            anthropic.Anthropic(base_url=fake.base_url, api_key=API_KEY),
            project=project,
            clock=clock,
        )
        try:
            return client.messages.create(model=OPUS, max_tokens=64, messages=[user("fix it")])
        finally:
            client.agentguard.close()

    with FakeProvider(model) as fake:
        message = asyncio.run(in_a_loop())
    assert message.content[0].text == "fixed"
    assert during_call == [True]
