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
from tests.conftest import user

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


def test_watch_says_it_does_not_read_postgresql_yet(fleet_store: str, capsys: Any) -> None:
    capsys.readouterr()
    assert main(["watch"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("agentguard: agentguard watch does not read a PostgreSQL store yet")
    assert err.count("\n") == 1
