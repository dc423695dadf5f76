"""One restore for the library, the CLI and the TUI: refused while the run's agent is alive
(before a byte of its tree changes), recorded and undoable wherever it was made, one meaning of
"step N", and a run resumed in a folder it moved to.

Runs are real (a wrapped client against the fake provider, real checkpoints in the shadow
store, a real SQLite file); the "live agent" is a real child process that owns the run's row.
The tests without the TUI run on PostgreSQL too (`store_engine`: $AGENTGUARD_STORE names a
fresh schema, which the library and the CLI then use).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import anthropic
import pytest

import agentguard
from agentguard.cli import main
from agentguard.store import DB_NAME, STORE_ENV, Store, open_store
from agentguard.tui.screens.confirm import ConfirmRestore
from agentguard.tui.screens.diff import DiffScreen
from tests.conftest import API_KEY, ENGINES, user
from tests.test_tui import banner, make_app, open_run, run, table, until

MODEL = "claude-opus-4-7"


def ask(client, text: str = "go on") -> None:
    client.messages.create(model=MODEL, max_tokens=16, messages=[user(text)])


def files(project: Path) -> dict[str, bytes]:
    """Every file of the project, .git included, as bytes."""
    return {
        str(p.relative_to(project)): p.read_bytes()
        for p in sorted(project.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def events(home: Path, run_id: str, kind: str) -> list[dict]:
    store = open_store(home)
    try:
        return [json.loads(e["detail"]) for e in store.events(run_id) if e["kind"] == kind]
    finally:
        store.close()


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys, *argv: str) -> dict:
    code, out, err = cli(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def diff_loaded(screen: DiffScreen) -> bool:
    return screen.diff is not None


@pytest.fixture(params=ENGINES)
def store_engine(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, home: Path
) -> Iterator[str]:
    """The engine of the store the library and the CLI open: SQLite under AGENTGUARD_HOME, or
    a PostgreSQL schema named by $AGENTGUARD_STORE."""
    if request.param == "postgresql":
        monkeypatch.setenv(STORE_ENV, request.getfixturevalue("postgres_schema_url"))
    else:
        monkeypatch.delenv(STORE_ENV, raising=False)
    yield request.param
    if request.param == "postgresql":  # it ran on PostgreSQL: nothing went to a SQLite file
        assert not (home / DB_NAME).exists()


@pytest.fixture
def live_agent() -> Iterator[subprocess.Popen]:
    """A real process that is alive until the test ends (it waits for its stdin to close)."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        yield child
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()


@pytest.fixture
def two_steps(guarded, project) -> str:
    """Two steps with an edit between them; the client is closed (its process 'ended')."""
    client = guarded(run="two-steps")
    ask(client, "fix the bug")
    (project / "app.py").write_text("def add(a, b):\n    return a + b\n")
    (project / "notes.txt").write_text("fixed the sign\n")
    ask(client)
    client.agentguard.close()
    return client.run_id


# -- a live run is refused before anything is touched -----------------------------------------


def test_a_live_run_is_refused_by_resume_cli_and_tui_and_its_tree_is_untouched(
    capsys, two_steps, project, home, live_agent
):
    """Another process still drives the run: resume(), `agentguard resume`/`restore` and the
    TUI's restore all raise RunBusy first, and the agent's tree stays byte for byte as it is."""
    run_id = two_steps
    store = Store.open(home)
    store.update_run(run_id, status="running", pid=live_agent.pid, hostname=socket.gethostname())
    store.close()
    (project / "app.py").write_text("the live agent is writing this\n")
    (project / "scratch.txt").write_bytes(b"\x00half a file")
    before = files(project)

    with pytest.raises(agentguard.RunBusy, match=rf"still running in process {live_agent.pid}"):
        agentguard.resume(run_id)
    assert files(project) == before

    for argv in (
        ["resume", run_id],
        ["restore", run_id, "--step", "1", "--yes"],
        ["restore", run_id, "--to-snapshot", "HEAD", "--yes"],
    ):
        code, out, err = cli(capsys, *argv)
        assert code == 2 and out == "" and "still running in process" in err, argv
        assert err.count("\n") == 1 and "Traceback" not in err
        assert files(project) == before

    async def scenario():
        app = make_app(home / DB_NAME)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_run(pilot, app, run_id)
            steps = table(app, "#steps")
            await until(pilot, lambda: len(steps.keys) == 2, "two steps")
            await pilot.press("up")  # step 1
            await pilot.press("r")
            await until(pilot, lambda: isinstance(app.screen, ConfirmRestore), "the question")
            await pilot.press("y")
            await until(pilot, lambda: "failed" in banner(app, "#restore-note"), "the refusal")
            assert "still running in process" in banner(app, "#restore-note")
            assert app.screen is screen

    run(scenario)
    assert files(project) == before
    assert events(home, run_id, "restored") == [] and events(home, run_id, "resume_prepared") == []
    store = Store.open(home)
    assert store.query("select * from snapshots where kind = 'backup'") == []
    assert store.get_run(run_id)["status"] == "running"  # its agent is alive: still its run
    store.close()


