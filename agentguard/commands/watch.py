"""`agentguard watch`: the live TUI (Textual is imported only here, on demand)."""

from __future__ import annotations

import argparse
from pathlib import Path

from agentguard.commands.common import Context

NAME = "watch"
SUMMARY = "Watch every run, attempt, retry and substitution live in a terminal UI."
EPILOG = """\
keys: enter open · esc back · d diff · r restore · m metrics · f follow · q quit

With a postgresql:// store (--store, $AGENTGUARD_STORE) it watches the fleet's shared store:
every machine's runs, each with its host, followed live as the server announces each commit.

examples:
  agentguard watch
  agentguard watch --db /path/to/agentguard.db
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, help="a store file (default: the one under --home)")
    parser.add_argument("--run", metavar="RUN", help="open this run's view first")


def run(ctx: Context, args: argparse.Namespace) -> int:
    from agentguard.tui.watch import run as watch

    # --db names a SQLite file; else the store as every command chooses it (--store,
    # $AGENTGUARD_STORE, the config file's `store`)
    store = ctx.chosen_store() if args.db is None else None
    return watch(db=args.db, home=ctx.home, run_id=args.run, store=store)
