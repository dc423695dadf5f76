"""`agentguard watch`: the Textual app over the store, driven by Pilot and by snapshots.

Stores are built with real rows — by a real wrapped client against the fake provider (diff and
restore need real checkpoints), or written step by step the way the guard writes them, with
fixed ids and times so that snapshots are frozen. Writes made while the app runs come from a
second connection and from a second process, as they do when agents run beside `watch`.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Footer, Static

from agentguard.metrics import compute
from agentguard.snapshots import ShadowRepo
from agentguard.store import DB_NAME, Store
from agentguard.tui import formatting as fmt
from agentguard.tui import watch
from agentguard.tui.app import WatchApp
from agentguard.tui.data import AttemptView, StoreReader
from agentguard.tui.screens.confirm import ConfirmRestore
from agentguard.tui.screens.diff import DiffScreen
from agentguard.tui.screens.metrics import MetricsScreen
from agentguard.tui.screens.run import RunScreen
from agentguard.tui.screens.runs import RunsScreen
from agentguard.tui.widgets import Banner, KeyedTable
from tests.conftest import storm, user

NOW = 1_800_000_000.0  # the frozen clock: 2027-01-15 08:00:00 UTC
OPUS, SONNET, GPT = "claude-opus-4-7", "claude-sonnet-4-6", "gpt-5.5"
DONE, RUNNING, WAITING, FAILED = "a1b2c3d4e5f6", "b2c3d4e5f6a7", "c3d4e5f6a7b8", "d4e5f6a7b8c9"
QUEUED_ERROR = (
    f"run {WAITING} step 2 is queued until 2027-01-15 08:04:12 UTC: anthropic:claude-opus-4-7: "
    "529 overloaded_error ×2 after 2 attempt(s) (last request-id req_0017), and policy 'batch' "
    f"forbids substitution; resume it with `agentguard resume {WAITING}`."
)


# -- building stores -------------------------------------------------------------------------


def ok(model: str = OPUS, latency: float = 900.0, slept: float = 0.0) -> tuple:
    return (model, 200, None, "ok", latency, slept)


def overload(outcome: str = "retry", slept: float = 0.0, model: str = OPUS) -> tuple:
    return (model, 529, "overloaded_error", outcome, 310.0, slept)


class Writer:
    """Writes runs, steps and attempts as agentguard.guard does: step first (pending), each
    attempt opened before it is sent and completed after, then the step's outcome."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.requests = 0

    def run(self, run_id: str, name: str, project: str, status: str, created: float, **kw) -> None:
        self.store.insert_run(
            {
                "id": run_id,
                "name": name,
                "project": project,
                "status": status,
                "created_at": created,
                "updated_at": created,
                "primary_provider": "anthropic",
                "primary_model": OPUS,
                **kw,
            }
        )

    def step(
        self,
        run_id: str,
        at: float,
        attempts: list[tuple],
        *,
        status: str = "ok",
        served: str | None = None,
        **fields: Any,
    ) -> int:
        """attempts: (model, status_code, error_type, outcome, latency_ms, slept_ms)."""
        step_id, number = self.store.begin_step(
            {
                "run_id": run_id,
                "status": "pending",
                "requested_provider": "anthropic",
                "requested_model": OPUS,
                "started_at": at,
            },
            [],
            None,
        )
        for n, (model, code, etype, outcome, latency, slept) in enumerate(attempts, 1):
            self.attempt(run_id, step_id, n, model, at + n, code, etype, outcome, latency, slept)
        done: dict[str, Any] = {"checkpoint": f"{number:02d}{run_id}".ljust(40, "0")}
        if status != "pending":
            served = served or (attempts[-1][0] if status == "ok" else None)
            done |= {
                "status": status,
                "served_provider": ("openai" if served == GPT else "anthropic") if served else None,
                "served_model": served,
                "substituted": int(bool(served) and served != OPUS),
                "ended_at": at + 5,
                "latency_ms": sum(a[4] or 0 for a in attempts) + sum(a[5] for a in attempts),
            }
        self.store.update_step(step_id, **done, **fields)
        return step_id

    def attempt(
        self,
        run_id: str,
        step_id: int,
        number: int,
        model: str,
        at: float,
        code: int | None,
        etype: str | None,
        outcome: str,
        latency: float | None,
        slept: float,
    ) -> int:
        self.requests += 1
        attempt_id = self.store.insert_attempt(
            {
                "run_id": run_id,
                "step_id": step_id,
                "number": number,
                "provider": "openai" if model == GPT else "anthropic",
                "model": model,
                "started_at": at,
                "slept_before_ms": slept,
                "outcome": "pending",
            }
        )
        if outcome != "pending":
            self.store.update_attempt(
                attempt_id,
                {
                    "latency_ms": latency,
                    "status_code": code,
                    "error_type": etype,
                    "outcome": outcome,
                    "request_id": f"req_{self.requests:04d}",
                },
            )
        return attempt_id


