"""Fleet mode beyond the store's own methods: gc, resume and the demo when every machine shares
one PostgreSQL store but keeps its own shadow git stores (its own AGENTGUARD_HOME).

Two "machines" here are two homes on this one host, each with its own handle on one fresh
PostgreSQL schema; the SQLite twin of each test, where the question makes sense there, runs
through the `engine` fixture.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentguard.home import project_key
from agentguard.resuming import due_runs
from agentguard.retention import RetentionPolicy, collect
from agentguard.snapshots import ShadowRepo
from agentguard.store import STORE_ENV, open_store
from tests.conftest import Engine
from tests.test_retention import DAY, NOW, World, add_run, pruned_at

AGE_ONLY = RetentionPolicy(max_age_days=30, keep_runs=0)


@pytest.fixture
def machines(postgres_schema_url: str, tmp_path: Path, project: Path) -> Iterator[list[World]]:
    """Two machines on one shared store, each with its own home and shadow store of the same
    project path (CI runners all check the repository out at the same place)."""
    worlds = []
    for name in ("machine-a", "machine-b"):
        home = tmp_path / name
        store = open_store(home, url=postgres_schema_url)
        shadow = ShadowRepo(project, home / "shadow" / project_key(project))
        worlds.append(World(home, project, store, shadow))
    yield worlds
    for world in worlds:
        world.store.close()


def test_gc_on_one_machine_leaves_the_other_machines_snapshots_alone(
    machines: list[World],
) -> None:
    """A's shadow store cannot hold B's snapshots: their rows (same project path) are not
    "missing" from A's store, they were never in it. Only B's gc may mark them pruned."""
    a, b = machines
    a_old = add_run(a, "a-old", age_days=60)
    a_new = add_run(a, "a-new", age_days=1)
    b_old = add_run(b, "b-old", age_days=60)
    b_new = add_run(b, "b-new", age_days=1)

    dry = collect(a.store, AGE_ONLY, dry_run=True, now=NOW)
    assert (dry.runs_pruned, dry.snapshots_pruned) == (["a-old"], 2)

    report = collect(a.store, AGE_ONLY, now=NOW)

    assert report.runs_pruned == ["a-old"] and report.snapshots_pruned == 2
    marks = pruned_at(a)
    assert [marks[c] for c in a_old] == [NOW, NOW]
    assert all(marks[c] is None for c in a_new + b_old + b_new)
    assert [e["kind"] for e in a.store.events("a-old")] == ["snapshots_pruned"]
    [event] = a.store.events("a-old")
    detail = json.loads(event["detail"])
    assert (detail["store"], detail["host"]) == (str(a.store_dir), socket.gethostname())
    assert a.store.events("b-old") == []
    assert all(b.shadow.has_commit(c) for c in b_old + b_new)

    # B's own gc then prunes B's old run, and leaves A's rows as A's gc left them
    again = collect(b.store, AGE_ONLY, now=NOW + DAY)
    assert again.runs_pruned == ["b-old"] and again.snapshots_pruned == 2
    marks = pruned_at(b)
    assert [marks[c] for c in b_old] == [NOW + DAY] * 2
    assert [marks[c] for c in a_old] == [NOW, NOW]
    assert all(marks[c] is None for c in a_new + b_new)


def test_due_runs_come_in_the_same_order_on_both_engines(engine: Engine) -> None:
    """A waiting run without a next attempt time is due at once, and first: SQLite sorts
    NULL first, PostgreSQL last unless told."""
    store = engine.open()
    for run_id, when in (("later", 200.0), ("unset", None), ("sooner", 100.0)):
        store.insert_run(
            {"id": run_id, "name": run_id, "status": "waiting", "next_attempt_at": when}
        )
    store.insert_run({"id": "done", "name": "done", "status": "completed"})
    assert [r["id"] for r in due_runs(store, now=300.0)] == ["unset", "sooner", "later"]
    assert [r["id"] for r in due_runs(store, now=150.0)] == ["unset", "sooner"]


def test_the_demo_stays_on_this_machine_whatever_agentguard_store_says(
    postgres_schema_url: str, tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo's scripted 529 storm is fake: in a shared store it would count against the
    fleet's breaker, retry budget and held retries on the real route names, and in its stats.
    It runs on this machine's SQLite store, and AGENTGUARD_STORE is left as it was."""
    import psycopg

    from agentguard.demo import run_demo, summary
    from agentguard.store import Store

    monkeypatch.setenv(STORE_ENV, postgres_schema_url)
    result = run_demo(home=home, workdir=tmp_path, echo=lambda line: None)

    assert os.environ[STORE_ENV] == postgres_schema_url
    assert result.tests_pass and len(result.steps) == 6
    local = Store.open(home)
    try:
        assert [s["number"] for s in local.steps(result.run_id)] == [1, 2, 3, 4, 5, 6]
    finally:
        local.close()
    assert "project test: PASS" in summary(result)
    with psycopg.connect(postgres_schema_url) as conn:  # never even opened: no schema made
        tables = conn.execute(
            "select table_name from information_schema.tables where table_schema = current_schema()"
        ).fetchall()
    assert tables == []


