"""`agentguard watch` over a fleet's PostgreSQL store, following it with LISTEN/NOTIFY.

The app reads the same story as on SQLite (tests/test_tui.py builds it) through its own
read-only connection, and learns that something changed from the notifications the store's
triggers send on every commit (migration m007) — not from polling the server: an idle poll
reads a counter in memory. Writers on other "machines" are other processes and connections.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from textual.widgets import Static

from agentguard.cli import main
from agentguard.errors import StoreError
from agentguard.store import DB_NAME, STORE_ENV, Store
from agentguard.store_pg import PostgresStore
from agentguard.store_pg_changes import CHANGES_CHANNEL, watcher_application
from agentguard.tui import watch
from agentguard.tui.app import WatchApp
from agentguard.tui.data import PostgresReader, StoreReader, open_reader
from agentguard.tui.screens.confirm import ConfirmRestore
from agentguard.tui.screens.run import RunScreen
from tests.conftest import storm, user
from tests.test_tui import (
    DONE,
    FAILED,
    NOW,
    OPUS,
    RUNNING,
    SONNET,
    WAITING,
    Writer,
    banner,
    build_story,
    make_app,
    ok,
    open_run,
    run,
    table,
    until,
)
from tests.test_tui_fit import cells_fit, inside

ELSEWHERE = "ci-runner-7"
THEIRS = "0ther0machine"

# Another machine's agent: a process of its own writing through PostgresStore.
OTHER_MACHINE = """
import sys
from agentguard.store_pg import PostgresStore

store = PostgresStore(sys.argv[1])
store.insert_run({
    "id": "e5f6a7b8c9d0", "name": "from-elsewhere", "project": "/srv/elsewhere",
    "status": "running", "created_at": float(sys.argv[2]), "primary_model": "claude-opus-4-7",
    "hostname": "ci-runner-7", "pid": 4242,
})
store.begin_step(
    {"run_id": "e5f6a7b8c9d0", "status": "pending", "requested_model": "claude-opus-4-7"},
    [],
    None,
)
store.close()
"""


@pytest.fixture
def pg_story(postgres_schema_url: str) -> str:
    store = PostgresStore(postgres_schema_url)
    build_story(store)
    store.close()
    return postgres_schema_url


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    """Until `predicate()` holds: waiting for an event, with a generous deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def notifications_until_sentinel(conn: psycopg.Connection, sentinel: str) -> list[str]:
    """The payloads `conn` (listening) hears before `sentinel`'s: NOTIFYs arrive in commit
    order, so whatever an earlier commit announced is in the list, and nothing else is."""
    heard: list[str] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for notify in conn.notifies(timeout=0.5):
            if notify.payload == sentinel:
                return heard
            heard.append(notify.payload)
    raise AssertionError(f"the sentinel {sentinel!r} never arrived (heard {heard})")


# -- the reader ------------------------------------------------------------------------------


def test_both_engines_read_the_same_story(home: Path, pg_story: str) -> None:
    """The reader's SQL means the same on SQLite and PostgreSQL: counts, served models,
    attempts, the metrics panel — and PostgreSQL's numbers come back as ints."""
    lite = Store.open(home)
    build_story(lite)
    lite.close()
    sqlite_reader = open_reader(home / DB_NAME)
    pg_reader = open_reader(pg_story, home=home)
    assert isinstance(sqlite_reader, StoreReader) and isinstance(pg_reader, PostgresReader)
    try:
        for limit in (500, 2):
            sqlite_page = sqlite_reader.runs_page(limit=limit)
            pg_page = pg_reader.runs_page(limit=limit)
            assert pg_page == sqlite_page
        running = next(r for r in pg_reader.runs_page().runs if r.id == RUNNING)
        assert (running.steps, running.substitutions) == (5, 1)
        assert type(running.substitutions) is int and type(running.steps) is int
        assert running.served_models == (OPUS, SONNET)
        for run_id in (DONE, RUNNING, WAITING, FAILED):
            assert pg_reader.run_detail(run_id) == sqlite_reader.run_detail(run_id)
        assert pg_reader.run_detail("no-such-run") is None
        figures = {
            name: reader.metrics(since=NOW - 86400, until=NOW, window="24h").metrics.to_dict()
            for name, reader in (("sqlite", sqlite_reader), ("postgresql", pg_reader))
        }
        assert figures["postgresql"] == figures["sqlite"]
    finally:
        sqlite_reader.close()
        pg_reader.close()


