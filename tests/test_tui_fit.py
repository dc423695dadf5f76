"""`agentguard watch` fits 80×24, as the README says: read off the screen the app draws.

On every screen the run's header, the requested model (the highlighted step's line at the foot
of the timeline) and the attempts' outcome column are on screen, every widget lies inside the
80×24 screen, and any text that had to be cut ends in "…" — in table cells, headers and banners.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.text import Text
from textual.widgets import Footer, Static

from agentguard.store import DB_NAME, Store
from agentguard.tui.app import WatchApp
from agentguard.tui.screens.run import RunScreen
from agentguard.tui.widgets import Banner, KeyedTable
from tests.test_tui import (
    FAILED,
    NOW,
    OPUS,
    RUNNING,
    SONNET,
    WAITING,
    Writer,
    build_story,
    make_app,
    ok,
    open_run,
    overload,
    run,
    table,
    until,
)

SIZE = (80, 24)
CROWDED = "f00dfeedbeef"
LONG_PROJECT = "/home/developer/src/github.com/acme-corporation/payments-platform-monorepo"
LONG_ERROR = (
    "run f00dfeedbeef step 6 is queued until 2027-01-15 08:04:12 UTC: anthropic:claude-opus-4-7: "
    "529 overloaded_error ×5 after 5 attempt(s) (last request-id req_0042), openai:gpt-5.5: 429 "
    "rate_limit_error ×2, and policy 'batch' forbids substitution; resume it with "
    "`agentguard resume f00dfeedbeef`."
)


def screen_lines(app: WatchApp) -> list[str]:
    """The characters on screen, one string per row (what a person sees)."""
    strips = app.screen._compositor.render_strips()  # textual is pinned (pyproject.toml)
    lines = [strip.text for strip in strips]
    assert len(lines) == SIZE[1] and all(len(line) <= SIZE[0] for line in lines)
    return lines


def inside(app: WatchApp, *selectors: str) -> None:
    """Each widget is shown (at least a row) and lies wholly inside the 80×24 screen, above
    the footer."""
    footer = app.screen.query_one(Footer).region
    assert (footer.y, footer.height, footer.width) == (23, 1, 80)
    for selector in selectors:
        region = app.screen.query_one(selector).region
        assert region.height >= 1 and region.width >= 1, (selector, region)
        assert region.x >= 0 and region.right <= 80 and region.bottom <= 23, (selector, region)


def cells_fit(app: WatchApp, selector: str) -> None:
    """The table's columns all fit its width, and each cell (and header) too long for its
    column is drawn cut with "…"."""
    widget = app.screen.query_one(selector, KeyedTable)
    lines = screen_lines(app)
    shown = "\n".join(lines)
    columns = list(widget.columns.values())
    width = widget.scrollable_content_region.width
    assert sum(c.get_render_width(widget) for c in columns) <= width
    texts = [[c.label.plain for c in columns]]
    rows_visible = widget.scrollable_content_region.height - 1  # below the header row
    texts += [
        [c[0] if isinstance(c, tuple) else c for c in widget.cells(key) or ()]
        for key in widget.keys[int(widget.scroll_y) : int(widget.scroll_y) + rows_visible]
    ]
    for row in texts:
        for column, text in zip(columns, row, strict=True):
            if Text(text).cell_len > column.width:
                assert text[: column.width - 1] + "…" in shown, (selector, text, column.width)
            elif text:
                assert text in shown, (selector, text)


def banner_fits(app: WatchApp, selector: str) -> None:
    """A banner shows its whole text, or its last visible line ends in "…"."""
    widget = app.screen.query_one(selector, Banner)
    if not widget.display:
        return
    region = widget.region
    rows = [line[region.x : region.right].strip() for line in screen_lines(app)]
    drawn = " ".join(rows[region.y : region.bottom])
    whole = " ".join(widget.text.split())
    if " ".join(drawn.split()) != whole:
        assert drawn.endswith("…"), (selector, drawn, whole)


def build_crowded(store: Store) -> None:
    """A run with everything at once: a long name and path, queued, three substituted steps,
    a failed one, long model names and request-ids."""
    w = Writer(store)
    w.run(
        CROWDED,
        "migrate-the-billing-service-to-the-new-ledger-api-and-backfill-invoices",
        LONG_PROJECT,
        "waiting",
        NOW - 3600,
        next_attempt_at=NOW + 252,
        last_error=LONG_ERROR,
    )
    w.step(CROWDED, NOW - 3500, [ok()])
    for i in range(3):
        w.step(
            CROWDED,
            NOW - 3000 + 100 * i,
            [overload(), overload(slept=380.0), overload("next_route", slept=910.0), ok(SONNET)],
            reason="claude-opus-4-7: 529 overloaded_error ×3",
        )
    w.step(
        CROWDED,
        NOW - 2000,
        [(OPUS, 400, "invalid_request_error", "fatal", 120.0, 0.0)],
        status="failed",
        error="400 invalid_request_error: messages: text content blocks must be non-empty " * 3,
    )
    w.step(
        CROWDED,
        NOW - 600,
        [overload(), overload("give_up", slept=2000.0)],
        status="waiting",
        error=LONG_ERROR,
    )
    with store.write() as db:
        db.execute(
            "update attempts set request_id = 'req_011CUzX8cL6bXwFrLkQ' || id where run_id = ?",
            [CROWDED],
        )


@pytest.fixture
def crowded_db(home: Path) -> Path:
    store = Store.open(home)
    build_story(store)
    build_crowded(store)
    store.close()
    return home / DB_NAME


RUN_WIDGETS = ("#run-head", "#steps", "#step-banner", "#attempts")
BANNERS = ("#waiting-banner", "#subs-banner", "#step-banner", "#restore-note")


async def check_run_screen(app: WatchApp, name: str, requested: str) -> None:
    screen = app.screen
    assert isinstance(screen, RunScreen) and screen.detail is not None
    inside(app, *RUN_WIDGETS)
    shown = "\n".join(screen_lines(app))
    # the run header: name, status and id on the first line, cut with "…" when too long
    head = screen.query_one("#run-head").region
    first = screen_lines(app)[head.y].rstrip()
    assert screen.detail.run.id in first or first.endswith("…"), first
    assert name[:20] in first
    assert first.endswith("…") or screen.detail.run.project in first
    # the requested model, on the highlighted step's line at the foot of the timeline
    step_banner = screen.query_one("#step-banner").region
    foot = " ".join(screen_lines(app)[step_banner.y : step_banner.bottom])
    assert requested in foot, foot
    # the outcome column and every attempt's outcome
    assert "outcome" in shown
    attempts = screen.query_one("#attempts", KeyedTable)
    for key in attempts.keys[: attempts.scrollable_content_region.height - 1]:
        outcome = attempts.cells(key)[-1]
        assert (outcome[0] if isinstance(outcome, tuple) else outcome) in shown
    cells_fit(app, "#steps")
    cells_fit(app, "#attempts")
    for selector in BANNERS:
        banner_fits(app, selector)


@pytest.mark.parametrize(
    ("run_id", "name", "keys"),
    [
        (RUNNING, "refactor-auth", ()),
        (RUNNING, "refactor-auth", ("up", "up")),  # the substituted step
        (WAITING, "nightly-batch", ()),
        (FAILED, "docs-sweep", ()),
        (CROWDED, "migrate-the-billing-service", ()),
        (CROWDED, "migrate-the-billing-service", ("up",)),  # the failed step
        (CROWDED, "migrate-the-billing-service", ("up", "up")),  # a substituted one
    ],
)
def test_a_run_fits_80x24(crowded_db: Path, run_id: str, name: str, keys: tuple[str, ...]):
    async def scenario() -> None:
        app = make_app(crowded_db, tick_interval=3600.0)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.loads > 0, "the runs")
            await open_run(pilot, app, run_id)
            await pilot.press(*keys)
            await pilot.pause()
            await check_run_screen(app, name, OPUS)

    run(scenario)


def test_a_crowded_run_after_a_restore_still_fits(crowded_db: Path):
    """The worst case: queued, substituted, a long step line, and a restore note."""

    async def scenario() -> None:
        app = make_app(crowded_db, tick_interval=3600.0)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.loads > 0, "the runs")
            await open_run(pilot, app, CROWDED)
            note = app.screen.query_one("#restore-note", Banner)
            note.show(
                f"restored step 6's checkpoint 06f00dfeedbe (12 paths changed) · backup "
                f"0123456789ab: the tree as it was; undo with `agentguard restore {CROWDED} "
                "--undo` · 3 file(s) copied aside first",
                "info",
            )
            await pilot.pause()
            for selector in ("#waiting-banner", "#subs-banner", "#restore-note"):
                assert app.screen.query_one(selector).display
            inside(app, *RUN_WIDGETS, "#waiting-banner", "#subs-banner", "#restore-note")
            steps = table(app, "#steps")
            assert steps.region.height >= 4
            rows = steps.scrollable_content_region.height - 1  # below the header row
            await until(
                pilot,
                lambda: steps.scroll_y <= steps.cursor_row < steps.scroll_y + rows,
                "the highlighted step scrolled into view after the banners took room",
            )
            await pilot.pause()
            assert any(line.startswith(" 6    waiting") for line in screen_lines(app))
            assert table(app, "#attempts").region.height == 7
            await check_run_screen(app, "migrate-the-billing-service", OPUS)

    run(scenario)


def test_the_runs_list_fits_80x24(crowded_db: Path):
    async def scenario() -> None:
        app = make_app(crowded_db, tick_interval=3600.0)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.loads > 0, "the runs")
            runs = table(app, "#runs")
            await until(pilot, lambda: CROWDED in runs.keys, "the crowded run")
            inside(app, "#summary", "#runs", "#preview")
            cells_fit(app, "#runs")
            assert "last error" in "\n".join(screen_lines(app))  # the last column is on screen
            runs.select_key(CROWDED)
            widget = app.screen.query_one("#preview", Static)
            await until(pilot, lambda: CROWDED in str(widget.content), "the crowded run's preview")
            await pilot.pause()
            preview = app.screen.query_one("#preview").region
            rows = screen_lines(app)[preview.y + 1 : preview.bottom]  # below its border
            assert rows[0].strip().startswith("migrate-the-billing")
            assert rows[0].rstrip().endswith("…")  # the long path is cut, not wrapped away
            assert rows[-1].rstrip().endswith("…")  # more to say than 3 lines: it says so

    run(scenario)


def test_the_metrics_panel_fits_80x24(crowded_db: Path):
    async def scenario() -> None:
        app = make_app(crowded_db, tick_interval=3600.0)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.loads > 0, "the runs")
            await pilot.press("m")
            await until(pilot, lambda: app.metrics_view is not None, "metrics")
            await pilot.pause()
            inside(app, "#metrics-head", "#metrics-body")
            banner_fits(app, "#alerts")
            assert "metrics · last 24h" in screen_lines(app)[0]

    run(scenario)