def build_story(store: Store) -> Writer:
    """Four runs: completed; running with a substitution and a step in flight; queued; failed."""
    w = Writer(store)
    w.run(DONE, "fix-login-bug", "/home/dev/shop-api", "completed", NOW - 7200, ended_at=NOW - 6000)
    for i in range(4):
        w.step(DONE, NOW - 7100 + i * 60, [ok()])
    w.run(RUNNING, "refactor-auth", "/home/dev/auth-service", "running", NOW - 1800)
    w.step(RUNNING, NOW - 1700, [ok()])
    w.step(RUNNING, NOW - 1600, [overload(), ok(slept=420.0)])
    w.step(
        RUNNING,
        NOW - 1500,
        [overload(), overload(slept=380.0), overload("next_route", slept=910.0), ok(SONNET)],
        reason="claude-opus-4-7: 529 overloaded_error ×3",
    )
    w.step(RUNNING, NOW - 1400, [ok()])
    w.step(
        RUNNING,
        NOW - 30,
        [overload(), (OPUS, None, None, "pending", None, 640.0)],
        status="pending",
    )
    w.run(
        WAITING,
        "nightly-batch",
        "/srv/batch-jobs",
        "waiting",
        NOW - 900,
        next_attempt_at=NOW + 252,
        last_error=QUEUED_ERROR,
    )
    w.step(WAITING, NOW - 880, [ok()])
    w.step(
        WAITING,
        NOW - 600,
        [overload(), overload("give_up", slept=2000.0)],
        status="waiting",
        error=QUEUED_ERROR.split(":")[0],
    )
    w.run(
        FAILED,
        "docs-sweep",
        "/home/dev/docs",
        "failed",
        NOW - 300,
        last_error="400 invalid_request_error: messages: text content blocks must be non-empty",
    )
    w.step(
        FAILED,
        NOW - 290,
        [(OPUS, 400, "invalid_request_error", "fatal", 120.0, 0.0)],
        status="failed",
        error="400 invalid_request_error: messages: text content blocks must be non-empty",
    )
    return w


@pytest.fixture
def story_db(home: Path) -> Path:
    store = Store.open(home)
    build_story(store)
    store.close()
    return home / DB_NAME


# Another agent process writing: plain sqlite3, quick to start, a writer like any other.
OTHER_PROCESS = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("begin immediate")
db.execute(
    "insert into runs (id, name, project, status, created_at, primary_model) "
    "values ('e5f6a7b8c9d0', 'from-elsewhere', '/tmp/elsewhere', 'running', ?, ?)",
    [float(sys.argv[2]), "claude-opus-4-7"],
)
db.execute(
    "insert into steps (run_id, number, status, requested_model, served_model, substituted) "
    "values ('e5f6a7b8c9d0', 1, 'ok', 'claude-opus-4-7', 'claude-opus-4-7', 0)"
)
db.execute("commit")
"""


def make_app(db: Path, **options: Any) -> WatchApp:
    options.setdefault("clock", lambda: NOW)
    options.setdefault("tz", UTC)
    options.setdefault("poll_interval", 0.1)
    return WatchApp(db, **options)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


async def until(pilot: Pilot, predicate: Callable[[], Any], what: str, timeout: float = 8.0):
    """Let the app work until `predicate()` holds (bounded: fails after `timeout`)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


def table(app: WatchApp, selector: str) -> KeyedTable:
    return app.screen.query_one(selector, KeyedTable)


