"""`agentguard watch` at scale: 10,000 runs and 500,000 attempts in the store.

    python -m benchmarks.tui_scale [--runs 10000] [--steps-per-run 25] [--attempts-per-step 2]

Generates a temporary store (runs over 30 days, 3 % of steps substituted, a few runs running
or queued), then measures, headless at 80×24:

- the worker's queries: the runs page, one run's detail, the metrics over 24 h and all time;
- time to first screen: from starting the app to the runs table painted with its rows;
- refresh: another connection commits a new attempt / a new run; how long until the view shows
  it (includes waiting for the next 0.5 s poll), how long the UI thread spends applying it,
  and the worst event-loop stall measured while refreshes happen (what "smooth" means here);
- a key press moving the cursor in the runs list.

Prints one table and saves it (results/tui_scale.json; `make bench` runs it with the rest).
Figures, no targets.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agentguard.store import DB_NAME, Store  # noqa: E402
from agentguard.tui.app import WatchApp  # noqa: E402
from agentguard.tui.data import StoreReader  # noqa: E402
from agentguard.tui.screens.runs import RunsScreen  # noqa: E402
from agentguard.tui.watch import quiet_gc  # noqa: E402
from agentguard.tui.widgets import KeyedTable  # noqa: E402
from benchmarks.common import Report, timed  # noqa: E402

NOW = time.time()
DAYS = 30
OPUS, SONNET = "claude-opus-4-7", "claude-sonnet-4-6"


def generate(home: Path, runs: int, steps_per_run: int, attempts_per_step: int) -> dict[str, int]:
    """Rows as the guard writes them, inserted in bulk (one transaction per table)."""
    rng = random.Random(7)
    store = Store.open(home)
    conn = store.db.conn
    run_rows, step_rows, attempt_rows = [], [], []
    step_id = attempt_id = 0
    for r in range(runs):
        created = NOW - DAYS * 86400 * (1 - r / runs)
        status = rng.choices(
            ["completed", "failed", "running", "waiting"], weights=[94, 5, 0.7, 0.3]
        )[0]
        run_id = f"run{r:09d}"
        run_rows.append(
            (
                run_id,
                f"task-{r}",
                f"/home/dev/project-{r % 40}",
                status,
                OPUS,
                created,
                created + steps_per_run * 20,
                NOW + 300 if status == "waiting" else None,
                "529 overloaded_error ×4" if status in ("failed", "waiting") else None,
            )
        )
        for n in range(1, steps_per_run + 1):
            step_id += 1
            at = created + n * 20
            substituted = rng.random() < 0.03
            served = SONNET if substituted else OPUS
            step_rows.append(
                (step_id, run_id, n, "ok", OPUS, served, int(substituted), at, 900.0, f"{n:040x}")
            )
            for a in range(1, attempts_per_step + 1):
                attempt_id += 1
                last = a == attempts_per_step
                attempt_rows.append(
                    (
                        attempt_id,
                        run_id,
                        step_id,
                        a,
                        served if last else OPUS,
                        at + a,
                        0.0 if a == 1 else 500.0,
                        300.0,
                        200 if last else 529,
                        None if last else "overloaded_error",
                        f"req_{attempt_id:012d}",
                        "ok" if last else "retry",
                    )
                )
    with store.write():
        conn.executemany(
            "insert into runs (id, name, project, status, primary_model, created_at, updated_at, "
            "next_attempt_at, last_error) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            run_rows,
        )
        conn.executemany(
            "insert into steps (id, run_id, number, status, requested_model, served_model, "
            "substituted, started_at, latency_ms, checkpoint) "
            "values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            step_rows,
        )
        conn.executemany(
            "insert into attempts (id, run_id, step_id, number, model, started_at, "
            "slept_before_ms, latency_ms, status_code, error_type, request_id, outcome) "
            "values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            attempt_rows,
        )
    conn.execute("analyze")
    conn.execute("pragma wal_checkpoint(truncate)")
    store.close()
    return {"runs": len(run_rows), "steps": len(step_rows), "attempts": len(attempt_rows)}


class LoopLag:
    """The event loop's worst lateness: a 5 ms sleeper that notes how late it wakes."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.005)
            self.worst = max(self.worst, (time.perf_counter() - start - 0.005) * 1000)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def first_screen(db: Path) -> float:
    app = WatchApp(db)
    start = time.perf_counter()
    async with app.run_test(size=(80, 24)) as pilot:
        while app.loads == 0:
            await asyncio.sleep(0.001)
        await pilot.pause()  # the frame with the rows
        elapsed = (time.perf_counter() - start) * 1000
        assert app.screen.query_one("#runs", KeyedTable).row_count > 0
    return elapsed


