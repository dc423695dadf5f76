"""`agentguard demo`: the overload story offline, then the TUI on its run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agentguard.commands.common import FAILED, OK, Context

NAME = "demo"
SUMMARY = "Run the offline demo: a real agent fixes a bug through an overload storm."
EPILOG = """\
Everything runs on this machine: a temporary git project, the fake provider on 127.0.0.1,
and the example agent (examples/coding_agent.py). No API key, no network.

examples:
  agentguard demo              then opens `agentguard watch` (on a terminal)
  agentguard demo --no-tui     prints a summary instead
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-tui", action="store_true", help="print a summary, no TUI")
    parser.add_argument("--workdir", type=Path, help="where to create the demo project")


def run(ctx: Context, args: argparse.Namespace) -> int:
    from agentguard.demo import run_demo, summary

    result = run_demo(home=ctx.home, workdir=args.workdir, echo=ctx.out.print)
    ctx.out.print()
    ctx.out.print(summary(result), markup=False)
    if not args.no_tui and sys.stdout.isatty() and sys.stdin.isatty():
        from agentguard.tui.watch import run as watch

        watch(home=result.home, run_id=result.run_id)
    return OK if result.tests_pass else FAILED
