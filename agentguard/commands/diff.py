"""`agentguard diff RUN`: what the working tree changed between checkpoints, or since the last.

Checkpoint N is taken just before step N's model call, so `--step N` (checkpoint N → the next
checkpoint; for the newest step, → the working tree now) shows what step N's tools did — the
same "diff at step N" as `agentguard watch`, and `restore --step N` brings back checkpoint N
(agentguard.restoring). The patch is built from the shadow store's blobs (and the files on
disk for the working tree), so neither the project's `.git` nor git's own diff config is involved.
"""

from __future__ import annotations

import argparse
import difflib
import os
from typing import Any

from rich.text import Text

from agentguard.commands.common import OK, Context, Refused, find_run, plain, short
from agentguard.restoring import (
    checkpoint_of,
    open_shadow,
    step_by_number,
    step_checkpoint,
    step_diff_span,
)
from agentguard.snapshots import Change, ShadowRepo

NAME = "diff"
SUMMARY = "Show what the working tree changed at a step, between two steps, or since the last one."
EPILOG = """\
what is compared (checkpoint N is the tree just before step N's model call):
  agentguard diff RUN                  last checkpoint → the working tree now
  agentguard diff RUN --step N         what step N did: checkpoint N → checkpoint N+1
                                       (the newest step: checkpoint N → the working tree now)
  agentguard diff RUN --step N --to M  checkpoint N → checkpoint M

examples:
  agentguard diff 3f2a1b9c0d1e
  agentguard diff 3f2a --step 4 --patch
  agentguard diff 3f2a --step 2 --to 5 --json
"""
STYLE = {"A": "green", "M": "yellow", "D": "red", "T": "magenta"}
NO_EOL = "\\ No newline at end of file"
MAX_PATCH_BYTES = 2 * 1024 * 1024  # larger files are reported, not diffed line by line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run id (or a unique prefix of it)")
    parser.add_argument(
        "--step", type=int, metavar="N", help="what step N changed (checkpoint N → N+1)"
    )
    parser.add_argument("--to", type=int, metavar="M", help="with --step: compare step N with M")
    parser.add_argument("--patch", action="store_true", help="also print a unified diff")
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def run(ctx: Context, args: argparse.Namespace) -> int:
    if args.to is not None and args.step is None:
        raise Refused("--to compares two steps, so it needs --step too (e.g. --step 2 --to 5).")
    store = ctx.store()
    row = find_run(store, args.run)
    steps = store.steps(row["id"])
    if not steps:
        raise Refused(f"Run {row['id']} has no steps yet, so it has no checkpoints to compare.")
    shadow = open_shadow(store, row)

    def checkpoint(step: dict[str, Any]) -> str:
        return step_checkpoint(store, shadow, row["id"], step)

    new: str | None
    if args.step is None:
        latest = next((s for s in reversed(steps) if checkpoint_of(shadow, row["id"], s)), None)
        if latest is None:
            raise Refused(f"Run {row['id']} has no checkpoints (snapshots were off).")
        old, old_label = checkpoint(latest), f"step {latest['number']}"
        new, new_label = None, "working tree"
    elif args.to is None:  # what step N did: its checkpoint → the next one (or the tree now)
        step, after = step_diff_span(shadow, row["id"], steps, args.step)
        old, old_label = checkpoint(step), f"step {args.step}"
        if after is None:
            new, new_label = None, "working tree"
        else:
            new, new_label = checkpoint(after), f"step {after['number']}"
    else:
        old = checkpoint(step_by_number(steps, row["id"], args.step))
        new = checkpoint(step_by_number(steps, row["id"], args.to))
        old_label, new_label = f"step {args.step}", f"step {args.to}"

    changes = shadow.diff(old, new)
    patch = _patch(shadow, old, new, changes) if args.patch else None

    if ctx.as_json:
        ctx.print_json(
            {
                "run_id": row["id"],
                "from": {"label": old_label, "commit": old},
                "to": {"label": new_label, "commit": new},
                "changes": [{"status": c.status, "path": c.path} for c in changes],
                "patch": patch,
            }
        )
        return OK
    out = ctx.out
    where = f"{old_label} ({short(old)}) → {new_label}"
    where += f" ({short(new)})" if new else f" ({shadow.project})"
    out.print(plain(f"Run {row['id']}: {where}", "bold"))
    if not changes:
        out.print(plain("no changes"))
        return OK
    for change in changes:
        out.print(Text.assemble((change.status, STYLE.get(change.status, "")), " ", change.path))
    out.print(plain(f"{len(changes)} path{'s' if len(changes) != 1 else ''} changed", "dim"))
    if patch:
        out.print()
        for line in patch.splitlines():
            out.print(_styled(line), soft_wrap=True)
    return OK


def _patch(shadow: ShadowRepo, old: str, new: str | None, changes: list[Change]) -> str:
    chunks: list[str] = []
    for change in changes:
        before = _read(shadow, old, change.path) if change.status != "A" else b""
        after = _read(shadow, new, change.path) if change.status != "D" else b""
        chunks.append(_file_patch(change, before or b"", after or b""))
    return "".join(chunks)


def _read(shadow: ShadowRepo, commit: str | None, path: str) -> bytes | None:
    if commit is not None:
        return shadow.read_file(commit, path)
    full = shadow.project / path
    try:
        if full.is_symlink():
            return os.fsencode(os.readlink(full))
        return full.read_bytes()
    except OSError:
        return None


def _file_patch(change: Change, before: bytes, after: bytes) -> str:
    a = "/dev/null" if change.status == "A" else f"a/{change.path}"
    b = "/dev/null" if change.status == "D" else f"b/{change.path}"
    head = f"diff {a} {b}\n"
    old_text, new_text = _text(before), _text(after)
    if old_text is None or new_text is None:
        return f"{head}Binary files {a} and {b} differ\n"
    lines = difflib.unified_diff(
        old_text.splitlines(keepends=True), new_text.splitlines(keepends=True), a, b, n=3
    )
    body = "".join(line if line.endswith("\n") else f"{line}\n{NO_EOL}\n" for line in lines)
    return head + body


def _text(data: bytes) -> str | None:
    if len(data) > MAX_PATCH_BYTES or b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _styled(line: str) -> Text:
    if line.startswith(("+++", "---", "diff ")):
        return Text(line, style="bold")
    if line.startswith("+"):
        return Text(line, style="green")
    if line.startswith("-"):
        return Text(line, style="red")
    if line.startswith("@@"):
        return Text(line, style="cyan")
    return Text(line)
