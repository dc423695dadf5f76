"""`agentguard run -- CMD …`: run an agent with every model call guarded by a private proxy."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess

from agentguard.commands.common import Context, Refused
from agentguard.commands.proxy import add_shared, options_from

NAME = "run"
SUMMARY = "Run an agent (claude, …) through a guarding proxy on a free loopback port."
EPILOG = """\
examples:
  agentguard run -- claude
  agentguard run --chain anthropic:claude-opus-4-7 anthropic:claude-sonnet-4-6 -- claude -p "fix it"
The child gets ANTHROPIC_BASE_URL and OPENAI_BASE_URL pointing at the proxy; its exit code is
agentguard's. The keys in ANTHROPIC_API_KEY / OPENAI_API_KEY are the credentials the proxy
accepts for fallback routes keyed from this environment.
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
    env = {
        **os.environ,
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
    if code < 0:  # killed by a signal: the shell's convention
        return 128 - code if -code in signal.valid_signals() else 1
    return code
