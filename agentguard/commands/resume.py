"""`agentguard resume RUN` / `agentguard resume --due`: bring runs back to their last checkpoint.

The agent loop itself lives in the user's program, so the command prepares the run (restores
its working tree, after saving the current one) and prints what the loop needs to go on, with
the Python lines that continue it under the same run id.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from agentguard.commands.common import (
    FAILED,
    OK,
    Context,
    Refused,
    acting,
    clip,
    confirm,
    find_run,
    plain,
    require_commit,
    shadow_dir,
    short,
)
from agentguard.errors import AgentGuardError, ProjectError, SnapshotError
from agentguard.home import project_key
from agentguard.remote_checkpoints import fetch_missing
from agentguard.restoring import moved_before_rewind
from agentguard.resuming import ResumedRun, _last_consistent, due_runs, ensure_not_live, resume
from agentguard.snapshots import ShadowRepo
from agentguard.store import Store
from agentguard.store_choice import STORE_ENV, is_postgres

NAME = "resume"
SUMMARY = "Resume a run from its last checkpoint, or every queued run that is due (--due)."
EPILOG = """\
The conversation and the working tree come back to the run's last consistent checkpoint (the
tree as it is now is saved first; undo with `agentguard restore RUN --undo`). Then continue the
loop in Python with the lines printed. When the project's branch or HEAD moved since that
checkpoint, resume says so and asks first; without a terminal, pass --yes to confirm.

examples:
  agentguard resume 3f2a1b9c0d1e
  agentguard resume 3f2a1b9c0d1e --project ~/src/moved-here --no-restore
  agentguard resume 3f2a1b9c0d1e --accept    # take the refused substitution's kept answer
  agentguard resume 3f2a1b9c0d1e --yes       # restore even if the branch or HEAD moved since
  agentguard resume --due --json
