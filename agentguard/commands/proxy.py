"""`agentguard proxy`: the guarding proxy, long-running, for agents that speak HTTP."""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import signal
import socket
import threading
from typing import Any

from agentguard.commands.common import OK, Context, Refused

NAME = "proxy"
SUMMARY = "Guard unmodified agents (Claude Code, OpenAI-speaking CLIs): each model call a step."
EPILOG = """\
examples:
  agentguard proxy --listen 127.0.0.1:8787 --project .
  ANTHROPIC_BASE_URL=http://127.0.0.1:8787 claude
  agentguard proxy --chain anthropic:claude-opus-4-7 anthropic:claude-sonnet-4-6
Point ANTHROPIC_BASE_URL (or OPENAI_BASE_URL, with /v1) at it; Ctrl-C stops it.
"""


def add_shared(parser: argparse.ArgumentParser) -> None:
    """The options `agentguard proxy` and `agentguard run` share."""
    parser.add_argument("--project", default=".", help="the folder the agent edits (default .)")
    parser.add_argument(
        "--upstream", metavar="URL", help="the Anthropic API's base URL (a gateway, a test server)"
    )
    parser.add_argument(
        "--openai-upstream", metavar="URL", help="the OpenAI API's base URL, with /v1"
    )
    parser.add_argument(
        "--chain", nargs="+", metavar="ROUTE", help="fallback routes in order, provider:model"
    )
    parser.add_argument(
        "--policy",
        metavar="PRESET[,FIELD=VALUE…]",
        help="a policy preset and/or fields over it, e.g. coding_agent,substitution=forbid "
        "or step_deadline=60 (over agentguard.toml's policy; default coding_agent)",
    )
    parser.add_argument(
        "--accept-key-env",
        action="append",
        default=[],
        metavar="VAR",
        help="a variable holding a key that, presented by a client, lets its requests use "
        "fallback routes keyed from this environment",
    )
    parser.add_argument("--no-snapshots", action="store_true", help="no working-tree checkpoints")
    parser.add_argument(
        "--hold",
        metavar="SECONDS",
        help="how long a request may be held while every route is down, streaming clients kept "
        "alive with pings (default: the policy's step_deadline + queue_delay; 0: never hold)",
    )
    parser.add_argument(
        "--session-idle",
        metavar="SECONDS",
        help="close the run of a client session quiet this long; its next request reopens it "
        "(default 1800; 0: keep every run open while the proxy runs)",
    )
    parser.add_argument(
        "--ping-interval",
        metavar="SECONDS",
        help="seconds between the pings sent to a held streaming client (default 10)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen", default="127.0.0.1:8787", metavar="HOST:PORT", help="default 127.0.0.1:8787"
    )
    parser.add_argument(
        "--allow-remote", action="store_true", help="allow a --listen address that is not loopback"
    )
    add_shared(parser)


def options_from(ctx: Context, args: argparse.Namespace, accepted: tuple[str, ...] = ()) -> Any:
    from agentguard.proxy import ProxyOptions

    preset, overrides = parse_policy(args.policy)
    return ProxyOptions.build(
        args.project,
        chain=args.chain,
        policy=preset,
        policy_overrides=overrides,
        upstream=args.upstream,
        openai_upstream=args.openai_upstream,
        home=ctx.home,
        accept_key_envs=args.accept_key_env,
        accepted_keys=accepted,
        snapshots=False if args.no_snapshots else None,
        store=ctx.store_flag,  # else $AGENTGUARD_STORE, else the --project's config
        **_hold_options(args),
    )


def parse_policy(text: str | None) -> tuple[str | None, dict[str, Any]]:
    """`--policy PRESET[,FIELD=VALUE…]` → (preset or None, fields). A value is read as JSON
    when it is JSON (`60`, `0.5`), else as text (`forbid`); the fields are validated with the
    policy, so a wrong one is one sentence naming it."""
    if text is None:
        return None, {}
    preset: str | None = None
    fields: dict[str, Any] = {}
    for item in (part.strip() for part in text.split(",")):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            if not item or preset is not None:
                raise Refused(
                    f"--policy {text!r}: name one preset at most, then FIELD=VALUE pairs, "
                    "e.g. --policy coding_agent,substitution=forbid."
                )
            preset = item
            continue
        if not name:
            raise Refused(f"--policy {text!r}: {item!r} has no field name before '='.")
        try:
            fields[name] = json.loads(value)
        except json.JSONDecodeError:
            fields[name] = value.strip()
    return preset, fields


def _hold_options(args: argparse.Namespace) -> dict[str, float]:
    """--hold and --ping-interval as ProxyOptions fields; a bad value is one sentence."""
    given: dict[str, float] = {}
    for flag, field, value, least in (
        ("--hold", "hold", args.hold, 0.0),
        ("--ping-interval", "ping_interval", args.ping_interval, 0.1),
        ("--session-idle", "session_idle", args.session_idle, 0.0),
    ):
        if value is None:
            continue
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not least <= number < float("inf"):
            raise Refused(f"{flag} takes a number of seconds of at least {least:g}, not {value!r}.")
        given[field] = number
    return given


def run(ctx: Context, args: argparse.Namespace) -> int:
    from agentguard.proxy import ProxyThread

    host, port = parse_listen(args.listen)
    if not args.allow_remote and not is_loopback(host):
        raise Refused(
            f"--listen {args.listen} is not a loopback address, so other machines could spend "
            "your keys through it; listen on 127.0.0.1, or add --allow-remote if you mean it."
        )
    options = options_from(ctx, args)
    try:
        proxy = ProxyThread(options, host, port).start()
    except OSError as exc:
        raise Refused(listen_failure(host, port, exc)) from None
    ctx.err.print(
        f"agentguard proxy on {proxy.url} for {options.project} — ANTHROPIC_BASE_URL={proxy.url}, "
        f"OPENAI_BASE_URL={proxy.url}/v1 (Ctrl-C to stop)",
        soft_wrap=True,
    )
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        proxy.stop()
    return OK


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise Refused(
            f"--listen {value!r} is not HOST:PORT; give e.g. 127.0.0.1:8787 (port 0: any free one)."
        )
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen_failure(host: str, port: int, exc: OSError) -> str:
    """Why the proxy could not listen, in one sentence."""
    if isinstance(exc, socket.gaierror):
        return f"--listen host {host!r} is not an address of this machine ({exc.strerror})."
    if exc.errno == errno.EADDRINUSE:
        return (
            f"Port {port} on {host} is already in use; stop what listens there or pick another "
            "port with --listen."
        )
    if exc.errno == errno.EACCES:
        return f"Not allowed to listen on port {port} ({exc.strerror}); pick one above 1023."
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"--listen host {host} is not an address of this machine ({exc.strerror})."
    return f"Cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --listen."
