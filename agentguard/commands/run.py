"""`agentguard run -- CMD …`: run an agent with every model call guarded by a private proxy."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from agentguard.commands.common import Context, Refused, store_env
from agentguard.commands.proxy import add_shared, options_from

NAME = "run"
SUMMARY = "Run an agent (claude, …) through a guarding proxy on a free loopback port."
EPILOG = """\
examples:
  agentguard run -- claude
  agentguard run --chain anthropic:claude-opus-4-7 anthropic:claude-sonnet-4-6 -- claude -p "fix it"
The child gets ANTHROPIC_BASE_URL and OPENAI_BASE_URL pointing at the proxy; its exit code is
agentguard's. For `claude`, agentguard's status line is turned on with Claude Code's --settings
unless your Claude Code settings have a statusLine of their own. The keys in ANTHROPIC_API_KEY /
OPENAI_API_KEY are the credentials the proxy accepts for fallback routes keyed from this
environment.
"""

_CHILD_KEYS = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_shared(parser)
    parser.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS", help="the agent")


def run(ctx: Context, args: argparse.Namespace) -> int:
    from agentguard.proxy import ProxyThread

    command = list(args.argv)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise Refused("Give the command to run after --, e.g. `agentguard run -- claude`.")
    accepted = tuple(os.environ[name] for name in _CHILD_KEYS if os.environ.get(name))
    options = options_from(ctx, args, accepted)
    try:
        proxy = ProxyThread(options).start()
    except OSError as exc:
        raise Refused(
            f"Cannot start the proxy on a loopback port ({exc.strerror or exc})."
        ) from None
    command = with_statusline(ctx, command, options.project)
    log_file = quiet_logs(ctx.home)
    env = {
        **os.environ,
        # --store or the project's config chose the store: the child (the status line Claude
        # Code runs, any agentguard command the agent runs) reads the one the proxy writes.
        # In its environment, not on a command line: never printed with the status-line hint.
        **store_env(options.store),
        "ANTHROPIC_BASE_URL": proxy.url,
        "OPENAI_BASE_URL": f"{proxy.url}/v1",
    }
    try:
        try:
            child = subprocess.Popen(command, env=env)
        except OSError as exc:
            raise Refused(f"Cannot run {command[0]!r}: {exc.strerror or exc}.") from None
        while True:
            try:
                code = child.wait()
                break
            except KeyboardInterrupt:  # the child got the Ctrl-C too; it decides
                continue
    finally:
        proxy.stop()
        logging.getLogger("agentguard").removeHandler(log_file)
        log_file.close()
    if code < 0:  # killed by a signal: the shell's convention
        return 128 - code if -code in signal.valid_signals() else 1
    return code


def quiet_logs(home: str | os.PathLike[str] | None) -> logging.Handler:
    """The child owns the terminal (Claude Code draws a full-screen UI there): agentguard's
    own retry and fallback messages go to $AGENTGUARD_HOME/logs/run.log instead of stderr.
    Everything they say is in the store too (`agentguard show`, `watch`, the status line)."""
    from agentguard.home import ensure_home, home_dir

    folder = ensure_home(home_dir(home)) / "logs"
    folder.mkdir(mode=0o700, exist_ok=True)
    handler = logging.FileHandler(folder / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("agentguard")
    logger.addHandler(handler)
    logger.propagate = False
    return handler


def statusline_command(home: str | None) -> str:
    """The shell command Claude Code runs for agentguard's status line: the fast entry point
    (no CLI imports) of this very Python, reading this run's store."""
    from agentguard.home import home_dir

    argv = [sys.executable, "-m", "agentguard.commands.statusline"]
    argv += ["--home", str(home_dir(home).resolve())]
    return shlex.join(argv)


def own_statusline(project: Path, cwd: Path | None = None) -> Path | None:
    """The first Claude Code settings file with a statusLine of its own (user, then project,
    for the project folder and the folder claude starts in), None when there is none."""
    config = os.environ.get("CLAUDE_CONFIG_DIR")
    files = [(Path(config) if config else Path.home() / ".claude") / "settings.json"]
    for folder in dict.fromkeys((project, cwd or Path.cwd())):
        files += [folder / ".claude" / "settings.json", folder / ".claude" / "settings.local.json"]
    for file in files:
        try:
            settings: Any = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # absent or unreadable: Claude Code says so itself
            continue
        if isinstance(settings, dict) and settings.get("statusLine"):
            return file
    return None


def with_statusline(ctx: Context, command: list[str], project: Path) -> list[str]:
    """`claude …` with `--settings` turning on agentguard's status line, unless the person has
    one of their own (or passes --settings): then one line saying what to add instead."""
    if Path(command[0]).name != "claude":
        return command
    line = {"type": "command", "command": statusline_command(ctx.home), "refreshInterval": 2}
    mine = own_statusline(project)
    given = any(arg == "--settings" or arg.startswith("--settings=") for arg in command[1:])
    if mine is None and not given:
        # right after the program: an argument after a `--` of the user's would be a prompt
        return [command[0], "--settings", json.dumps({"statusLine": line}), *command[1:]]
    where = f"{mine} has a statusLine of its own" if mine else "you pass --settings"
    ctx.err.print(
        f"agentguard: {where}; to see agentguard's, set it to {json.dumps(line)}",
        soft_wrap=True,
        markup=False,
    )
    return command