def test_a_running_run_whose_process_died_is_resumed(store_engine, two_steps, project, home):
    from tests.conftest import dead_pid

    store = open_store(home)
    store.update_run(two_steps, status="running", pid=dead_pid(), hostname=socket.gethostname())
    store.close()
    resumed = agentguard.resume(two_steps)
    assert resumed.status == "interrupted" and resumed.restored is not None


# -- the TUI's restore is the CLI's restore ----------------------------------------------------


def test_a_restore_made_in_watch_is_recorded_and_undone_by_the_cli(
    capsys, two_steps, project, home
):
    run_id = two_steps
    (project / "app.py").write_text("uncommitted work of mine\n")
    mine = files(project)

    async def scenario():
        app = make_app(home / DB_NAME)
        async with app.run_test(size=(80, 24)) as pilot:
            await open_run(pilot, app, run_id)
            steps = table(app, "#steps")
            await until(pilot, lambda: len(steps.keys) == 2, "two steps")
            await pilot.press("up")  # step 1
            await pilot.press("r")
            await until(pilot, lambda: isinstance(app.screen, ConfirmRestore), "the question")
            await pilot.press("y")
            await until(pilot, lambda: "backup" in banner(app, "#restore-note"), "the restore")
            assert f"agentguard restore {run_id} --undo" in banner(app, "#restore-note")

    run(scenario)
    assert (project / "app.py").read_text() == "def add(a, b):\n    return a - b\n"
    assert not (project / "notes.txt").exists()
    [event] = events(home, run_id, "restored")
    assert event["via"] == "step" and event["label"] == f"run {run_id} step 1"
    store = Store.open(home)
    [row] = store.query("select * from snapshots where kind = 'backup'")
    assert row["commit_sha"] == event["backup"] and row["run_id"] == run_id
    store.close()

    code, _, err = cli(capsys, "restore", run_id, "--undo", "--yes")
    assert code == 0, err
    assert files(project) == mine  # the uncommitted work is back, byte for byte


# -- one meaning of "step N" -------------------------------------------------------------------


def test_step_n_means_the_same_in_the_tui_diff_and_restore(capsys, guarded, project, home):
    """Three steps; after each call the agent's 'tools' write a file of their own. Checkpoint N
    is the tree before step N's call, so the diff at step 2 is step 2's file, everywhere."""
    client = guarded(run="three-steps")
    for n, name in enumerate(("first.txt", "second.txt", "third.txt"), 1):
        ask(client, f"step {n}")
        (project / name).write_text(f"written by step {n}'s tools\n")
    client.agentguard.close()
    run_id = client.run_id

    doc = cli_json(capsys, "diff", run_id, "--step", "2")
    assert doc["changes"] == [{"status": "A", "path": "second.txt"}]
    assert (doc["from"]["label"], doc["to"]["label"]) == ("step 2", "step 3")
    last = cli_json(capsys, "diff", run_id, "--step", "3")  # the newest: → the tree now
    assert last["changes"] == [{"status": "A", "path": "third.txt"}]

    seen: dict[int, list[str]] = {}

    async def scenario():
        app = make_app(home / DB_NAME)
        async with app.run_test(size=(80, 24)) as pilot:
            await open_run(pilot, app, run_id)
            steps = table(app, "#steps")
            await until(pilot, lambda: len(steps.keys) == 3, "three steps")
            for number, moves in ((3, ()), (2, ("up",))):
                for key in moves:
                    await pilot.press(key)
                assert steps.cells(steps.cursor_key)[0] == str(number)
                await pilot.press("d")
                await until(pilot, lambda: isinstance(app.screen, DiffScreen), "the diff")
                diff_screen = app.screen
                assert isinstance(diff_screen, DiffScreen)
                await until(pilot, partial(diff_loaded, diff_screen), "the diff's paths")
                seen[number] = sorted(table(app, "#changes").keys)
                await pilot.press("escape")

    run(scenario)
    assert seen == {2: ["second.txt"], 3: ["third.txt"]}

    code, _, err = cli(capsys, "restore", run_id, "--step", "2", "--yes")
    assert code == 0, err
    # the tree step 2's call was made on: step 1's tools had run, step 2's had not
    assert (project / "first.txt").exists()
    assert not (project / "second.txt").exists() and not (project / "third.txt").exists()


