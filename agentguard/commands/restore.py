"""`agentguard restore RUN`: rewind the working tree to a step's checkpoint, undoably.

Before rewriting anything the current tree is committed to the shadow store (the *backup*),
recorded as a `backup` snapshot row of the run and in a `restored` event. `--undo` restores the
backup of the run's latest restore (or resume), so a second `--undo` redoes it; `--to-snapshot`
restores any commit the run's shadow store holds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from rich.text import Text

from agentguard.commands.common import (
    FAILED,
    OK,
    Context,
    Refused,
    acting,
    check_not_busy,
    checkpoint_of,
    find_run,
    open_shadow,
    plain,
    record_backup,
    require_commit,
    short,
    step_by_number,
)
from agentguard.snapshots import ShadowRepo
from agentguard.store import Store

NAME = "restore"
SUMMARY = "Rewind the project's working tree to a step's checkpoint (the current tree is saved)."
EPILOG = """\
The tree as it is now is saved in the shadow store first, so every restore can be undone.
Without a terminal, pass --yes to confirm.

examples:
  agentguard restore 3f2a1b9c0d1e --step 3
  agentguard restore 3f2a1b9c0d1e --undo --yes
  agentguard restore 3f2a1b9c0d1e --to-snapshot 9f8e7d6c5b4a
"""
UNDOABLE = ("restored", "resume_prepared")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run id (or a unique prefix of it)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--step", type=int, metavar="N", help="the step whose checkpoint to restore")
    which.add_argument(
        "--undo", action="store_true", help="put back the tree saved by the run's last restore"
    )
    which.add_argument(
        "--to-snapshot", metavar="COMMIT", help="restore any commit of the run's shadow store"
    )
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def run(ctx: Context, args: argparse.Namespace) -> int:
    store = ctx.store()
    row = find_run(store, args.run)
    check_not_busy(row)
    if args.step is not None:  # a step that does not exist says so before anything else
        step_by_number(store.steps(row["id"]), row["id"], args.step)
    shadow = open_shadow(store, row)
    step_id, label, target = _target(store, shadow, row, args)
    what = f"The checkpoint of {label}" if args.step is not None else label[:1].upper() + label[1:]
    require_commit(store, shadow, target, what)
    project = shadow.project
    pending = shadow.diff(target)  # what the restore will rewrite (the tree now → target)
    if not pending:
        return _report(ctx, row, label, target, None, [], [], "already matches")
    if not args.yes:
        question = (
            f"Restore {project} to {label}? This rewrites {len(pending)} "
            f"file{'s' if len(pending) != 1 else ''}; the current tree is saved first. [y/N] "
        )
        if not sys.stdin.isatty():
            raise Refused(
                f"Not restoring {project} to {label} ({len(pending)} files would change) without "
                "confirmation: stdin is not a terminal, so pass --yes to go ahead."
            )
        sys.stderr.write(question)
        sys.stderr.flush()
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            ctx.err.print(plain("Not restored; nothing was changed."))
            return FAILED
    with acting():
        result = shadow.restore(target)
    now = time.time()
    record_backup(store, row, result.backup, step_id=step_id, project=project, now=now)
    changes = [{"status": c.status, "path": c.path} for c in result.changes]
    store.insert_event(
        row["id"],
        "restored",
        {
            "target": result.target,
            "label": label,
            "via": "undo" if args.undo else ("snapshot" if args.to_snapshot else "step"),
            "backup": result.backup.commit,
            "changes": len(changes),
            "paths": [c["path"] for c in changes[:50]],
            "preserved": list(result.preserved),
            "project": str(project),
        },
        at=now,
        step_id=step_id,
    )
    return _report(
        ctx, row, label, result.target, result.backup.commit, changes, list(result.preserved), ""
    )


def _target(
    store: Store, shadow: ShadowRepo, row: dict[str, Any], args: argparse.Namespace
) -> tuple[int | None, str, str]:
    """(step id or None, what it is in words, the commit to restore)."""
    if args.step is not None:
        step = step_by_number(store.steps(row["id"]), row["id"], args.step)
        commit = checkpoint_of(shadow, row["id"], step)
        if commit is None:
            raise Refused(
                f"Step {args.step} of run {row['id']} has no checkpoint (its snapshot failed or "
                "snapshots were off); pick another step."
            )
        return step["id"], f"run {row['id']} step {args.step}", commit
    if args.to_snapshot:
        commit = args.to_snapshot.strip()
        if not shadow.has_commit(commit):
            raise Refused(
                f"Snapshot {commit!r} is not in run {row['id']}'s shadow store "
                f"{shadow.store_dir}; use a commit printed by `agentguard restore` or "
                "`agentguard show`."
            )
        return None, f"snapshot {commit[:12]}", commit
    for event in reversed(store.events(row["id"])):
        if event["kind"] not in UNDOABLE:
            continue
        detail = json.loads(event["detail"] or "{}")
        if detail.get("backup"):
            return event["step_id"], "the tree saved before the last restore", detail["backup"]
    raise Refused(
        f"Run {row['id']} has no restore to undo; `agentguard show {row['id']}` lists its events."
    )


def _report(
    ctx: Context,
    row: dict[str, Any],
    label: str,
    target: str,
    backup: str | None,
    changes: list[dict[str, Any]],
    preserved: list[str],
    note: str,
) -> int:
    undo = f"agentguard restore {row['id']} --undo"
    if ctx.as_json:
        ctx.print_json(
            {
                "run_id": row["id"],
                "target": target,
                "label": label,
                "restored": backup is not None,
                "backup": backup,
                "changes": changes,
                "preserved": preserved,
                "undo": (
                    [undo, f"agentguard restore {row['id']} --to-snapshot {backup}"]
                    if backup
                    else []
                ),
            }
        )
        return OK
    out = ctx.out
    project = row["project"]
    if note:
        out.print(plain(f"The working tree already matches {label}; nothing was changed."))
        return OK
    out.print(plain(f"Restored {project} to {label} ({short(target)}):", "bold"), soft_wrap=True)
    for change in changes:
        out.print(Text.assemble("  ", change["status"], " ", change["path"]))
    if preserved:
        out.print(
            plain(
                f"  copied aside first (not in the shadow store): {', '.join(preserved)}", "yellow"
            )
        )
    out.print(plain(f"The previous tree is saved as {backup}.", "green"))
    by_commit = f"agentguard restore {row['id']} --to-snapshot {short(backup)}"
    out.print(plain(f"Undo with `{undo}` (or `{by_commit}`)."), soft_wrap=True)
    return OK
