"""`agentguard gc`: keep the shadow git stores bounded (agentguard.retention)."""

from __future__ import annotations

import argparse
import re
from typing import Any

from rich import box
from rich.table import Table

from agentguard.commands.common import FAILED, OK, Context, acting, plain

NAME = "gc"
SUMMARY = "Prune old runs' working-tree snapshots from the shadow stores (never your own repo)."
EPILOG = """\
Runs that are running or waiting are never pruned, and the newest --keep-runs runs of each
project keep their snapshots whatever their age. Their steps, attempts and conversations stay
in the database; only the snapshots go. Pass "none" to lift a limit.

examples:
  agentguard gc --dry-run
  agentguard gc --max-age-days 7 --keep-runs 10
  agentguard gc --max-bytes 500MB --json
"""
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: an option not given keeps RetentionPolicy's own default.
    parser.add_argument(
        "--max-age-days",
        type=_limit(float, "a number of days"),
        metavar="D",
        default=argparse.SUPPRESS,
        help="prune runs last updated more than D days ago (default 30)",
    )
    parser.add_argument(
        "--keep-runs",
        type=_limit(int, "a whole number of runs"),
        metavar="N",
        default=argparse.SUPPRESS,
        help="the newest N runs of each project always keep theirs (default 50)",
    )
    parser.add_argument(
        "--max-bytes",
        type=_limit(_bytes, "a size such as 500MB or 2GiB"),
        metavar="B",
        default=argparse.SUPPRESS,
        help="then prune oldest runs until each project's store fits B (default: no limit)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="say what would be pruned; change nothing"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def run(ctx: Context, args: argparse.Namespace) -> int:
    from agentguard.retention import RetentionPolicy, collect, format_bytes

    limits = {
        key: getattr(args, key)
        for key in ("max_age_days", "keep_runs", "max_bytes")
        if hasattr(args, key)
    }
    policy = RetentionPolicy(**limits)
    store = ctx.store()
    with acting():
        report = collect(store, policy, dry_run=args.dry_run)
    if ctx.as_json:
        ctx.print_json(
            {
                "dry_run": report.dry_run,
                "policy": {
                    "max_age_days": policy.max_age_days,
                    "keep_runs": policy.keep_runs,
                    "max_bytes": policy.max_bytes,
                },
                "projects": report.projects,
                "runs_pruned": list(report.runs_pruned),
                "refs_deleted": report.refs_deleted,
                "snapshots_pruned": report.snapshots_pruned,
                "bytes_before": report.bytes_before,
                "bytes_after": report.bytes_after,
                "stores": [_store_json(s) for s in report.stores],
                "summary": report.summary(),
            }
        )
    else:
        stores = [s for s in report.stores if s.runs_pruned or s.error]
        if stores:
            table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1))
            table.add_column("project", overflow="fold")
            table.add_column("runs", justify="right", no_wrap=True)
            table.add_column("before", justify="right", no_wrap=True)
            table.add_column("after", justify="right", no_wrap=True)
            for s in stores:
                where = s.project or str(s.path)
                if s.project and not s.project_exists:
                    where += " (folder gone)"
                table.add_row(
                    plain(where),
                    plain(len(s.runs_pruned)),
                    plain(format_bytes(s.bytes_before)),
                    plain(s.error, "red") if s.error else plain(format_bytes(s.bytes_after)),
                )
            ctx.out.print(table)
        ctx.out.print(plain(report.summary()), soft_wrap=True)
    return FAILED if report.errors else OK


def _store_json(s: Any) -> dict[str, Any]:
    return {
        "project": s.project,
        "project_exists": s.project_exists,
        "path": str(s.path),
        "runs_pruned": list(s.runs_pruned),
        "refs_deleted": s.refs_deleted,
        "snapshots_pruned": s.snapshots_pruned,
        "bytes_before": s.bytes_before,
        "bytes_after": s.bytes_after,
        "over_budget": s.over_budget,
        "error": s.error,
    }


def _limit(parse: Any, what: str) -> Any:
    """An argparse type: a non-negative value, or `none` for no limit."""

    def convert(text: str) -> Any:
        if text.strip().lower() in ("none", "off", "unlimited"):
            return None
        try:
            value = parse(text)
        except ValueError:
            value = -1
        if value < 0:
            raise argparse.ArgumentTypeError(f"expected {what} (>= 0) or none, not {text!r}")
        return value

    return convert


def _bytes(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(text)
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
