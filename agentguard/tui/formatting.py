"""Plain text for the watch views: ages, durations, model names and the banners.

Pure functions of their arguments (the clock and time zone are passed in), so snapshot tests
are frozen and the wording can be tested without a terminal.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentguard.tui.data import AttemptView, RunSummary, StepView

DASH = "—"


def short_model(model: str | None) -> str:
    """'claude-opus-4-7' → 'opus-4-7', 'deepseek/deepseek-v4-pro' → 'deepseek-v4-pro'."""
    if not model:
        return DASH
    name = model.rsplit("/", 1)[-1]
    return name.removeprefix("claude-")


def short_error(error_type: str | None) -> str:
    """'overloaded_error' → 'overloaded' (what a banner has room for)."""
    if not error_type:
        return ""
    return error_type.removesuffix("_error")


def short_sha(sha: str | None, n: int = 8) -> str:
    return sha[:n] if sha else DASH


def age(seconds: float) -> str:
    """A compact age: '42s', '7m', '3h', '12d'."""
    s = max(seconds, 0.0)
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{s // 60:.0f}m"
    if s < 86400:
        return f"{s // 3600:.0f}h"
    return f"{s // 86400:.0f}d"


def countdown(seconds: float) -> str:
    """'4m 12s', '1h 05m', '12s'."""
    s = int(max(seconds, 0.0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def ms(value: float | None) -> str:
    """Milliseconds for a cell: '870ms', '2.4s', '—'."""
    if value is None:
        return DASH
    if value < 1000:
        return f"{value:.0f}ms"
    if value < 60_000:
        return f"{value / 1000:.1f}s"
    return f"{value / 60_000:.1f}m"


def clock_time(ts: float | None, tz: tzinfo | None, *, date: bool = True) -> str:
    """An absolute time in `tz` (None: the local zone), with the zone's name."""
    if ts is None:
        return DASH
    moment = datetime.fromtimestamp(ts, tz) if tz is not None else datetime.fromtimestamp(ts)
    moment = moment.astimezone(tz)
    shown = moment.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S")
    return f"{shown} {moment.tzname() or ''}".rstrip()


def run_length(items: Iterable[str]) -> str:
    """'529 529 529 200' → '529×3 200'."""
    out: list[str] = []
    last, count = None, 0
    for item in [*items, None]:
        if item == last:
            count += 1
            continue
        if last is not None:
            out.append(f"{last}×{count}" if count > 1 else last)
        last, count = item, 1
    return " ".join(out)


def attempt_status(attempt: AttemptView) -> str:
    """What one try got: an HTTP status, or the failure's kind when there was no response."""
    if attempt.outcome == "pending":
        return "…"
    if attempt.outcome == "interrupted":
        return "cut"  # the process died with this request in flight
    if attempt.outcome == "cancelled":
        return "cancel"  # the caller cancelled the call with this request in flight
    if attempt.status_code == 200 and attempt.outcome != "ok":
        return "mid"  # an error event mid-stream, after the 200 headers
    if attempt.status_code is not None:
        return str(attempt.status_code)
    return short_error(attempt.error_type) or attempt.outcome or "?"


def attempts_summary(attempts: Sequence[AttemptView]) -> str:
    """A step's tries at a glance: '529×3 200'."""
    return run_length(attempt_status(a) for a in attempts) or DASH


def failure_summary(attempts: Sequence[AttemptView], requested_model: str | None) -> str:
    """Why the requested route did not serve: '529 overloaded ×3' (per model when several)."""
    by_model: dict[str, dict[str, int]] = {}
    for a in attempts:
        if a.outcome in ("ok", "pending", "interrupted", "cancelled"):
            continue
        kind = short_error(a.error_type)
        if a.status_code is None:
            label = kind or a.outcome or "error"
        elif a.status_code == 200:
            label = f"{kind or 'error'} mid-stream"
        else:
            label = f"{a.status_code} {kind}".rstrip()
        counts = by_model.setdefault(a.model or "?", {})
        counts[label] = counts.get(label, 0) + 1
    parts = []
    for model, counts in by_model.items():
        text = ", ".join(f"{label} ×{n}" for label, n in counts.items())
        only_requested = len(by_model) == 1 and model == requested_model
        parts.append(text if only_requested else f"{model}: {text}")
    return "; ".join(parts)


def substitution_banner(step: StepView) -> str:
    """'served by claude-sonnet-4-6 instead of claude-opus-4-7 — 529 overloaded ×3'."""
    why = failure_summary(step.attempts, step.requested_model) or step.reason or "reason unknown"
    served = step.served_model or "another route"
    return f"served by {served} instead of {step.requested_model} — {why}"


def waiting_banner(run: RunSummary, now: float, tz: tzinfo | None) -> str:
    """'queued — next attempt 2026-11-22 10:32:00 UTC (in 4m 12s)'."""
    if run.next_attempt_at is None:
        return "queued — no next attempt time recorded; resume it with `agentguard resume`"
    when = clock_time(run.next_attempt_at, tz)
    left = run.next_attempt_at - now
    if left > 0:
        return f"queued — next attempt {when} (in {countdown(left)})"
    return f"queued — due since {when} ({countdown(-left)} ago): `agentguard resume --due` runs it"


def one_line(text: str | None, limit: int = 400) -> str:
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
