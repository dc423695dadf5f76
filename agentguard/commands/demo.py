"""`agentguard demo`: the overload story offline, then the TUI on its run."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from pathlib import Path

from agentguard.commands.common import FAILED, OK, Context
from agentguard.store_choice import STORE_ENV

NAME = "demo"
SUMMARY = "Run the offline demo: a real agent fixes a bug through an overload storm."
EPILOG = """\
Everything runs on this machine: a small git project (in the agentguard data folder, under
demo/calc-project, replaced by the next demo), the fake provider on 127.0.0.1, and the example
agent (examples/coding_agent.py). No API key, no network, nothing left in a temporary folder.

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
    show, watch_ = next_commands(ctx.home)
    ctx.out.print(summary(result, show=show, watch=watch_), markup=False, soft_wrap=True)
    if not args.no_tui and sys.stdout.isatty() and sys.stdin.isatty():
        from agentguard.tui.watch import run as watch

        watch(home=result.home, run_id=result.run_id, store="sqlite")  # the demo's own store
    return OK if result.tests_pass else FAILED


def next_commands(home: str | None) -> tuple[str, str]:
    """(`show RUN`, `watch`) as the person who ran the demo can type them where they stand:
    the agentguard they ran (`.venv/bin/agentguard` when it is not on PATH), with the --home they
    gave, and `make watch` when they ran `make demo` from the project."""
    command = agentguard_command()
    where = f" --home {shlex.quote(home)}" if home else ""
    # the demo writes to this machine's SQLite store whatever $AGENTGUARD_STORE names
    fleet = os.environ.get(STORE_ENV, "").strip().lower() not in ("", "sqlite")
    local = " --store sqlite" if fleet else ""
    show = f"{command}{where} show RUN{local}"
    if (
        not home
        and not fleet
        and os.environ.get("MAKELEVEL")
        and _has_make_target(Path.cwd(), "watch")
    ):
        return show, "make watch"
    return show, f"{command}{where} watch{local}"


def agentguard_command(argv0: str | None = None) -> str:
    """How to run this agentguard from the current folder."""
    script = Path(argv0 if argv0 is not None else sys.argv[0])
    if script.name != "agentguard":  # not the console script: e.g. python -m agentguard.cli
        return f"{shlex.quote(_from_here(Path(sys.executable)))} -m agentguard.cli"
    on_path = shutil.which("agentguard")
    if on_path is not None and _same_file(Path(on_path), script):
        return "agentguard"
    return shlex.quote(_from_here(script))


def _from_here(path: Path) -> str:
    """`path` relative to the current folder when it is inside it (`.venv/bin/agentguard`)."""
    absolute = Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def _has_make_target(folder: Path, target: str) -> bool:
    try:
        text = (folder / "Makefile").read_text(encoding="utf-8")
    except OSError:
        return False
    return any(line.startswith(f"{target}:") for line in text.splitlines())