def fits_80x24(app: WatchApp, *selectors: Any) -> bool:
    """Every widget named is visible and wholly inside an 80×24 screen."""
    for selector in selectors:
        region = app.screen.query_one(selector).region
        assert region.height >= 1 and region.width >= 1, (selector, region)
        assert region.right <= 80 and region.bottom <= 24, (selector, region)
    return True


def banner(app: WatchApp, selector: str) -> str:
    widget = app.screen.query_one(selector, Banner)
    return widget.text if widget.display else ""


async def open_run(pilot: Pilot, app: WatchApp, run_id: str) -> RunScreen:
    runs = table(app, "#runs")
    await until(pilot, lambda: run_id in runs.keys, f"run {run_id} in the list")
    while runs.cursor_key != run_id:
        up = runs.keys.index(run_id) < runs.keys.index(runs.cursor_key or run_id)
        await pilot.press("up" if up else "down")
    await pilot.press("enter")
    await until(pilot, lambda: isinstance(app.screen, RunScreen), "the run screen")
    screen = app.screen
    assert isinstance(screen, RunScreen)
    await until(pilot, lambda: screen.detail is not None, "the run's steps")
    return screen


# -- the runs list ---------------------------------------------------------------------------


def test_runs_list_shows_status_project_age_steps_models_substitutions_error(story_db):
    async def scenario():
        app = make_app(story_db)
        async with app.run_test(size=(80, 24)) as pilot:
            runs = table(app, "#runs")
            await until(pilot, lambda: len(runs.keys) == 4, "four runs")
            assert runs.keys == [DONE, RUNNING, WAITING, FAILED]  # newest at the bottom
            assert runs.cursor_key == FAILED  # the cursor starts on the newest run
            status, project, age, steps, primary, served, subs, _ = runs.cells(RUNNING)
            assert (status, project, age, steps, primary) == (
                ("running", "bold green"),
                "auth-service",
                "30m",
                "5",
                "opus-4-7",
            )
            assert served == ("opus-4-7, sonnet-4-6", "bold red")  # models that really served
            assert subs == ("⚠ 1", "bold white on red")
            assert runs.cells(DONE)[6] == "0"
            assert "invalid_request_error" in runs.text_of(FAILED)
            assert "queued — next attempt 2027-01-15 08:04:12 UTC (in 4m 12s)" in runs.text_of(
                WAITING
            )
            preview = str(app.screen.query_one("#preview", Static).content)
            assert "docs-sweep" in preview and "last error: 400 invalid_request_error" in preview

    run(scenario)


def test_live_updates_from_another_process_and_connection_keep_the_cursor(
    story_db, monkeypatch, home
):
    """Runs, attempts and a substitution written while the app runs appear without a restart;
    the table is updated by key (never cleared), so the cursor stays on its run."""

    def no_clear(self, columns=False):
        raise AssertionError("DataTable.clear() would lose the cursor")

    monkeypatch.setattr(DataTable, "clear", no_clear)

    async def scenario():
        app = make_app(story_db)
        async with app.run_test(size=(80, 24)) as pilot:
            runs = table(app, "#runs")
            await until(pilot, lambda: len(runs.keys) == 4, "the story")
            await pilot.press("up", "up")
            assert runs.cursor_key == RUNNING

            # 1. another process starts a run and records a step
            db = str(home / DB_NAME)
            subprocess.run([sys.executable, "-c", OTHER_PROCESS, db, str(NOW - 5)], check=True)
            await until(pilot, lambda: "e5f6a7b8c9d0" in runs.keys, "the other process's run")
            assert runs.cells("e5f6a7b8c9d0")[3] == "1"
            assert runs.cursor_key == RUNNING  # follow is off: the cursor did not move

            # 2. a second connection: a new run whose step is served by Sonnet after 529s
            writer = Writer(Store.open(home))
            writer.requests = 100
            writer.run("f6a7b8c9d0e1", "live-subst", "/tmp/live", "running", NOW - 2)
            step_id = writer.step(
                "f6a7b8c9d0e1",
                NOW - 1,
                [overload(), overload(), overload("next_route"), ok(SONNET)],
            )
            await until(pilot, lambda: "f6a7b8c9d0e1" in runs.keys, "the substituted run")
            await until(
                pilot, lambda: runs.cells("f6a7b8c9d0e1")[6] == ("⚠ 1", "bold white on red"), "subs"
            )
            assert runs.cursor_key == RUNNING
            assert runs.keys[-1] == "f6a7b8c9d0e1"

            # 3. its run view shows the substitution banner, and follows new steps live
            screen = await open_run(pilot, app, "f6a7b8c9d0e1")
            expected = "served by claude-sonnet-4-6 instead of claude-opus-4-7 — 529 overloaded ×3"
            assert expected in banner(app, "#subs-banner")
            assert expected in banner(app, "#step-banner")
            assert table(app, "#attempts").keys and len(table(app, "#attempts").keys) == 4
            await pilot.press("f")  # follow: the cursor goes to each new step
            assert app.follow
            next_step = writer.step(
                "f6a7b8c9d0e1", NOW, [overload(), ok()], status="pending", served=None
            )
            steps = table(app, "#steps")
            await until(pilot, lambda: steps.cursor_key == str(next_step), "the new step")
            attempts = table(app, "#attempts")
            await until(pilot, lambda: len(attempts.keys) == 2, "the new step's attempts")
            assert "529" in attempts.text_of(attempts.keys[0])
            writer.attempt("f6a7b8c9d0e1", next_step, 3, OPUS, NOW, 200, None, "ok", 800.0, 0.0)
            await until(pilot, lambda: len(attempts.keys) == 3, "an attempt written live")
            assert step_id != next_step and screen.detail is not None

    run(scenario)