def test_an_undo_of_another_machines_restore_says_where_its_backup_is(
    machines: list[World],
    postgres_schema_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """B restored a snapshot (its backup went to B's shadow store); on A, whose own shadow
    store of the project has no such commit, --undo names B instead of calling it pruned."""
    from agentguard.cli import main
    from agentguard.errors import SnapshotError
    from agentguard.restoring import open_shadow, restore, snapshot_target, undo_target

    a, b = machines
    add_run(a, "a-run", age_days=1, steps=1)
    first, _ = add_run(b, "b-run", age_days=1)
    here = socket.gethostname()
    with monkeypatch.context() as patch:
        patch.setattr(socket, "gethostname", lambda: "machine-b")
        run = b.store.get_run("b-run")
        done = restore(b.store, "b-run", snapshot_target(open_shadow(b.store, run), run, first))
    assert not a.shadow.has_commit(done.backup)

    with pytest.raises(
        SnapshotError, match=rf"was saved on machine-b.*not in this one's \({here}\)"
    ):
        restore(a.store, "b-run", undo_target(a.store, a.store.get_run("b-run")))

    monkeypatch.setenv(STORE_ENV, postgres_schema_url)
    capsys.readouterr()
    assert main(["--home", str(a.home), "restore", "b-run", "--undo", "--yes"]) == 2
    err = capsys.readouterr().err
    assert "was saved on machine-b" in err and "run this on machine-b" in err
    assert "pruned" not in err


def test_resume_opens_the_store_the_projects_config_names_as_wrap_does(
    postgres_schema_url: str,
    fake: Any,
    project: Path,
    home: Path,
    clock: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`store = "postgresql://…"` in the project's agentguard.toml: wrap() records there, so
    resume() must look there too (not in the local SQLite file), and the resumed run's
    wrap() goes on there."""
    import anthropic
    import psycopg

    import agentguard
    from agentguard.store import DB_NAME
    from tests.conftest import API_KEY, user

    monkeypatch.delenv(STORE_ENV, raising=False)
    (project / "agentguard.toml").write_text(f'store = "{postgres_schema_url}"\n')

    def client() -> Any:
        return anthropic.Anthropic(base_url=fake.base_url, api_key=API_KEY)

    first = agentguard.wrap(client(), project=project, clock=clock)
    first.messages.create(model="claude-opus-4-7", max_tokens=8, messages=[user("one")])
    first.agentguard.close(status="interrupted")
    first.agentguard.store.close()

    run = agentguard.resume(first.run_id, project=project, restore=False)
    assert (run.run_id, run.step, run.status) == (first.run_id, 1, "interrupted")
    assert postgres_schema_url not in repr(run)  # the URL may carry a password
    again = run.wrap(client(), clock=clock)
    again.messages.create(model="claude-opus-4-7", max_tokens=8, messages=run.messages)
    again.agentguard.close()
    again.agentguard.store.close()

    with psycopg.connect(postgres_schema_url) as conn:
        numbers = conn.execute(
            "select number from steps where run_id = %s order by number", [first.run_id]
        ).fetchall()
    assert numbers == [(1,), (2,)]
    assert not (home / DB_NAME).exists()
    # an explicit store_url wins over the config file: the local store has no such run
    with pytest.raises(agentguard.RunNotFound):
        agentguard.resume(first.run_id, project=project, restore=False, store_url="sqlite")


def test_a_run_id_prefix_finds_its_run_in_any_case_on_both_engines(engine: Engine) -> None:
    """`agentguard show AB12…` finds run ab12… on PostgreSQL as on SQLite (whose like ignores
    ASCII case; PostgreSQL's does not)."""
    from agentguard.commands.common import find_run

    store = engine.open()
    store.insert_run({"id": "ab12cd34-0000", "status": "completed", "created_at": 1.0})
    assert find_run(store, "AB12")["id"] == "ab12cd34-0000"
    assert find_run(store, "ab12cd")["id"] == "ab12cd34-0000"
