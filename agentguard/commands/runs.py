"""`agentguard runs`: the runs in the store, newest first."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from agentguard.commands.common import (
    OK,
    Col,
    Context,
    age,
    clip,
    cut,
    grid,
    iso,
    plain,
    status_text,
)

NAME = "runs"
SUMMARY = "List runs: status, age, steps, models that served them, substitutions, last error."
EPILOG = """\
examples:
  agentguard runs
  agentguard runs --status failed --limit 5
  agentguard runs --project . --json | jq '.runs[0].id'
"""
WIDE = 140  # columns from which the project and served-by get their own columns
STATUSES = ("running", "completed", "failed", "waiting", "interrupted")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--status", choices=STATUSES, help="only runs with this status")
    parser.add_argument("--project", metavar="DIR", help="only runs of this project folder")
    parser.add_argument(
        "--limit", type=_positive, default=20, metavar="N", help="at most N runs (default 20)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def run(ctx: Context, args: argparse.Namespace) -> int:
    store = ctx.store()
    where, params = [], []
    if args.status:
        where.append("status = ?")
        params.append(args.status)
    if args.project:
        where.append("project = ?")
        params.append(str(Path(args.project).expanduser().resolve()))
    sql = "select * from runs"
    if where:
        sql += " where " + " and ".join(where)
    sql += " order by coalesce(updated_at, created_at) desc, id limit ?"
    rows = store.query(sql, [*params, args.limit])
    stats = _step_stats(store, [r["id"] for r in rows])
    runs = [_summary(row, stats.get(row["id"])) for row in rows]
    if ctx.as_json:
        ctx.print_json({"runs": [_as_json(r) for r in runs]})
        return OK
    if not runs:
        what = f" with status {args.status}" if args.status else ""
        what += f" in {args.project}" if args.project else ""
        ctx.out.print(plain(f"No runs{what} in {store.path}."))
        return OK
    ctx.out.print(_table(runs, time.time(), ctx.out.width))
    return OK


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return value


def _step_stats(store: Any, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Per run: step count, substitutions, first requested model, served models by use."""
    stats: dict[str, dict[str, Any]] = {
        r: {"steps": 0, "substitutions": 0, "first_model": None, "served": {}} for r in run_ids
    }
    if not run_ids:
        return stats
    marks = ", ".join("?" * len(run_ids))
    for row in store.query(
        "select run_id, number, requested_provider, requested_model, served_model, substituted "
        f"from steps where run_id in ({marks}) order by run_id, number",
        run_ids,
    ):
        entry = stats[row["run_id"]]
        entry["steps"] += 1
        entry["substitutions"] += row["substituted"] or 0
        if entry["first_model"] is None:
            entry["first_model"] = (row["requested_provider"], row["requested_model"])
        if row["served_model"]:
            served = entry["served"]
            served[row["served_model"]] = served.get(row["served_model"], 0) + 1
    return stats


def _summary(row: dict[str, Any], stats: dict[str, Any] | None) -> dict[str, Any]:
    stats = stats or {"steps": 0, "substitutions": 0, "first_model": None, "served": {}}
    provider, model = row["primary_provider"], row["primary_model"]
    if not model and stats["first_model"]:  # no step was served yet: the model it asked for
        provider, model = stats["first_model"]
    served = sorted(stats["served"], key=lambda m: -stats["served"][m])
    return {**row, **stats, "primary": (provider, model), "served_models": served}


def _as_json(r: dict[str, Any]) -> dict[str, Any]:
    provider, model = r["primary"]
    return {
        "id": r["id"],
        "name": r["name"],
        "status": r["status"],
        "project": r["project"],
        "hostname": r["hostname"],
        "created_at": iso(r["created_at"]),
        "updated_at": iso(r["updated_at"]),
        "ended_at": iso(r["ended_at"]),
        "next_attempt_at": iso(r["next_attempt_at"]),
        "steps": r["steps"],
        "primary_provider": provider,
        "primary_model": model,
        "served_models": r["served_models"],
        "substitutions": r["substitutions"],
        "last_error": r["last_error"],
    }


def _table(runs: list[dict[str, Any]], now: float, width: int) -> Group:
    """Every column on a wide terminal; the machine of each run when they ran on several (a
    fleet's shared store). At 80 columns the project is left out (it is in --json and `show`),
    the models that also served follow the primary, and last errors are listed under the
    table, one line each, rather than cut to a few characters."""
    wide = width >= WIDE
    fleet = len({r["hostname"] for r in runs}) > 1  # runs of several machines (a shared store)
    cols = [Col("id"), Col("name", flex=1, min=8), Col("status")]
    if fleet:
        cols.append(Col("host", flex=1, min=6))
    if wide:
        cols.append(Col("project", flex=2))
    cols += [Col("age", justify="right"), Col("steps", justify="right")]
    cols += [Col("model", flex=3), Col("served by", flex=4)] if wide else [Col("model", flex=6)]
    cols.append(Col("subs", justify="right"))
    if wide:
        cols.append(Col("last error", flex=4, min=10))
    rows: list[list[Text]] = []
    notes = Table.grid(padding=(0, 2))
    notes.add_column(no_wrap=True)
    notes.add_column(overflow="fold")
    for r in runs:
        model = r["primary"][1]
        subs = r["substitutions"]
        others = [m for m in r["served_models"] if m != model]
        error = r["last_error"] or ""
        error = error.removeprefix(f"run {r['id']} ")  # guard's messages start with it
        if r["status"] == "waiting":
            nxt = f"next attempt {age(r['next_attempt_at'], now)}"
            error = f"{nxt}: {error}" if error else nxt
        style = "red" if r["status"] == "failed" else ("yellow" if error else "")
        cells = [plain(r["id"]), cut(r["name"]), status_text(r["status"])]
        if fleet:
            cells.append(cut(r["hostname"] or "-"))
        if wide:
            cells.append(cut(Path(r["project"]).name if r["project"] else "-"))
        cells += [plain(age(r["updated_at"] or r["created_at"], now)), plain(r["steps"])]
        if wide:
            cells.append(cut(model or "-"))
            cells.append(cut(", ".join(r["served_models"]) or "-", "yellow" if others else ""))
        else:
            text = cut(model or "-")
            for other in others:  # a line each: a substituted run is taller, hard to miss
                text.append(f"\n+ {other}", style="yellow")
            cells.append(text)
        cells.append(plain(subs, "bold yellow" if subs else "dim"))
        if wide:
            cells.append(cut(error, style))
        elif error:
            notes.add_row(plain(r["id"]), plain(clip(error, 300), style))
        rows.append(cells)
    parts: list[Any] = [grid(cols, rows, width)]
    if notes.row_count:
        waiting = any(r["status"] == "waiting" for r in runs)
        title = "last errors and next attempts:" if waiting else "last errors:"
        parts += [Text(""), Text(title, style="dim"), notes]
    return Group(*parts)