def test_the_reader_cannot_write_and_reads_one_moment(pg_story: str) -> None:
    reader = PostgresReader(pg_story)
    writer = PostgresStore(pg_story)
    try:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            reader.query("insert into blobs (sha, body) values ('x', 'y')")
        with reader.reading():
            before = reader.query("select count(*) as n from runs")[0]["n"]
            Writer(writer).run("feed00000001", "x", "/tmp/x", "running", NOW)
            assert reader.query("select count(*) as n from runs")[0]["n"] == before
        assert reader.query("select count(*) as n from runs")[0]["n"] == before + 1
    finally:
        writer.close()
        reader.close()


def test_data_version_is_the_notifications_moved_by_commits_and_nothing_else(
    pg_story: str,
) -> None:
    """The version is the LISTEN counter: it moves once per committed transaction that
    writes the run log (three tables in one: once), not for a table the view does not show,
    not for the reader's own reads — and reading it asks the server nothing."""
    reader = PostgresReader(pg_story)
    other = psycopg.connect(pg_story, autocommit=True)  # another machine's connection
    try:
        start = reader.data_version()
        reader.runs_page()
        reader.run_detail(RUNNING)
        with other.transaction():
            other.execute("insert into blobs (sha, body) values ('unseen', 'not shown')")
        with other.transaction():
            other.execute(
                "insert into runs (id, status, created_at) values ('a0a0a0a0a0a0', 'running', 1)"
            )
            step = other.execute(
                "insert into steps (run_id, number, status) "
                "values ('a0a0a0a0a0a0', 1, 'pending') returning id"
            ).fetchone()
            assert step is not None
            other.execute(
                "insert into attempts (run_id, step_id, number, outcome) "
                "values ('a0a0a0a0a0a0', %s, 1, 'pending')",
                [step[0]],
            )
        wait_for(lambda: reader.data_version() != start, "the run's announcement")
        other.execute("update runs set status = 'completed' where id = 'a0a0a0a0a0a0'")
        wait_for(lambda: reader.data_version() == start + 2, "the update's announcement")
        # Everything committed before the update was announced before it: the blob was not.
        assert reader.data_version() == start + 2

        class NoServer:
            def __getattr__(self, name: str) -> Any:
                raise AssertionError(f"data_version used the reading connection ({name})")

        conn, reader._conn = reader._conn, NoServer()
        try:
            assert reader.data_version() == start + 2
        finally:
            reader._conn = conn
    finally:
        other.close()
        reader.close()


def test_writers_announce_only_while_a_watcher_is_connected(postgres_schema_url: str) -> None:
    """NOTIFY makes PostgreSQL commit notifying transactions one at a time, so the triggers
    notify only while a watcher of the schema is connected (by its connection's name)."""
    url = postgres_schema_url
    store = PostgresStore(url)
    listening = psycopg.connect(url, autocommit=True)  # an unnamed listener: not a watcher
    try:
        listening.execute(f'listen "{CHANGES_CHANNEL}"')
        (schema,) = listening.execute("select current_schema()").fetchone()  # type: ignore[misc]

        def write_then_sentinel(run_id: str) -> list[str]:
            Writer(store).run(run_id, "n", "/p", "running", NOW)
            store.announce(CHANGES_CHANNEL, "sentinel")
            return notifications_until_sentinel(listening, "sentinel")

        assert write_then_sentinel("unwatched001") == []
        with psycopg.connect(url, autocommit=True, application_name="agentguard watch other"):
            assert write_then_sentinel("unwatched002") == []  # a watcher of another schema
        name = watcher_application(schema)
        with psycopg.connect(url, autocommit=True, application_name=name):
            assert write_then_sentinel("watched00001") == [schema]

        def watchers() -> int:
            sql = "select count(*) from pg_stat_activity where application_name = %s"
            return store.query(sql.replace("%s", "?"), [name])[0]["count"]

        wait_for(lambda: watchers() == 0, "the watcher's backend to end")  # ends after close()
        assert write_then_sentinel("unwatched003") == []
    finally:
        listening.close()
        store.close()


def test_the_reader_comes_back_after_the_server_drops_its_connections(pg_story: str) -> None:
    """A restart or an idle timeout: the next load reconnects without failing, and the
    listener's reconnection moves the version (whatever happened meanwhile is reloaded)."""
    reader = PostgresReader(pg_story)
    admin = psycopg.connect(pg_story, autocommit=True)
    try:
        assert len(reader.runs_page().runs) == 4
        start = reader.data_version()
        admin.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity "
            "where pid = %s or (application_name = %s and datname = current_database())",
            [reader._conn.info.backend_pid, watcher_application(reader._schema)],
        )
        assert len(reader.runs_page().runs) == 4
        wait_for(lambda: reader.data_version() != start, "the listener's reconnection")
    finally:
        admin.close()
        reader.close()


