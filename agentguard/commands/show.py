"""`agentguard show RUN`: one run, every step, every attempt, every event."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from rich.console import Group
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from agentguard.commands.common import (
    OK,
    Col,
    Context,
    age,
    clip,
    cut,
    find_run,
    grid,
    iso,
    ms,
    plain,
    short,
    status_text,
    tokens,
    when,
)
from agentguard.user_repo import GitState, from_row

WARN_EVENTS = ("substitution", "drift_restored", "queued", "restored", "snapshot_failed")
NAME = "show"
SUMMARY = "Show a run: its steps, who served each one, every attempt and every event."
EPILOG = """\
A step served by another model than the one asked for is shown in yellow with the reason.

examples:
  agentguard show 3f2a1b9c0d1e
  agentguard show 3f2a --json | jq '.steps[] | select(.substituted)'
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run id (or a unique prefix of it)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def run(ctx: Context, args: argparse.Namespace) -> int:
    store = ctx.store()
    row = find_run(store, args.run)
    steps = store.steps(row["id"])
    attempts: dict[int, list[dict[str, Any]]] = {s["id"]: [] for s in steps}
    for attempt in store.query(
        "select * from attempts where run_id = ? order by step_id, number", [row["id"]]
    ):
        attempts.setdefault(attempt["step_id"], []).append(attempt)
    events = store.events(row["id"])
    pruned = {
        r["commit_sha"]: r["pruned_at"]
        for r in store.query(
            "select commit_sha, pruned_at from snapshots "
            "where run_id = ? and pruned_at is not null",
            [row["id"]],
        )
    }
    numbers = {s["id"]: s["number"] for s in steps}
    gits = _git_states(store, row["id"])
    if ctx.as_json:
        ctx.print_json(_as_json(row, steps, attempts, events, pruned, numbers, gits))
        return OK
    now = time.time()
    out = ctx.out
    out.print(_header(row, steps, now, _latest(steps, gits)))
    for step in steps:
        out.print()
        out.print(
            _step(step, attempts.get(step["id"], []), pruned, out.width, gits.get(step["id"]))
        )
    if events:
        out.print()
        out.print(Text("Events", style="bold"))
        out.print(_events(events, numbers, out.width))
    return OK


def _git_states(store: Any, run_id: str) -> dict[int, GitState]:
    """The user's git state at each step's checkpoint, by step id (recorded ones only)."""
    rows = store.query(
        "select step_id, git_branch, git_head, git_dirty from snapshots "
        "where run_id = ? and kind = 'checkpoint' and git_dirty is not null",
        [run_id],
    )
    return {r["step_id"]: state for r in rows if (state := from_row(r)) is not None}


def _latest(steps: list[dict[str, Any]], gits: dict[int, GitState]) -> GitState | None:
    """Where the user's repository was at the run's newest recorded checkpoint."""
    return next((gits[s["id"]] for s in reversed(steps) if s["id"] in gits), None)


def _git_text(state: GitState) -> str:
    """'main at 3f2a1b9, clean' / 'detached HEAD at 3f2a1b9, uncommitted changes'."""
    where = state.describe(branch_word=False).removeprefix("a ")
    return f"{where}, {'uncommitted changes' if state.dirty else 'clean'}"


# -- JSON ------------------------------------------------------------------------------------


def _as_json(
    row: dict[str, Any],
    steps: list[dict[str, Any]],
    attempts: dict[int, list[dict[str, Any]]],
    events: list[dict[str, Any]],
    pruned: dict[str, float],
    numbers: dict[int, int],
    gits: dict[int, GitState],
) -> dict[str, Any]:
    policy = _policy(row)
    latest = _latest(steps, gits)
    return {
        "run": {
            "id": row["id"],
            "name": row["name"],
            "status": row["status"],
            "project": row["project"],
            "policy": policy.get("name"),
            "substitution": policy.get("substitution"),
            "primary_provider": row["primary_provider"],
            "primary_model": row["primary_model"],
            "created_at": iso(row["created_at"]),
            "updated_at": iso(row["updated_at"]),
            "ended_at": iso(row["ended_at"]),
            "next_attempt_at": iso(row["next_attempt_at"]),
            "last_error": row["last_error"],
            "pid": row["pid"],
            "hostname": row["hostname"],
            "steps": len(steps),
            "substitutions": sum(1 for s in steps if s["substituted"]),
            # the user's repository at the newest checkpoint that recorded it
            "git": latest.as_json() if latest else None,
        },
        "steps": [
            {
                "number": s["number"],
                "status": s["status"],
                "requested_provider": s["requested_provider"],
                "requested_model": s["requested_model"],
                "served_provider": s["served_provider"],
                "served_model": s["served_model"],
                "substituted": bool(s["substituted"]),
                "reason": s["reason"],
                "checkpoint": s["checkpoint"],
                "checkpoint_pruned_at": iso(pruned.get(s["checkpoint"] or "")),
                # the user's own repository when the checkpoint was taken (null: not recorded)
                "git": gits[s["id"]].as_json() if s["id"] in gits else None,
                "started_at": iso(s["started_at"]),
                "ended_at": iso(s["ended_at"]),
                "latency_ms": s["latency_ms"],
                "snapshot_ms": s["snapshot_ms"],
                "input_tokens": s["input_tokens"],
                "output_tokens": s["output_tokens"],
                "stop_reason": s["stop_reason"],
                "error": s["error"],
                "attempts": [_attempt_json(a) for a in attempts.get(s["id"], [])],
            }
            for s in steps
        ],
        "events": [
            {
                "at": iso(e["at"]),
                "step": numbers.get(e["step_id"]),
                "kind": e["kind"],
                "detail": _detail(e),
            }
            for e in events
        ],
    }