def test_follow_mode_moves_the_cursor_to_each_new_run(story_db, home):
    async def scenario():
        app = make_app(story_db)
        async with app.run_test(size=(80, 24)) as pilot:
            runs = table(app, "#runs")
            await until(pilot, lambda: len(runs.keys) == 4, "the story")
            await pilot.press("up", "up", "up")
            assert runs.cursor_key == DONE
            await pilot.press("f")
            assert runs.cursor_key == FAILED  # following: straight to the newest run
            Writer(Store.open(home)).run("0a0b0c0d0e0f", "new", "/tmp/new", "running", NOW)
            await until(pilot, lambda: runs.cursor_key == "0a0b0c0d0e0f", "the cursor follows")
            await pilot.press("f")
            Writer(Store.open(home)).run("1a1b1c1d1e1f", "newer", "/tmp/new", "running", NOW)
            await until(pilot, lambda: "1a1b1c1d1e1f" in runs.keys, "the newer run")
            assert runs.cursor_key == "0a0b0c0d0e0f"  # not following any more

    run(scenario)


def test_a_dead_agent_process_shows_as_interrupted(home):
    store = Store.open(home)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    Writer(store).run("deadbeef0001", "crashed", "/tmp/x", "running", NOW, pid=dead.pid)
    store.update_run("deadbeef0001", hostname=socket.gethostname())
    page = StoreReader(home / DB_NAME).runs_page()
    assert [(r.status, r.stored_status) for r in page.runs] == [("interrupted", "running")]


def test_a_dead_processs_step_in_flight_shows_as_interrupted(home):
    store = Store.open(home)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    writer = Writer(store)
    writer.run("deadbeef0001", "crashed", "/tmp/x", "running", NOW, pid=dead.pid)
    store.update_run("deadbeef0001", hostname=socket.gethostname())
    writer.step("deadbeef0001", NOW, [(OPUS, None, None, "pending", None, 0)], status="pending")
    detail = StoreReader(home / DB_NAME).run_detail("deadbeef0001")
    [step] = detail.steps
    assert step.status == "interrupted"  # the reader never writes; it shows what resume records
    assert [a.outcome for a in step.attempts] == ["interrupted"]
    assert fmt.attempts_summary(step.attempts) == "cut"


# -- one run: timeline, banners ----------------------------------------------------------------