# -- resume --project NEW ----------------------------------------------------------------------


def test_after_resume_project_new_show_diff_and_restore_use_the_new_folder(
    store_engine, capsys, fake, two_steps, project, home, tmp_path, clock
):
    run_id = two_steps
    moved = tmp_path / "moved-here"
    shutil.move(project, moved)

    doc = cli_json(capsys, "resume", run_id, "--project", str(moved))
    assert doc["project"] == str(moved.resolve()) and doc["restored"] is True
    [event] = events(home, run_id, "project_moved")
    assert (event["old"], event["new"]) == (str(project.resolve()), str(moved.resolve()))

    shown = cli_json(capsys, "show", run_id)
    assert shown["run"]["project"] == str(moved.resolve())
    diff = cli_json(capsys, "diff", run_id, "--step", "1")  # both checkpoints, in NEW's store
    assert {c["path"] for c in diff["changes"]} == {"app.py", "notes.txt"}

    # the run goes on in NEW: its next step's checkpoint sits beside the older ones
    resumed = agentguard.resume(run_id, restore=False)
    client = resumed.wrap(anthropic.Anthropic(base_url=fake.base_url, api_key=API_KEY), clock=clock)
    (moved / "later.txt").write_text("after the move\n")
    ask(client)
    client.agentguard.close()
    diff = cli_json(capsys, "diff", run_id, "--step", "2")
    assert diff["changes"] == [{"status": "A", "path": "later.txt"}]

    code, _, err = cli(capsys, "gc")  # nothing of the run is lost or marked pruned
    assert code == 0, err
    store = open_store(home)
    assert store.query("select * from snapshots where pruned_at is not null") == []
    store.close()

    code, _, err = cli(capsys, "restore", run_id, "--step", "1", "--yes")
    assert code == 0, err
    assert (moved / "app.py").read_text() == "def add(a, b):\n    return a - b\n"
    assert not (moved / "notes.txt").exists() and not (moved / "later.txt").exists()
    code, _, err = cli(capsys, "restore", run_id, "--undo", "--yes")
    assert code == 0, err
    assert (moved / "later.txt").exists() and (moved / "notes.txt").exists()
    assert not project.exists()  # nothing was written to the old place


def test_the_library_resume_with_a_new_project_moves_the_run(
    store_engine, capsys, two_steps, project, tmp_path
):
    copy = tmp_path / "a-copy"
    shutil.copytree(project, copy)
    (copy / "app.py").write_text("changed in the copy\n")
    resumed = agentguard.resume(two_steps, project=copy)
    assert resumed.project == copy.resolve() and resumed.restored is not None
    assert (copy / "app.py").read_text() == "def add(a, b):\n    return a + b\n"
    assert (project / "app.py").read_text() == "def add(a, b):\n    return a + b\n"  # untouched
    doc = cli_json(capsys, "restore", two_steps, "--undo", "--yes")
    assert doc["restored"] is True and (copy / "app.py").read_text() == "changed in the copy\n"


def test_a_run_moves_out_of_a_store_gc_has_cut(
    store_engine, capsys, guarded, project, home, tmp_path
):
    """gc cut an older run's history out of the store (a shallow store): the moved run's
    snapshots are copied all the same, and the new store knows where its history stops."""
    old = guarded(run="older")
    ask(old, "a")
    old.agentguard.close()
    kept = guarded(run="newer")
    (project / "b.txt").write_text("b\n")
    ask(kept, "b")
    (project / "c.txt").write_text("c\n")
    ask(kept, "c")
    kept.agentguard.close()
    store = open_store(home)
    store.update_run(old.run_id, updated_at=1.0)  # long ago
    store.close()
    code, _, err = cli(capsys, "gc", "--max-age-days", "1", "--keep-runs", "0")
    assert code == 0, err
    [shadow] = (home / "shadow").iterdir()
    assert (shadow / "repo.git" / "shallow").exists()

    moved = tmp_path / "moved"
    shutil.move(project, moved)
    cli_json(capsys, "resume", kept.run_id, "--project", str(moved))
    assert cli_json(capsys, "diff", kept.run_id, "--step", "1")["changes"] == [
        {"status": "A", "path": "c.txt"}
    ]
    code, _, err = cli(capsys, "restore", kept.run_id, "--step", "1", "--yes")
    assert code == 0, err
    assert (moved / "b.txt").exists() and not (moved / "c.txt").exists()
    code, _, err = cli(capsys, "gc")
    assert code == 0, err
    code, _, err = cli(capsys, "restore", kept.run_id, "--undo", "--yes")
    assert code == 0, err
    assert (moved / "c.txt").exists()