"""
PREVIEW = 72


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", nargs="?", help="run id (or a unique prefix of it)")
    parser.add_argument(
        "--due", action="store_true", help="resume every waiting run whose next attempt is due"
    )
    parser.add_argument(
        "--project", metavar="DIR", help="the run's project folder, if it moved since"
    )
    parser.add_argument(
        "--no-restore",
        dest="restore",
        action="store_false",
        help="leave the working tree as it is",
    )
    parser.add_argument(
        "--accept",
        action="store_true",
        help="hand over the kept answer of a refused substitution instead of asking again",
    )
    parser.add_argument(
        "-y",
        "--yes",
        action="store_true",
        help="restore the checkpoint even if the project's branch or HEAD moved since",
    )
    parser.add_argument(
        "--snapshot-remote",
        metavar="URL",
        help="fetch the run's checkpoints from this git remote first (a run from another "
        "machine; default: $AGENTGUARD_SNAPSHOT_REMOTE, the config's, or the run's own)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def run(ctx: Context, args: argparse.Namespace) -> int:
    if args.due == bool(args.run):
        raise Refused("Give either a run id or --due (e.g. `agentguard resume 3f2a1b9c0d1e`).")
    if args.due and args.project:
        raise Refused("--project applies to one run; use it with a run id, not with --due.")
    if args.due and args.accept:
        raise Refused("--accept applies to one run; use it with a run id, not with --due.")
    store = ctx.store()
    if args.due:
        return _due(ctx, store, args)
    row = find_run(store, args.run)
    project = Path(args.project).expanduser() if args.project else None
    folder = project if project is not None else Path(row["project"])
    if args.restore and folder.is_dir():  # a run from another machine: its checkpoints first
        fetch_missing(store, row, folder, args.snapshot_remote)
    shadow, step, checkpoint = _check(store, row, project, args.restore)
    if args.accept:
        _check_refused(store, row)
    if not _confirm_moved(row, shadow, step, checkpoint, store, yes=args.yes):
        ctx.err.print(plain("Not resumed; nothing was changed."))
        return FAILED
    with acting():
        resumed = resume(
            row["id"],
            project=project,
            restore=args.restore,
            store=store,
            accept=args.accept,
            allow_moved=True,  # asked above
            snapshot_remote=args.snapshot_remote,
        )
    doc = _as_json(resumed, ctx.home, project, _store_note(ctx, store))
    if ctx.as_json:
        ctx.print_json(doc)
    else:
        _print(ctx, resumed, doc)
    return OK


def _check(
    store: Store, row: dict[str, Any], project: Path | None, restore: bool
) -> tuple[ShadowRepo | None, dict[str, Any] | None, str | None]:
    """Refuse, before anything changes, what resume() would refuse halfway; the shadow store,
    step and checkpoint a restore would bring back (None: nothing to restore)."""
    row = ensure_not_live(store, row["id"], "resuming it")
    folder = project if project is not None else Path(row["project"])
    if not folder.is_dir():
        raise ProjectError(
            f"Run {row['id']}'s project folder {folder} no longer exists; move it back, or "
            f"resume it in its new place with `agentguard resume {row['id']} --project DIR`."
        )
    steps = store.steps(row["id"])
    if not steps:
        raise Refused(f"Run {row['id']} has no steps yet, so there is nothing to resume.")
    if not restore:
        return None, None, None
    where = shadow_dir(store, row)
    if project is not None and not (where / "repo.git" / "HEAD").is_file():
        where = store.home / "shadow" / project_key(folder.resolve())  # fetched here, or made
    if not (where / "repo.git" / "HEAD").is_file():
        if any(s["checkpoint"] for s in steps):
            raise SnapshotError(
                f"Run {row['id']}'s shadow store {where} is gone, so its checkpoints cannot be "
                "restored; resume with --no-restore to keep the working tree as it is."
            )
        return None, None, None
    shadow = ShadowRepo(folder, where)
    step, checkpoint = _last_consistent(steps, row["id"], shadow)
    if checkpoint is not None:
        require_commit(
            store,
            shadow,
            checkpoint,
            f"The checkpoint of run {row['id']} step {step['number']}",
            hint="resume with --no-restore to keep the working tree as it is",
        )
    return shadow, step, checkpoint


def _confirm_moved(
    row: dict[str, Any],
    shadow: ShadowRepo | None,
    step: dict[str, Any] | None,
    checkpoint: str | None,
    store: Store,
    *,
    yes: bool,
) -> bool:
    """Whether to go on: the project's branch or HEAD moved since the checkpoint the resume
    would restore (and the tree differs from it) is said, and asked about, first."""
    if yes or shadow is None or step is None or checkpoint is None:
        return True
    moved = moved_before_rewind(store, shadow, checkpoint)
    if moved is None:
        return True
    where = f"run {row['id']} step {step['number']}"
    return confirm(
        f"Resume {where} and restore {shadow.project} to its checkpoint? "
        f"{moved[:1].upper()}{moved[1:]}. The current tree is saved first. [y/N] ",
        f"Not resuming {where} without confirmation: {moved}; stdin is not a terminal, so "
        "pass --yes to restore its checkpoint anyway (or --no-restore to keep the tree).",
        yes=False,
    )


def _check_refused(store: Store, row: dict[str, Any]) -> None:
    steps = store.steps(row["id"])
    if not steps or steps[-1]["status"] != "refused":
        raise Refused(
            f"Run {row['id']} has no refused substitution to accept; resume it without --accept."
        )


def _due(ctx: Context, store: Store, args: argparse.Namespace) -> int:
    resumed: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    restored_folders: dict[str, str] = {}
    for row in due_runs(store):
        folder = row["project"]
        # Two due runs of one folder: only the first rewinds it; the other would undo that.
        restore = args.restore and folder not in restored_folders
        try:
            shadow, step, checkpoint = _check(store, row, None, restore)
            if not _confirm_moved(row, shadow, step, checkpoint, store, yes=args.yes):
                raise Refused(f"Not resumed at the prompt: run {row['id']} was left as it is.")
            with acting():
                result = resume(row["id"], restore=restore, store=store, allow_moved=True)
        except AgentGuardError as exc:
            failed.append({"run_id": row["id"], "name": row["name"], "error": str(exc)})
            continue
        doc = _as_json(result, ctx.home, None, _store_note(ctx, store))
        if args.restore and not restore:
            doc["note"] = (
                f"tree not restored: run {restored_folders[folder]} of the same folder was "
                "resumed first"
            )
        elif restore:
            restored_folders[folder] = row["id"]
        resumed.append(doc)
    if ctx.as_json:
        ctx.print_json({"resumed": resumed, "failed": failed})
    elif not resumed and not failed:
        ctx.out.print(plain("no queued runs are due"))
    else:
        _print_due(ctx, resumed, failed)
    return FAILED if failed else OK


# -- output ----------------------------------------------------------------------------------


def _store_note(ctx: Context, store: Store) -> str | None:
    """The snippet's `agentguard.resume()` opens the store $AGENTGUARD_STORE names: when --store
    or the config file chose another, a first line saying which (its password left out)."""
    needed = ctx.store_env()
    if not needed:
        return None
    if is_postgres(ctx.chosen_store()):
        return f"# this run is in {store.path}: set ${STORE_ENV} to that store's URL first"
    return f"# this run is in this machine's SQLite store: set {STORE_ENV}=sqlite first"


def _as_json(
    resumed: ResumedRun, home: str | None, project: Path | None, store_note: str | None = None
) -> dict[str, Any]:
    last = resumed.messages[-1] if resumed.messages else None
    restored = resumed.restored
    return {
        "run_id": resumed.run_id,
        "name": resumed.name,
        "project": str(resumed.project),
        "status": resumed.status,
        "step": resumed.step,
        "provider": resumed.provider,
        "model": resumed.model,
        "checkpoint": resumed.checkpoint,
        "message_count": len(resumed.messages),
        "last_message": (
            {"role": last.get("role"), "preview": preview(last)} if last is not None else None
        ),
        "pending_tool_calls": [
            {"id": c.get("id"), "name": c.get("name"), "input": c.get("input")}
            for c in resumed.pending_tool_calls
        ],
        "restored": restored is not None,
        "backup": restored.backup.commit if restored else None,
        "changes": (
            [{"status": c.status, "path": c.path} for c in restored.changes] if restored else []
        ),
        "snippet": (store_note + "\n" if store_note else "") + snippet(resumed, home, project),
    }


def snippet(resumed: ResumedRun, home: str | None, project: Path | None) -> str:
    """The Python lines that continue the run under the same id."""
    args = [json.dumps(resumed.run_id)]
    if home:
        args.append(f"home={json.dumps(str(Path(home).expanduser()))}")
    if project is not None:
        args.append(f"project={json.dumps(str(resumed.project))}")
    if resumed.provider == "openai":
        sdk, create = "from openai import OpenAI", "client.chat.completions.create"
        client = "OpenAI()"
    else:
        sdk, create = "from anthropic import Anthropic", "client.messages.create"
        client = "Anthropic()"
    return (
        f"import agentguard\n{sdk}\n\n"
        f"run = agentguard.resume({', '.join(args)})\n"
        f"client = run.wrap({client})\n"
        f"response = {create}(**run.request())\n"
    )


def preview(message: dict[str, Any]) -> str:
    """A message in one short line: its text, or what its blocks are."""
    content = message.get("content")
    parts: list[str] = []
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        for block in content:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text":
                parts.append(str(block.get("text", "")))
            elif kind == "tool_use":
                parts.append(f"[tool_use {block.get('name')} {_args(block.get('input'))}]")
            elif kind == "tool_result":
                parts.append("[tool_result]")
            else:
                parts.append(f"[{kind}]")
    for call in message.get("tool_calls") or []:  # an OpenAI assistant message
        function = call.get("function") or {}
        parts.append(f"[tool_call {function.get('name')} {function.get('arguments', '')}]")
    return clip(" ".join(p for p in parts if p), PREVIEW) or "(empty)"


def _args(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _print(ctx: Context, resumed: ResumedRun, doc: dict[str, Any]) -> None:
    out = ctx.out
    out.print(
        plain(f"Resumed run {resumed.run_id} ({resumed.name}), which was {resumed.status}", "bold")
    )
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("from step", plain(f"{resumed.step} (checkpoint {short(resumed.checkpoint)})"))
    grid.add_row("model", plain(f"{resumed.provider}:{resumed.model}"))
    grid.add_row("project", plain(resumed.project))
    grid.add_row("messages", plain(doc["message_count"]))
    last = doc["last_message"]
    if last:
        grid.add_row("last message", plain(f"{last['role']}: {last['preview']}"))
    calls = doc["pending_tool_calls"]
    if calls:
        text = "; ".join(clip(f"{c['name']} {_args(c['input'])}", PREVIEW) for c in calls)
        grid.add_row(
            "pending tools", plain(f"{text} — run them, then send their results", "yellow")
        )
    else:
        grid.add_row("pending tools", plain("none"))
    if resumed.restored is not None:
        n = len(resumed.restored.changes)
        grid.add_row(
            "working tree",
            plain(
                f"restored to step {resumed.step}'s checkpoint ({n} file{'s' if n != 1 else ''} "
                f"changed); the tree before is saved as {short(doc['backup'])}",
                "green",
            ),
        )
    else:
        grid.add_row("working tree", plain("left as it is"))
    out.print(grid)
    if resumed.restored is not None:
        undo = f"agentguard restore {resumed.run_id} --undo"
        out.print(plain(f"Undo the restore with `{undo}`."), soft_wrap=True)
    out.print()
    out.print(plain("Continue the loop in Python:"))
    for line in doc["snippet"].splitlines():
        out.print(plain(f"    {line}" if line else ""), soft_wrap=True)


def _print_due(ctx: Context, resumed: list[dict[str, Any]], failed: list[dict[str, Any]]) -> None:
    out = ctx.out
    if resumed:
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1))
        table.add_column("run", no_wrap=True, min_width=12)
        table.add_column("name", no_wrap=True, overflow="ellipsis", max_width=16)
        table.add_column("step", justify="right", no_wrap=True)
        table.add_column("model", no_wrap=True, overflow="ellipsis", max_width=20)
        table.add_column("msgs", justify="right", no_wrap=True)
        table.add_column("tree", overflow="fold")
        for doc in resumed:
            tree = (
                f"restored (saved {short(doc['backup'])})"
                if doc["restored"]
                else doc.get("note", "left as it is")
            )
            table.add_row(
                plain(doc["run_id"]),
                plain(doc["name"]),
                plain(doc["step"]),
                plain(doc["model"]),
                plain(doc["message_count"]),
                plain(tree),
            )
        out.print(plain(f"Resumed {len(resumed)} due run{'s' if len(resumed) != 1 else ''}:"))
        out.print(table)
        out.print(
            plain(
                'Continue each in Python: run = agentguard.resume("RUN"); '
                "client = run.wrap(Anthropic()); client.messages.create(**run.request())"
            ),
            soft_wrap=True,
        )
    for item in failed:
        ctx.err.print(plain(f"agentguard: run {item['run_id']}: {item['error']}", "red"))
