"""The `agentguard` command: look at guarded runs, rewind their working tree, resume them.

Exit codes: 0 ok; 1 a requested action failed (or was declined at the prompt); 2 a usage error
or a refusal made before anything changed. agentguard's own errors are printed as one sentence,
`agentguard: ...`, on stderr, never as a traceback; no error path deletes anything.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from collections.abc import Sequence

from agentguard import __version__
from agentguard.commands import (
    demo,
    diff,
    gc,
    metrics,
    proxy,
    restore,
    resume,
    run,
    runs,
    show,
    stats,
    statusline,
    watch,
)
from agentguard.commands.common import (
    FAILED,
    USAGE,
    Context,
    add_store_option,
    exit_code,
    help_formatter,
)
from agentguard.errors import AgentGuardError
from agentguard.home import ENV_VAR, home_dir
from agentguard.store import DB_NAME
from agentguard.store_choice import STORE_ENV

COMMANDS = (
    runs,
    show,
    diff,
    restore,
    resume,
    watch,
    stats,
    metrics,
    gc,
    demo,
    statusline,
    proxy,
    run,
)
# The commands that open the store, so take --store (demo keeps its own store under --home).
STORE_COMMANDS = tuple(command for command in COMMANDS if command is not demo)

EPILOG = f"""\
examples:
  agentguard runs                          the latest runs, newest first
  agentguard show 3f2a1b9c0d1e             every step, attempt and substitution of a run
  agentguard diff 3f2a --step 4 --patch    what the agent changed at step 4
  agentguard restore 3f2a --step 3         rewind the working tree (undo: --undo)
  agentguard resume 3f2a                   continue a run from its last checkpoint
  agentguard watch                         the live TUI
  agentguard stats --since 24h             529 rate, retries, latency, fallbacks, cost
  agentguard demo                          the whole story offline

The store is --home, else ${ENV_VAR}, else the per-user data folder; or a fleet's PostgreSQL
server: --store URL, else ${STORE_ENV}, else `store` in ./agentguard.toml.
Exit codes: 0 ok, 1 the action failed, 2 usage error or refused (nothing changed).
"""


def build_parser() -> argparse.ArgumentParser:
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument(
        "--home",
        metavar="PATH",
        default=argparse.SUPPRESS,  # given before or after the command, either works
        help=f"the agentguard data folder (default: ${ENV_VAR}, else the per-user data folder)",
    )
    parser = argparse.ArgumentParser(
        prog="agentguard",
        description="Inspect, rewind and resume coding-agent runs guarded by agentguard.",
        epilog=EPILOG,
        formatter_class=help_formatter,
        parents=[shared],
    )
    parser.add_argument("--version", action="version", version=f"agentguard {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for module in COMMANDS:
        sub = commands.add_parser(
            module.NAME,
            help=module.SUMMARY,
            description=module.SUMMARY,
            epilog=module.EPILOG,
            formatter_class=help_formatter,
            parents=[shared],
        )
        module.add_arguments(sub)
        if module in STORE_COMMANDS:  # the proxy reads its --project's config, as for chain
            add_store_option(
                sub, config="the --project's config" if module in (proxy, run) else None
            )
        sub.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse has said why
        return exc.code if isinstance(exc.code, int) else USAGE
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return USAGE
    ctx = Context(
        home=getattr(args, "home", None),
        as_json=getattr(args, "json", False),
        store_flag=getattr(args, "store", None),
    )
    try:
        return int(handler(ctx, args))
    except AgentGuardError as exc:
        _say(str(exc))
        return exit_code(exc)
    except sqlite3.DatabaseError as exc:  # the file went bad after it was opened
        path = home_dir(ctx.home) / DB_NAME
        _say(
            f"The agentguard database {path} could not be read ({exc}); if it is damaged, move it "
            f"aside (mv {path} {path}.bad) and agentguard will start a new one."
        )
        return USAGE
    except KeyboardInterrupt:
        _say("interrupted.")
        return 130
    except BrokenPipeError:  # e.g. `agentguard show RUN | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return FAILED
    finally:
        ctx.close()


def _say(message: str) -> None:
    sys.stderr.write(f"agentguard: {message}\n")
    sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
