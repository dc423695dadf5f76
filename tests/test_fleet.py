"""Fleet mode: every face of agentguard on one PostgreSQL store ($AGENTGUARD_STORE).

A guarded client, the proxy and the commands open the store the environment names; here it is
a fresh schema on the test server. What they write there is read back with psycopg itself,
never through agentguard, and what another machine wrote is seen by this one.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import psycopg
import pytest

import agentguard
from agentguard.cli import main
from agentguard.errors import RunBusy
from agentguard.metrics import compute
from agentguard.store import DB_NAME, STORE_ENV, open_store
from agentguard.testing import FakeProvider, overloaded
from tests.conftest import Engine, user

MODEL = "claude-opus-4-7"


@pytest.fixture
def fleet_store(postgres_schema_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(STORE_ENV, postgres_schema_url)
    return postgres_schema_url


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def test_a_guarded_run_writes_to_the_shared_store(
    fleet_store: str, fake: FakeProvider, guarded: Any, home: Path, clock: Any, capsys: Any
) -> None:
    fake.script(overloaded(), overloaded())
    client = guarded()
    client.messages.create(model=MODEL, max_tokens=16, messages=[user("one")])
    client.messages.create(model=MODEL, max_tokens=16, messages=[user("two")])
    run_id = client.run_id
    client.agentguard.close()
    [(status, host)] = _rows(
        fleet_store, f"select status, hostname from runs where id = '{run_id}'"
    )
    assert (status, host) == ("completed", socket.gethostname())
    outcomes = _rows(fleet_store, "select outcome from attempts order by id")
    assert [o for (o,) in outcomes] == ["retry", "retry", "ok", "ok"]
    assert not (home / DB_NAME).exists()  # nothing went to this machine's SQLite file

    capsys.readouterr()
    assert main(["runs", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["runs"]
    assert [r["id"] for r in listed] == [run_id]
    store = open_store()  # the figures `stats` and `metrics` show, from the shared store
    figures = compute(store, since=None, until=clock.now() + 1)
    assert (figures.steps_ok, figures.attempts, figures.overloaded) == (2, 4, 2)
    store.close()


def test_a_run_live_on_another_machine_cannot_be_resumed_here(
    fleet_store: str, project: Path
) -> None:
    guard = agentguard.Guard(project, snapshots=False)
    guard.store.update_run(guard.run_id, hostname="ci-runner-7", pid=4242)
    with pytest.raises(RunBusy, match="ci-runner-7"):
        agentguard.resume(guard.run_id)
    guard._closed = True  # "its" process lives on the other machine
    guard.store.close()


def _take_over(run_id: str, project: str, env: dict[str, str], start: Any, end: Any, out: Any):
    """A second "machine": take the run over once both are ready; hold it until both tried.

    Both pass the pre-check (`ensure_not_live`, made to wait for the other here) before either
    takes the run: only a take-over decided inside the write transaction can refuse one."""
    import os

    from agentguard import resuming

    os.environ.update(env)
    checked = resuming.ensure_not_live

    def both_checked(*args: Any, **kwargs: Any) -> Any:
        run = checked(*args, **kwargs)
        start.wait()
        return run

    resuming.ensure_not_live = both_checked  # type: ignore[assignment]
    try:
        agentguard.Guard(project, snapshots=False, resume=run_id)
        out.put("won")
    except RunBusy:
        out.put("busy")
    end.wait()


def test_two_takers_of_one_run_one_wins(engine: Engine, project: Path) -> None:
    """Two processes resuming the same run at the same moment, on each engine."""
    import multiprocessing

    if engine.name == "sqlite":
        env = {"AGENTGUARD_HOME": str(Path(engine.locator).parent), STORE_ENV: ""}
    else:
        env = {STORE_ENV: engine.locator}
    store = engine.open()
    guard = agentguard.Guard(project, snapshots=False, store=store)
    guard.close()
    ctx = multiprocessing.get_context("spawn")
    start, end, out = ctx.Barrier(2), ctx.Barrier(3), ctx.Queue()
    takers = [
        ctx.Process(target=_take_over, args=(guard.run_id, str(project), env, start, end, out))
        for _ in range(2)
    ]
    for taker in takers:
        taker.start()
    results = sorted(out.get(timeout=120) for _ in takers)
    end.wait(timeout=120)
    for taker in takers:
        taker.join(timeout=120)
    assert results == ["busy", "won"]


class _Counter:
    def __init__(self) -> None:
        self.count = 0

    def mark(self) -> int:
        return self.count


def test_with_a_change_feed_a_wait_asks_only_after_an_announcement() -> None:
    """Across a fleet a backing-off step must not query the server every poll."""
    from agentguard.clock import _Asking

    feed = _Counter()
    asking = _Asking(feed)
    assert [asking.due() for _ in range(5)] == [False] * 5  # nothing announced: no query
    feed.count += 1
    assert asking.due() and not asking.due()  # one query per announcement
    assert _Asking(None).due() and _Asking(None).due()  # no feed (SQLite): every poll


def test_a_step_backing_off_wakes_on_another_machines_answer(fleet_store: str) -> None:
    """Machine B's answer from the route, committed on the shared store, wakes machine A's
    wait through LISTEN/NOTIFY, long before its backoff would end."""
    import threading

    from agentguard.breaker import Breaker
    from agentguard.clock import SystemClock

    here, there = open_store(), open_store()  # two machines' handles: two pools, two listeners
    clock = SystemClock()
    route, sent_at = "anthropic:claude-opus-4-7", clock.now()
    Breaker(here, clock).record_failure(route)
    asked: list[bool] = []

    def recovered() -> bool:
        asked.append(Breaker(here, clock).recovered_since(route, sent_at))
        return asked[-1]

    waited: list[float] = []
    changes = here.changes
    waiter = threading.Thread(target=lambda: waited.append(clock.wait(60, recovered, changes)))
    waiter.start()
    Breaker(there, clock).record_success(route, sent_at=sent_at + 0.001)
    waiter.join(timeout=60)
    assert waited and waited[0] < 30 and asked[-1]  # woken by the answer, not by the timeout
    assert len(asked) <= 3  # asked when told, not every 50 ms
    here.close()
    there.close()


def test_runs_shows_the_machine_of_each_run(
    fleet_store: str, project: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours = agentguard.Guard(project, snapshots=False)
    theirs = agentguard.Guard(project, snapshots=False)
    theirs.store.update_run(theirs.run_id, hostname="ci-runner-7")
    for guard in (ours, theirs):
        guard.close()
    capsys.readouterr()
    assert main(["runs", "--json"]) == 0
    hosts = {r["id"]: r["hostname"] for r in json.loads(capsys.readouterr().out)["runs"]}
    assert hosts == {ours.run_id: socket.gethostname(), theirs.run_id: "ci-runner-7"}
    monkeypatch.setenv("COLUMNS", "100")
    assert main(["runs"]) == 0
    table = capsys.readouterr().out
    assert "host" in table and "ci-runner-7" in table
    for guard in (ours, theirs):
        guard.store.close()


def test_steps_go_on_after_the_server_drops_every_connection(
    fleet_store: str, fake: FakeProvider, guarded: Any
) -> None:
    """The server ends every agentguard connection between two steps (what a restart does):
    the next step reconnects; nothing is lost or written twice."""
    client = guarded()
    client.messages.create(model=MODEL, max_tokens=16, messages=[user("one")])
    with psycopg.connect(fleet_store, autocommit=True) as admin:
        killed = admin.execute(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity "
            "where datname = current_database() and pid <> pg_backend_pid() "
            "and backend_type = 'client backend'"
        ).fetchone()
    assert killed and killed[0] >= 1
    client.messages.create(model=MODEL, max_tokens=16, messages=[user("two")])
    run_id = client.run_id
    client.agentguard.close()
    steps = _rows(fleet_store, f"select number, status from steps where run_id='{run_id}'")
    assert sorted(steps) == [(1, "ok"), (2, "ok")]
    assert [o for (o,) in _rows(fleet_store, "select outcome from attempts")] == ["ok", "ok"]