def test_run_view_steps_attempts_and_the_substitution_banner(story_db):
    async def scenario():
        app = make_app(story_db)
        async with app.run_test(size=(80, 24)) as pilot:
            await open_run(pilot, app, RUNNING)
            steps = table(app, "#steps")
            assert len(steps.keys) == 5
            assert steps.cursor_key == steps.keys[-1]  # the newest step
            assert "in flight" in banner(app, "#step-banner")
            await pilot.press("up", "up")  # step 3, the substituted one
            n, status, checkpoint, tries, served, _, why = steps.cells(steps.cursor_key)
            assert (n, status, tries) == ("3", ("ok", "green"), "529×3 200")
            assert checkpoint == f"03{RUNNING}"[:8]
            assert served == ("⚠ sonnet-4-6", "bold white on red")
            text = "served by claude-sonnet-4-6 instead of claude-opus-4-7 — 529 overloaded ×3"
            assert why == (text, "bold red")
            assert banner(app, "#step-banner").startswith(f"⚠ step 3 {text}")
            assert app.screen.query_one("#step-banner", Banner).has_class("-substituted")
            assert banner(app, "#subs-banner") == f"⚠ step 3 {text}"
            attempts = table(app, "#attempts")
            rows = [attempts.cells(k) for k in attempts.keys]
            assert [r[2][0] for r in rows] == ["529", "529", "529", "200"]
            assert [r[3] for r in rows] == ["overloaded"] * 3 + ["—"]
            assert [r[5] for r in rows] == ["0", "380ms", "910ms", "0"]  # slept before each
            assert [r[6] for r in rows] == ["req_0008", "req_0009", "req_0010", "req_0011"]
            assert [r[4] for r in rows] == ["310ms"] * 3 + ["900ms"]
            await pilot.press("escape")
            assert isinstance(app.screen, RunsScreen)

    run(scenario)


def test_a_queued_run_shows_its_next_attempt_time(story_db):
    async def scenario():
        app = make_app(story_db)
        async with app.run_test(size=(80, 24)) as pilot:
            await open_run(pilot, app, WAITING)
            text = banner(app, "#waiting-banner")
            assert text.startswith("⏸ queued — next attempt 2027-01-15 08:04:12 UTC (in 4m 12s)")
            assert "forbids substitution" in text
            assert app.screen.query_one("#waiting-banner", Banner).has_class("-waiting")
            assert banner(app, "#subs-banner") == ""

    run(scenario)


def test_the_app_can_open_on_one_run_as_the_demo_does(story_db):
    async def scenario():
        app = make_app(story_db, open_run=WAITING)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, RunScreen), "the run screen")
            screen = app.screen
            await until(pilot, lambda: screen.detail is not None, "the run's steps")
            assert banner(app, "#waiting-banner").startswith("⏸ queued")
            await pilot.press("escape")
            await until(pilot, lambda: not isinstance(app.screen, RunScreen), "the runs list")

    run(scenario)


# -- diff and restore on real checkpoints ------------------------------------------------------