def _attempt_json(a: dict[str, Any]) -> dict[str, Any]:
    return {
        "number": a["number"],
        "provider": a["provider"],
        "model": a["model"],
        "base_url": a["base_url"],
        "outcome": a["outcome"],
        "status_code": a["status_code"],
        "error_type": a["error_type"],
        "error_code": a["error_code"],
        "request_id": a["request_id"],
        "message": a["message"],
        "started_at": iso(a["started_at"]),
        "slept_before_ms": a["slept_before_ms"],
        "latency_ms": a["latency_ms"],
        "input_tokens": a["input_tokens"],
        "output_tokens": a["output_tokens"],
    }


def _detail(event: dict[str, Any]) -> Any:
    try:
        return json.loads(event["detail"]) if event["detail"] else {}
    except ValueError:
        return event["detail"]


def _policy(row: dict[str, Any]) -> dict[str, Any]:
    try:
        value = json.loads(row["policy"] or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# -- text ------------------------------------------------------------------------------------


def _header(
    row: dict[str, Any], steps: list[dict[str, Any]], now: float, git: GitState | None
) -> Group:
    title = Text.assemble(
        ("Run ", "bold"), (row["id"], "bold"), "  ", (row["name"] or "", ""), "  "
    )
    title.append_text(status_text(row["status"]))
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="dim", no_wrap=True)
    fields.add_column(overflow="fold")
    fields.add_row("project", plain(row["project"]))
    if git is not None:
        fields.add_row("git", plain(f"{_git_text(git)} (at the last checkpoint)"))
    policy = _policy(row)
    if policy:
        fields.add_row(
            "policy",
            plain(f"{policy.get('name', '?')} (substitution: {policy.get('substitution')})"),
        )
    model = row["primary_model"] or (steps[0]["requested_model"] if steps else None)
    provider = row["primary_provider"] or (steps[0]["requested_provider"] if steps else None)
    if model:
        fields.add_row("model", plain(f"{provider}:{model}" if provider else model))
    fields.add_row("started", plain(f"{when(row['created_at'])} ({age(row['created_at'], now)})"))
    if row["ended_at"]:
        fields.add_row("ended", plain(f"{when(row['ended_at'])} ({age(row['ended_at'], now)})"))
    elif row["updated_at"]:
        fields.add_row(
            "updated", plain(f"{when(row['updated_at'])} ({age(row['updated_at'], now)})")
        )
    if row["status"] == "running" and row["pid"]:
        fields.add_row("process", plain(f"{row['pid']} on {row['hostname']}"))
    if row["status"] == "waiting":
        nxt = row["next_attempt_at"]
        due = "due now" if nxt is None or nxt <= now else age(nxt, now)
        fields.add_row(
            "next attempt",
            plain(f"{when(nxt)} ({due}); `agentguard resume {row['id']}` or --due", "yellow"),
        )
    if row["last_error"]:
        fields.add_row("last error", plain(row["last_error"], "red"))
    subs = [s for s in steps if s["substituted"]]
    fields.add_row("steps", plain(f"{len(steps)}"))
    parts: list[Any] = [title, fields]
    if subs:
        parts.append(
            Text(
                f"⚠ {len(subs)} of {len(steps)} steps served by another model than the one asked "
                f"for (steps {', '.join(str(s['number']) for s in subs)})",
                style="bold yellow",
            )
        )
    return Group(*parts)