def test_a_server_that_does_not_answer_is_one_sentence(home: Path) -> None:
    with pytest.raises(StoreError, match=r"cannot reach the PostgreSQL server at 127\.0\.0\.1:9"):
        PostgresReader("postgresql://agentguard:s3cret@127.0.0.1:9/none", home=home)


# -- the app ---------------------------------------------------------------------------------


def test_watch_shows_another_process_s_run_woken_by_its_notification(
    pg_story: str, home: Path
) -> None:
    """No reload is due by the clock (tick_interval an hour): the app loads again only
    because the other process's commits were announced, and idle polls load nothing."""

    async def scenario() -> None:
        app = make_app(pg_story, home=home, tick_interval=3600.0, poll_interval=0.02)
        loads, polls = [0], [0]
        real_page, real_version = app.reader.runs_page, app.reader.data_version

        def counted_page(**kw: Any) -> Any:
            loads[0] += 1
            return real_page(**kw)

        def counted_version() -> int:
            polls[0] += 1
            return real_version()

        app.reader.runs_page = counted_page  # type: ignore[method-assign]
        app.reader.data_version = counted_version  # type: ignore[method-assign]
        async with app.run_test(size=(80, 24)) as pilot:
            runs = table(app, "#runs")
            await until(pilot, lambda: len(runs.keys) == 4, "the story")
            idle_from, loads_before = polls[0], loads[0]
            await until(pilot, lambda: polls[0] >= idle_from + 25, "25 idle polls")
            assert loads[0] == loads_before  # nothing committed: nothing read

            version = real_version()
            subprocess.run(
                [sys.executable, "-c", OTHER_MACHINE, pg_story, str(NOW - 5)], check=True
            )
            await until(pilot, lambda: "e5f6a7b8c9d0" in runs.keys, "the other machine's run")
            assert real_version() > version and loads[0] > loads_before
            status, host, project, *_ = runs.cells("e5f6a7b8c9d0")
            assert (status, host, project) == (("running", "bold green"), ELSEWHERE, "elsewhere")
            assert runs.cells("e5f6a7b8c9d0")[4] == "1"  # its step
            assert runs.cursor_key == FAILED  # follow is off: the cursor stayed

    run(scenario)


def test_another_machines_run_shows_its_host_and_refuses_diff_and_restore(
    postgres_schema_url: str, home: Path
) -> None:
    store = PostgresStore(postgres_schema_url)
    writer = Writer(store)
    writer.run(THEIRS, "their-run", "/home/ci/checkout", "completed", NOW - 60)
    store.update_run(THEIRS, hostname=ELSEWHERE)
    writer.step(THEIRS, NOW - 50, [ok()])
    store.close()

    async def scenario() -> None:
        app = make_app(postgres_schema_url, home=home, tick_interval=3600.0)
        async with app.run_test(size=(80, 24)) as pilot:
            runs = table(app, "#runs")
            await until(pilot, lambda: THEIRS in runs.keys, "their run")
            assert runs.cells(THEIRS)[1] == ELSEWHERE
            inside(app, "#summary", "#runs", "#preview")
            cells_fit(app, "#runs")  # the host column fits 80 columns with the others
            preview = str(app.screen.query_one("#preview", Static).content)
            assert f"{ELSEWHERE}:/home/ci/checkout" in preview
            screen = await open_run(pilot, app, THEIRS)
            head = str(screen.query_one("#run-head", Static).content)
            assert f"{ELSEWHERE}:/home/ci/checkout" in head
            for key in ("d", "r"):
                await pilot.press(key)
                await pilot.pause()
                assert isinstance(app.screen, RunScreen)  # no diff, no question
            said = [n.message for n in app._notifications]
            expected = (
                f"Run {THEIRS} ran on {ELSEWHERE}: its checkpoints are in that machine's shadow "
                f"store, so diff or restore it there (or resume it here with `agentguard resume "
                f"{THEIRS} --project DIR`, which fetches them from its snapshot_remote)."
            )
            assert said.count(expected) == 2

    run(scenario)