async def refreshes(db: Path, home: Path, rounds: int) -> dict[str, float]:
    """Commit from another connection while the app runs; time until the view shows it."""
    app = WatchApp(db)
    applied: list[float] = []
    real_show = RunsScreen.show_page

    def measured_show(screen: RunsScreen, page):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        real_show(screen, page)
        applied.append((time.perf_counter() - start) * 1000)

    RunsScreen.show_page = measured_show  # type: ignore[method-assign]
    writer = Store.open(home)
    shown_attempt, shown_run, keys = [], [], []
    lag = LoopLag()
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            table = app.screen.query_one("#runs", KeyedTable)
            while app.loads == 0:
                await asyncio.sleep(0.005)
            await pilot.pause()
            running = writer.query(
                "select r.id, max(s.id) as step from runs r join steps s on s.run_id = r.id "
                "where r.status = 'running' group by r.id limit 1"
            )[0]
            lag.start()
            for i in range(rounds):
                # a new attempt on a running run: the runs page is reloaded, nothing changes
                loads = app.loads
                start = time.perf_counter()
                await asyncio.to_thread(  # the writer is another agent, not the UI thread
                    writer.insert_attempt,
                    {
                        "run_id": running["id"],
                        "step_id": running["step"],
                        "number": 100 + i,
                        "model": OPUS,
                        "started_at": time.time(),
                        "outcome": "retry",
                        "status_code": 529,
                    },
                )
                while app.loads == loads:
                    await asyncio.sleep(0.001)
                shown_attempt.append((time.perf_counter() - start) * 1000)
                # a new run appears at the bottom of the list
                run_id = f"new{i:06d}"
                start = time.perf_counter()
                await asyncio.to_thread(
                    writer.insert_run,
                    {"id": run_id, "name": "new", "project": "/p", "status": "running",
                     "created_at": time.time(), "primary_model": OPUS},
                )  # fmt: skip
                while run_id not in table.keys:
                    await asyncio.sleep(0.001)
                shown_run.append((time.perf_counter() - start) * 1000)
            lag.stop()
            for _ in range(10):
                start = time.perf_counter()
                await pilot.press("up")
                keys.append((time.perf_counter() - start) * 1000)
            rows = table.row_count
    finally:
        RunsScreen.show_page = real_show  # type: ignore[method-assign]
        writer.close()
    return {
        "attempt_shown": statistics.median(shown_attempt),
        "run_shown": statistics.median(shown_run),
        "apply_median": statistics.median(applied[1:]),
        "apply_max": max(applied[1:]),
        "first_apply": applied[0],
        "lag_worst": lag.worst,
        "key": statistics.median(keys),
        "rows": rows,
    }


def measure(runs: int, steps_per_run: int, attempts_per_step: int, rounds: int) -> Report:
    """Generate the store, measure the worker's queries and the app, as figures."""
    with tempfile.TemporaryDirectory(prefix="agentguard-tui-scale-") as tmp:
        home = Path(tmp)
        start = time.perf_counter()
        counts = generate(home, runs, steps_per_run, attempts_per_step)
        generated = time.perf_counter() - start
        db = home / DB_NAME
        size_mb = db.stat().st_size / 1e6

        reader = StoreReader(db)
        some_run = reader.query("select id from runs where status = 'running' limit 1")[0]["id"]
        queries = {
            "runs page (500 newest + active)": timed(lambda: reader.runs_page(limit=500)),
            f"one run's detail ({steps_per_run} steps)": timed(lambda: reader.run_detail(some_run)),
            "metrics, last 24 h": timed(
                lambda: reader.metrics(since=NOW - 86400, until=NOW, window="24h"), 3
            ),
            "metrics, all time": timed(
                lambda: reader.metrics(since=None, until=NOW, window="all"), 1
            ),
            "PRAGMA data_version": timed(reader.data_version, 50),
        }
        reader.close()

        quiet_gc()  # as `agentguard watch` does before it starts the app
        firsts = [asyncio.run(first_screen(db)) for _ in range(3)]
        refresh = asyncio.run(refreshes(db, home, rounds))

    case = f"{counts['runs']:,} runs, {counts['attempts']:,} attempts"
    report = Report()
    report.add(
        "tui_scale",
        case,
        "store",
        size_mb,
        "MB",
        note=f"{counts['steps']:,} steps; generated in {generated:.1f} s",
    )
    for name, ms in queries.items():
        report.add("tui_scale", case, f"worker: {name}", ms, "ms")
    rows = [
        ("time to first screen", statistics.median(firsts), "median of 3"),
        ("first table fill (UI thread)", refresh["first_apply"], ""),
        ("new attempt committed → view reloaded", refresh["attempt_shown"], "polls every 500 ms"),
        ("new run committed → row on screen", refresh["run_shown"], ""),
        ("UI thread per refresh, median", refresh["apply_median"], ""),
        ("UI thread per refresh, max", refresh["apply_max"], ""),
        ("worst event-loop stall during refreshes", refresh["lag_worst"], ""),
        ("key press (cursor up), incl. Pilot", refresh["key"], "median of 10"),
    ]
    for metric, ms, note in rows:
        report.add("tui_scale", case, metric, ms, "ms", note=note)
    report.add("tui_scale", case, "rows in the runs table", refresh["rows"], "")
    return report


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--steps-per-run", type=int, default=25)
    parser.add_argument("--attempts-per-step", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    return measure(args.runs, args.steps_per_run, args.attempts_per_step, args.rounds)


if __name__ == "__main__":
    result = main()
    print(f"agentguard watch at scale (80×24, headless, Python {sys.version.split()[0]})")
    print(result.table())
    print(result.save("tui_scale"))
