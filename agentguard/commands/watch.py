"""`agentguard watch`: the live TUI (Textual is imported only here, on demand)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from agentguard.commands.common import Context, Refused
from agentguard.store import STORE_ENV

NAME = "watch"
SUMMARY = "Watch every run, attempt, retry and substitution live in a terminal UI."
EPILOG = """\
keys: enter open · esc back · d diff · r restore · m metrics · f follow · q quit

examples:
  agentguard watch
  agentguard watch --db /path/to/agentguard.db
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, help="a store file (default: the one under --home)")
    parser.add_argument("--run", metavar="RUN", help="open this run's view first")


def run(ctx: Context, args: argparse.Namespace) -> int:
    from agentguard.tui.watch import run as watch

    if args.db is None and os.environ.get(STORE_ENV, "").startswith(("postgres://", "postgresql")):
        raise Refused(  # said, rather than showing this machine's empty SQLite file
            f"agentguard watch does not read a PostgreSQL store yet (${STORE_ENV}); use "
            "`agentguard runs`, `show` and `stats`, or unset it to watch this machine's store."
        )

    return watch(db=args.db, home=ctx.home, run_id=args.run)
