"""`agentguard restore RUN`: rewind the working tree to a step's checkpoint, undoably.

Step N's checkpoint is the tree just before step N's model call. The restore itself is
`agentguard.restoring.restore`, the one the TUI uses too: it refuses a run another live process
still drives, commits the current tree to the shadow store first (the *backup*), and records it
as a `backup` snapshot row of the run and in a `restored` event. `--undo` restores the backup of
the run's latest restore (or resume), so a second `--undo` redoes it; `--to-snapshot` restores
any commit the run's shadow store holds.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.text import Text

from agentguard.commands.common import FAILED, OK, Context, acting, confirm, find_run, plain, short
from agentguard.restoring import (
    Target,
    open_shadow,
    require_commit,
    restore,
    snapshot_target,
    step_by_number,
    step_target,
    undo_target,
)
from agentguard.resuming import ensure_not_live
from agentguard.snapshots import ShadowRepo
from agentguard.store import Store
from agentguard.user_repo import moved_since

NAME = "restore"
SUMMARY = "Rewind the project's working tree to a step's checkpoint (the current tree is saved)."
EPILOG = """\
Step N's checkpoint is the tree just before step N's model call (`agentguard diff RUN --step N`
shows what step N changed after it). The tree as it is now is saved in the shadow store first,
so every restore can be undone, whether made here or in `agentguard watch`.
Without a terminal, pass --yes to confirm.

examples:
  agentguard restore 3f2a1b9c0d1e --step 3
  agentguard restore 3f2a1b9c0d1e --undo --yes
  agentguard restore 3f2a1b9c0d1e --to-snapshot 9f8e7d6c5b4a
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run id (or a unique prefix of it)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--step",
        type=int,
        metavar="N",
        help="restore step N's checkpoint: the tree just before step N's model call",
    )
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
    row = ensure_not_live(store, row["id"], "rewinding its working tree")
    if args.step is not None:  # a step that does not exist says so before anything else
        step_by_number(store.steps(row["id"]), row["id"], args.step)
    shadow = open_shadow(store, row)
    target = _target(store, shadow, row, args)
    label = target.label
    what = f"The checkpoint of {label}" if args.step is not None else label[:1].upper() + label[1:]
    require_commit(store, shadow, target.commit, what)
    project = shadow.project
    pending = shadow.diff(target.commit)  # what the restore will rewrite (the tree now → target)
    if not pending:
        return _report(ctx, row, project, label, target.commit, None, [], [], "already matches")
    n = len(pending)
    # the project's branch or HEAD changed since the target was taken: say so before asking
    moved = None if args.yes else moved_since(store, project, target.commit, what=_what(target))
    question = (
        f"Restore {project} to {label}? {_sentence(moved)}This rewrites {n} "
        f"file{'s' if n != 1 else ''}; the current tree is saved first. [y/N] "
    )
    refusal = (
        f"Not restoring {project} to {label} ({n} file{'s' if n != 1 else ''} would change) "
        "without confirmation: "
        f"{moved + '; ' if moved else ''}stdin is not a terminal, so pass --yes to go ahead."
    )
    if not confirm(question, refusal, yes=args.yes):
        ctx.err.print(plain("Not restored; nothing was changed."))
        return FAILED
    with acting():  # checks again that no agent took the run over while we asked
        done = restore(store, row["id"], target)
    result = done.result
    changes = [{"status": c.status, "path": c.path} for c in result.changes]
    return _report(
        ctx, row, project, label, result.target, done.backup, changes, list(result.preserved), ""
    )


def _sentence(moved: str | None) -> str:
    return f"{moved[:1].upper()}{moved[1:]}. " if moved else ""


def _what(target: Target) -> str:
    return "the checkpoint" if target.via == "step" else f"{target.label} ({short(target.commit)})"


def _target(
    store: Store, shadow: ShadowRepo, row: dict[str, Any], args: argparse.Namespace
) -> Target:
    if args.step is not None:  # step N's checkpoint: the tree just before step N's call
        return step_target(store, shadow, row, args.step)
    if args.to_snapshot:
        return snapshot_target(shadow, row, args.to_snapshot)
    return undo_target(store, row)


def _report(
    ctx: Context,
    row: dict[str, Any],
    project: Path,
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