def test_keyboard_run_step_diff_and_restore_with_confirm_and_cancel(fake, guarded, project, home):
    """A real wrapped client records 2 steps (the first served by Sonnet after 529s) while a
    'tool' edits the project; the keyboard then diffs step 1 and restores it — only on yes."""
    fake.script(*storm(), model=OPUS)
    client = guarded(chain=[f"anthropic:{OPUS}", f"anthropic:{SONNET}"])
    client.messages.create(model=OPUS, max_tokens=64, messages=[user("fix the bug")])
    original = (project / "app.py").read_text()
    (project / "app.py").write_text("def add(a, b):\n    return a + b\n")
    (project / "notes.txt").write_text("fixed add()\n")
    client.messages.create(model=OPUS, max_tokens=64, messages=[user("fix the bug")])
    (project / "app.py").write_text("def add(a, b):\n    return a + b  # checked\n")
    run_id = client.run_id
    db = home / DB_NAME

    async def scenario():
        app = make_app(db, clock=time.time)
        async with app.run_test(size=(80, 24)) as pilot:
            await open_run(pilot, app, run_id)
            steps = table(app, "#steps")
            await until(pilot, lambda: len(steps.keys) == 2, "two steps")
            assert "instead of claude-opus-4-7" in banner(app, "#subs-banner")
            await pilot.press("up")  # step 1
            assert steps.cells(steps.cursor_key)[0] == "1"

            # the diff: what changed from step 1's checkpoint to step 2's
            await pilot.press("d")
            await until(pilot, lambda: isinstance(app.screen, DiffScreen), "the diff screen")
            diff_screen = app.screen
            assert isinstance(diff_screen, DiffScreen)
            changes = table(app, "#changes")
            await until(pilot, lambda: len(changes.keys) == 2, "two changed paths")
            assert {k: changes.cells(k)[0][0] for k in changes.keys} == {
                "app.py": "M",
                "notes.txt": "A",
            }
            assert "step 2's checkpoint" in str(app.screen.query_one("#diff-head").render())
            await until(pilot, lambda: "@@" in diff_screen.body_text, "the file's diff")
            assert fits_80x24(app, "#diff-head", "#changes", "#body-scroll", Footer)
            assert "-    return a - b" in diff_screen.body_text
            assert "+    return a + b" in diff_screen.body_text
            await pilot.press("escape")
            assert isinstance(app.screen, RunScreen)

            # restore, cancelled twice: the tree is not touched
            for cancel in ("n", "escape"):
                await pilot.press("r")
                await until(pilot, lambda: isinstance(app.screen, ConfirmRestore), "the question")
                assert fits_80x24(app, "#question", "#cancel", "#restore")
                assert app.screen.focused is app.screen.query_one("#cancel")  # the safe default
                await pilot.press(cancel)
                await until(pilot, lambda: isinstance(app.screen, RunScreen), "back")
            assert "# checked" in (project / "app.py").read_text()
            assert (project / "notes.txt").exists()
            assert banner(app, "#restore-note") == ""

            # restore, confirmed
            await pilot.press("r")
            await until(pilot, lambda: isinstance(app.screen, ConfirmRestore), "the question")
            await pilot.press("y")
            await until(pilot, lambda: "backup" in banner(app, "#restore-note"), "the restore")
            assert (project / "app.py").read_text() == original
            assert not (project / "notes.txt").exists()
            note = banner(app, "#restore-note")
            backup = note.split("backup ")[1][:12]
            assert "restored step 1's checkpoint" in note and "2 paths changed" in note
            detail = app.details[run_id]
            repo = ShadowRepo(project, detail.shadow_dir)
            assert repo.has_commit(backup)  # the tree before the restore, kept to undo it
            assert "# checked" in repo.read_file(backup, "app.py").decode()

    run(scenario)


def test_diff_and_restore_refuse_a_step_without_checkpoint(story_db):
    async def scenario():
        app = make_app(story_db)
        async with app.run_test(size=(80, 24)) as pilot:
            await open_run(pilot, app, FAILED)  # its project folder does not exist
            await pilot.press("r")
            await pilot.pause()
            assert isinstance(app.screen, RunScreen)  # no question asked, nothing restored
            assert any("no longer exists" in n.message for n in app._notifications)

    run(scenario)


# -- metrics -------------------------------------------------------------------------------------


def test_metrics_panel_shows_what_metrics_compute_says(story_db):
    expected = compute(Store(story_db), since=NOW - 86400, until=NOW)

    async def scenario():
        app = make_app(story_db)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.loads > 0, "the runs")
            await pilot.press("m")
            await until(pilot, lambda: isinstance(app.screen, MetricsScreen), "metrics")
            await until(pilot, lambda: app.metrics_view is not None, "the figures")
            assert app.metrics_view.metrics.to_dict() == expected.to_dict()
            figures = str(app.screen.query_one("#figures").render())
            rate = expected.overloaded / expected.attempts
            assert f"attempts {expected.attempts} · 529 {expected.overloaded} ({rate:.1%})" in (
                figures
            )
            assert f"final failures {expected.final_failures}" in figures
            assert banner(app, "#alerts") == "PAGE: 1 step(s) failed after retries and fallback"
            await pilot.press("w")  # 24h → 7d
            await until(pilot, lambda: app.metrics_view.window == "7d", "the 7d window")
            await pilot.press("escape")
            assert isinstance(app.screen, RunsScreen)

    run(scenario)


# -- layout, polling, the read-only connection -------------------------------------------------