def _step(
    step: dict[str, Any],
    attempts: list[dict[str, Any]],
    pruned: dict[str, float],
    width: int,
    git: GitState | None = None,
) -> Group:
    requested = step["requested_model"] or "?"
    served = step["served_model"]
    route = requested if not served or served == requested else f"{requested} → {served}"
    head = Text.assemble((f"Step {step['number']}", "bold"), "  ")
    head.append_text(status_text(step["status"]))
    head.append("  ")
    head.append(route, style="bold yellow" if step["substituted"] else "")
    checkpoint = step["checkpoint"]
    details = [f"checkpoint {short(checkpoint)}" if checkpoint else "no checkpoint"]
    if checkpoint and checkpoint in pruned:
        from agentguard.retention import pruned_message

        details[0] += f" ({pruned_message(pruned[checkpoint])})"
    details.append(ms(step["latency_ms"]))
    if step["input_tokens"] is not None or step["output_tokens"] is not None:
        details.append(f"tokens {tokens(step['input_tokens'], step['output_tokens'])}")
    head.append("  " + " · ".join(details), style="dim")
    parts: list[Any] = [head]
    if git is not None:  # its own line: the step's head line is full at 80 columns
        parts.append(plain(f"  git: {_git_text(git)}", "dim"))
    if step["substituted"]:
        parts.append(
            Text(
                f"  ⚠ served by {served} ({step['served_provider']}) instead of {requested} — "
                f"{_reason(step)}",
                style="bold yellow",
            )
        )
    if step["error"]:
        parts.append(plain(f"  error: {step['error']}", "red"))
    if attempts:
        parts.append(Padding(_attempts(attempts, step, width - 2), (0, 0, 0, 2), expand=False))
    return Group(*parts)


def _reason(step: dict[str, Any]) -> str:
    reason = step["reason"] or "no reason recorded"
    prefix = f"{step['requested_model']}: "
    if reason.startswith(prefix) and ";" not in reason:
        return reason[len(prefix) :]
    return reason


def _attempts(attempts: list[dict[str, Any]], step: dict[str, Any], width: int) -> Table:
    """One row per HTTP try; when the step tried several routes, a row naming each route
    heads its attempts (a column for it would not fit 80 columns next to the request-ids)."""
    requested = (step["requested_provider"], step["requested_model"])
    several = {(a["provider"], a["model"]) for a in attempts} != {requested}
    cols = [
        Col("#", justify="right"),
        Col("result", flex=1, min=12, wrap=True),
        Col("request-id"),
        Col("took", justify="right"),
        Col("slept", justify="right"),
    ]
    rows: list[list[Text]] = []
    current: tuple[str, str] | None = None
    for a in attempts:
        route = (a["provider"], a["model"])
        if several and route != current:
            current = route
            label = a["model"] if a["provider"] == requested[0] else f"{route[0]}:{route[1]}"
            style = "bold yellow" if route != requested else "bold"
            rows.append([plain(""), plain(label, style), plain(""), plain(""), plain("")])
        outcome = a["outcome"] or "-"
        if outcome == "ok":
            result = plain(f"{a['status_code'] or ''} ok".strip(), "green")
        else:
            what = " ".join(
                str(x) for x in (a["status_code"], a["error_type"] or a["error_code"]) if x
            )
            result = plain(f"{what or 'no answer'} → {outcome}", "red")
        slept = a["slept_before_ms"]
        rows.append(
            [
                plain(a["number"]),
                result,
                plain(a["request_id"] or "-"),
                plain(compact_ms(a["latency_ms"])),
                plain(compact_ms(slept) if slept else "-"),
            ]
        )
    return grid(cols, rows, width)


def _events(events: list[dict[str, Any]], numbers: dict[int, int], width: int) -> Table:
    cols = [Col("time"), Col("step", justify="right"), Col("event"), Col("detail", flex=1, min=20)]
    rows: list[list[Text]] = []
    for e in events:
        detail = _detail(e)
        if isinstance(detail, dict):
            text = " ".join(f"{k}={_compact(v)}" for k, v in detail.items() if v not in (None, []))
        else:
            text = str(detail)
        style = "yellow" if e["kind"] in WARN_EVENTS else ""
        rows.append(
            [
                plain(when(e["at"])[11:19]),
                plain(numbers.get(e["step_id"], "")),
                plain(e["kind"], style),
                cut(clip(text, 400)),
            ]
        )
    return grid(cols, rows, width)


def compact_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}ms" if value < 1000 else f"{value / 1000:.1f}s"


def _compact(value: Any) -> str:
    if isinstance(value, str):
        return value[:12] if _is_sha(value) else value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _is_sha(value: str) -> bool:
    return len(value) in (40, 64) and all(c in "0123456789abcdef" for c in value)