def test_restore_from_watch_writes_through_the_fleet_store(
    postgres_schema_url: str,
    monkeypatch: pytest.MonkeyPatch,
    fake: Any,
    guarded: Any,
    project: Path,
    home: Path,
) -> None:
    """A run of this machine: its checkpoints are in this machine's shadow store, and the
    restore's backup and event go to the shared store."""
    monkeypatch.setenv(STORE_ENV, postgres_schema_url)
    fake.script(*storm(), model=OPUS)
    client = guarded(chain=[f"anthropic:{OPUS}", f"anthropic:{SONNET}"])
    client.messages.create(model=OPUS, max_tokens=64, messages=[user("fix the bug")])
    original = (project / "app.py").read_text()
    (project / "app.py").write_text("def add(a, b):\n    return a + b\n")
    client.messages.create(model=OPUS, max_tokens=64, messages=[user("fix the bug")])
    run_id = client.run_id
    client.agentguard.close()
    assert not (home / DB_NAME).exists()  # the run went to PostgreSQL

    async def scenario() -> None:
        app = make_app(postgres_schema_url, home=home, clock=time.time)
        async with app.run_test(size=(80, 24)) as pilot:
            await open_run(pilot, app, run_id)
            steps = table(app, "#steps")
            await until(pilot, lambda: len(steps.keys) == 2, "two steps")
            await pilot.press("up")  # step 1
            await pilot.press("r")
            await until(pilot, lambda: isinstance(app.screen, ConfirmRestore), "the question")
            await pilot.press("y")
            await until(pilot, lambda: "backup" in banner(app, "#restore-note"), "the restore")

    run(scenario)
    assert (project / "app.py").read_text() == original
    with psycopg.connect(postgres_schema_url) as conn:
        kinds = [r[0] for r in conn.execute("select kind from events where run_id = %s", [run_id])]
    assert "restored" in kinds


# -- the command -----------------------------------------------------------------------------


def test_watch_command_opens_the_fleet_store(
    postgres_schema_url: str, monkeypatch: pytest.MonkeyPatch, home: Path, capsys: Any
) -> None:
    """`agentguard watch` with $AGENTGUARD_STORE a postgresql:// URL: the schema is brought up
    to date (the triggers with it) and the app reads PostgreSQL, never this machine's file."""
    monkeypatch.setenv(STORE_ENV, postgres_schema_url)
    store = PostgresStore(postgres_schema_url)
    Writer(store).run("abcdef012345", "r", "/p", "running", NOW)
    store.close()
    opened: list[Any] = []

    def fake_run(self: WatchApp) -> None:
        opened.append((type(self.reader), self._open_first))
        self.reader.close()

    monkeypatch.setattr(watch, "stdout_is_terminal", lambda: True)
    monkeypatch.setattr(WatchApp, "run", fake_run)
    assert main(["watch", "--run", "abcdef"]) == 0
    assert opened == [(PostgresReader, "abcdef012345")]
    assert not (home / DB_NAME).exists()

    capsys.readouterr()
    assert main(["watch", "--run", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("agentguard: No run 'nope' in postgresql://root@127.0.0.1:5432/")
    assert err.count("\n") == 1

    with psycopg.connect(postgres_schema_url) as conn:
        triggers = {
            r[0]
            for r in conn.execute(
                "select event_object_table from information_schema.triggers "
                "where trigger_schema = current_schema()"
            )
        }
    assert triggers == {"runs", "steps", "attempts", "events", "snapshots"}


def test_watch_store_flag_picks_the_store_over_the_variable(
    postgres_schema_url: str, monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    opened: list[Any] = []

    def fake_run(self: WatchApp) -> None:
        opened.append(type(self.reader))
        self.reader.close()

    monkeypatch.setattr(watch, "stdout_is_terminal", lambda: True)
    monkeypatch.setattr(WatchApp, "run", fake_run)
    monkeypatch.delenv(STORE_ENV, raising=False)
    assert main(["watch", "--store", postgres_schema_url]) == 0
    monkeypatch.setenv(STORE_ENV, postgres_schema_url)
    assert main(["watch", "--store", "sqlite"]) == 0
    assert opened == [PostgresReader, StoreReader]
    assert (home / DB_NAME).is_file()  # "sqlite": this machine's file, created to be watched


def test_watch_without_a_terminal_still_says_so_over_postgresql(
    postgres_schema_url: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv(STORE_ENV, postgres_schema_url)
    capsys.readouterr()
    assert main(["watch"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("agentguard: watch draws a live view in a terminal")


def test_local_runs_show_this_machine_as_their_host(postgres_schema_url: str, home: Path) -> None:
    store = PostgresStore(postgres_schema_url)
    Writer(store).run("10ca1000run1", "mine", "/p", "completed", NOW)
    store.update_run("10ca1000run1", hostname=socket.gethostname())
    store.close()
    reader = PostgresReader(postgres_schema_url, home=home)
    try:
        detail = reader.run_detail("10ca1000run1")
        assert detail is not None and detail.elsewhere is None
        assert detail.shadow_dir.is_relative_to(home)  # this machine's shadow store
        assert detail.run.hostname == socket.gethostname()
    finally:
        reader.close()