def test_every_screen_fits_80x24_with_its_keys_in_the_footer(story_db):
    async def scenario():
        app = make_app(story_db)
        async with app.run_test(size=(80, 24)) as pilot:

            def check(keys: set[str], *widgets: str) -> None:
                footer = app.screen.query_one(Footer)
                assert footer.region.y == 23 and footer.region.height == 1
                shown = {k for k, b in app.screen.active_bindings.items() if b.binding.show}
                assert keys <= shown, (keys, shown)
                for selector in widgets:
                    region = app.screen.query_one(selector).region
                    assert region.height >= 1 and region.bottom <= 23, (selector, region)
                    assert region.right <= 80

            await until(pilot, lambda: app.loads > 0, "the runs")
            check({"enter", "q", "m", "f"}, "#summary", "#runs", "#preview")
            assert table(app, "#runs").region.height >= 10
            await open_run(pilot, app, WAITING)
            check({"escape", "d", "r", "q", "m", "f"}, "#run-head", "#waiting-banner", "#steps")
            await pilot.press("escape")
            await open_run(pilot, app, RUNNING)
            check({"escape", "d", "r"}, "#subs-banner", "#steps", "#step-banner", "#attempts")
            assert table(app, "#steps").region.height >= 5
            assert table(app, "#attempts").region.height >= 5
            await pilot.press("m")
            await until(pilot, lambda: app.metrics_view is not None, "metrics")
            check({"escape", "w"}, "#metrics-head", "#alerts", "#metrics-body")

    run(scenario)


def test_polls_never_overlap_and_rearm_after_each_other(story_db):
    async def scenario():
        app = make_app(story_db, poll_interval=0.005)
        inflight, most, polls = [0], [0], [0]
        real = app.reader.data_version

        def counting() -> int:
            inflight[0] += 1
            most[0] = max(most[0], inflight[0])
            time.sleep(0.01)
            polls[0] += 1
            inflight[0] -= 1
            return real()

        app.reader.data_version = counting  # type: ignore[method-assign]
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: polls[0] >= 15, "fifteen polls")
            for _ in range(5):
                app.request_load()  # asking for data mid-poll never starts a second poll
                await pilot.pause(0.005)
        assert most[0] == 1

    run(scenario)


def test_reader_is_read_only_and_sees_other_connections_commit(story_db, home):
    import sqlite3

    reader = StoreReader(story_db)
    with pytest.raises(sqlite3.OperationalError, match=r"readonly|read-only"):
        reader.query("insert into blobs (sha, body) values ('x', 'y')")
    before = reader.data_version()
    assert reader.data_version() == before  # nothing committed in between
    Writer(Store.open(home)).run("feed00000001", "x", "/tmp/x", "running", NOW)
    assert reader.data_version() != before
    assert reader.runs_page().runs[-1].id == "feed00000001"
    reader.close()


def test_runs_list_is_a_window_of_the_newest_runs_plus_every_active_one(home):
    store = Store.open(home)
    w = Writer(store)
    w.run("old-waiting", "q", "/p", "waiting", NOW - 1000, next_attempt_at=NOW)
    for i in range(6):
        w.run(f"r{i}", "r", "/p", "completed", NOW - 100 + i)
    page = StoreReader(home / DB_NAME).runs_page(limit=3)
    assert [r.id for r in page.runs] == ["old-waiting", "r3", "r4", "r5"]
    assert page.total == 7 and page.since == NOW - 97


def test_watch_run_says_what_is_wrong_in_one_sentence(tmp_path, capsys):
    assert watch.run(tmp_path / "nowhere.db") == 2
    err = capsys.readouterr().err
    assert "No agentguard database at" in err and "nowhere.db" in err
    (tmp_path / "junk.db").write_text("not a database at all")
    assert watch.run(tmp_path / "junk.db") == 2
    assert "damaged or not a database" in capsys.readouterr().err


def test_watch_prepare_marks_dead_runs_interrupted(home):
    store = Store.open(home)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    Writer(store).run("deadbeef0002", "crashed", "/tmp/x", "running", NOW, pid=dead.pid)
    store.update_run("deadbeef0002", hostname=socket.gethostname())
    watch.prepare(home / DB_NAME, explicit=True)
    assert store.get_run("deadbeef0002")["status"] == "interrupted"


# -- wording -----------------------------------------------------------------------------------


def attempt(model: str, code: int | None, etype: str | None, outcome: str) -> AttemptView:
    return AttemptView(1, 1, None, model, None, None, None, code, etype, None, None, outcome, None)


def test_failure_summaries_name_what_each_route_answered():
    one_route = [attempt(OPUS, 529, "overloaded_error", "retry")] * 3
    assert fmt.failure_summary(one_route, OPUS) == "529 overloaded ×3"
    two_routes = [
        attempt(OPUS, 529, "overloaded_error", "retry"),
        attempt(OPUS, 200, "overloaded_error", "next_route"),  # an SSE error mid-stream
        attempt(GPT, 429, "rate_limit_error", "next_route"),
        attempt(SONNET, None, "connection_error", "retry"),
        attempt(SONNET, 200, None, "ok"),
    ]
    assert fmt.failure_summary(two_routes, OPUS) == (
        "claude-opus-4-7: 529 overloaded ×1, overloaded mid-stream ×1; "
        "gpt-5.5: 429 rate_limit ×1; claude-sonnet-4-6: connection ×1"
    )
    assert fmt.attempts_summary(two_routes) == "529 mid 429 connection 200"
    assert fmt.run_length(["529", "529", "200"]) == "529×2 200"


def test_waiting_wording_counts_down_then_says_it_is_due():
    from agentguard.tui.data import RunSummary

    queued = RunSummary(
        *("r", "n", "/p", "waiting", "waiting", NOW, NOW, None, NOW + 3725, None, OPUS, (), 1, 0)
    )
    assert fmt.waiting_banner(queued, NOW, UTC) == (
        "queued — next attempt 2027-01-15 09:02:05 UTC (in 1h 02m)"
    )
    assert "due since" in fmt.waiting_banner(queued, NOW + 4000, UTC)
    assert fmt.age(59) == "59s" and fmt.age(3600) == "1h" and fmt.ms(2400) == "2.4s"


# -- snapshots (pinned Textual, frozen clock, fixed data) -----------------------------------------


def snapshot_app(db: Path) -> WatchApp:
    return make_app(db, tick_interval=3600.0)


async def loaded(pilot: Pilot) -> None:
    app = pilot.app
    assert isinstance(app, WatchApp)
    await until(pilot, lambda: app.loads > 0 and len(table(app, "#runs").keys) == 4, "runs")


def open_in_snapshot(run_id: str, *keys: str) -> Callable[[Pilot], Awaitable[None]]:
    async def go(pilot: Pilot) -> None:
        await loaded(pilot)
        app = pilot.app
        assert isinstance(app, WatchApp)
        await open_run(pilot, app, run_id)
        await pilot.press(*keys)
        await pilot.pause()

    return go


def test_snapshot_runs_list(story_db, snap_compare):
    assert snap_compare(snapshot_app(story_db), terminal_size=(80, 24), run_before=loaded)


def test_snapshot_run_with_substitution_banner(story_db, snap_compare):
    app = snapshot_app(story_db)
    go = open_in_snapshot(RUNNING, "up", "up")
    assert snap_compare(app, terminal_size=(80, 24), run_before=go)


def test_snapshot_waiting_run(story_db, snap_compare):
    app = snapshot_app(story_db)
    assert snap_compare(app, terminal_size=(80, 24), run_before=open_in_snapshot(WAITING))


def test_snapshot_metrics_panel(story_db, snap_compare):
    async def go(pilot: Pilot) -> None:
        await loaded(pilot)
        app = pilot.app
        assert isinstance(app, WatchApp)
        await pilot.press("m")
        await until(pilot, lambda: app.metrics_view is not None, "metrics")
        await pilot.pause()

    assert snap_compare(snapshot_app(story_db), terminal_size=(80, 24), run_before=go)


def test_story_store_is_what_the_guard_would_write(story_db):
    """The snapshot data keeps the guard's invariants: every attempt belongs to a step of its
    run, attempts are numbered from 1, and only finished steps have a served model."""
    store = Store(story_db)
    bad = store.query(
        "select a.id from attempts a join steps s on s.id = a.step_id where a.run_id != s.run_id"
    )
    assert bad == []
    for step in store.query("select * from steps"):
        numbers = [a["number"] for a in store.attempts(step["id"])]
        assert numbers == list(range(1, len(numbers) + 1))
        assert (step["served_model"] is None) == (step["status"] != "ok")
