"""What every `agentguard` command shares: the store, the run lookup, output and exit codes.

Exit codes: 0 ok; 1 a requested action was attempted and failed (or was declined at the
prompt); 2 usage errors and refusals made before anything changed (unknown run, project folder
gone, damaged or newer database, a snapshot missing from the shadow store, no --yes without a
terminal).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from agentguard.errors import AgentGuardError
from agentguard.restoring import (  # noqa: F401 - the commands' shared helpers live there
    checkpoint_of,
    open_shadow,
    record_backup,
    require_commit,
    shadow_dir,
    step_by_number,
    step_ref,
)
from agentguard.resuming import mark_interrupted
from agentguard.store import Store, open_store
from agentguard.store_choice import (
    LOCAL,
    STORE_ENV,
    choose_store,
    configured_store,
    store_location,
    store_problem,
)

OK, FAILED, USAGE = 0, 1, 2

STATUS_STYLE = {
    "completed": "green",
    "ok": "green",
    "running": "cyan",
    "pending": "cyan",
    "waiting": "yellow",
    "failed": "red",
    "interrupted": "magenta",
    "cancelled": "magenta",
}


class Refused(AgentGuardError):
    """The command will not go ahead; nothing was changed (exit 2)."""

    exit_code = USAGE


class ActionFailed(AgentGuardError):
    """The requested action was attempted and failed (exit 1)."""

    exit_code = FAILED


@contextmanager
def acting() -> Iterator[None]:
    """Around the one step that changes something: its failures exit 1, not 2."""
    try:
        yield
    except AgentGuardError as exc:
        if isinstance(exc, Refused | ActionFailed):
            raise
        raise ActionFailed(str(exc)) from exc


def exit_code(exc: AgentGuardError) -> int:
    return int(getattr(exc, "exit_code", USAGE))


@dataclass
class Context:
    """One invocation: where the store is, how to print, and the store once opened."""

    home: str | None
    as_json: bool = False
    out: Console = field(default_factory=lambda: make_console(sys.stdout))
    err: Console = field(default_factory=lambda: make_console(sys.stderr))
    store_flag: str | None = None  # --store as given (None: not given)
    _store: Store | None = None

    def chosen_store(self) -> str:
        """The store this command reads: "" for the SQLite file under --home, else the
        postgresql:// URL — --store, else $AGENTGUARD_STORE, else `store` in the config file
        of the current folder (read only when needed). A bad value is one sentence."""
        return choose_store(self.store_flag, configured_store)

    def store_env(self) -> dict[str, str]:
        """{$AGENTGUARD_STORE: the chosen store} when --store or the config file chose it, {}
        when the environment already names it (see `store_env`)."""
        return store_env(self.chosen_store())

    def store(self) -> Store:
        """The store, with runs whose process died already marked `interrupted`."""
        if self._store is None:
            self._store = open_store(self.home, url=self.chosen_store())
            mark_interrupted(self._store)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def print_json(self, doc: Any) -> None:
        """Every `--json` document goes out here, with its times as ISO 8601 UTC (`json_times`)."""
        text = json.dumps(json_times(doc), indent=2, ensure_ascii=False, default=str)
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def store_env(chosen: str | None) -> dict[str, str]:
    """$AGENTGUARD_STORE as a process started now must see it to open the store `chosen`
    ("" the local file, else a URL; None: nothing chosen) — {} when the environment already
    says so, else the one variable (a child of `agentguard run`, a snippet to paste)."""
    inherited = os.environ.get(STORE_ENV)
    if chosen is None:
        return {}
    if inherited is None and not chosen:
        return {}
    if (
        inherited is not None
        and store_problem(inherited) is None
        and store_location(inherited, STORE_ENV) == chosen
    ):
        return {}
    return {STORE_ENV: chosen or LOCAL}


def make_console(file: Any) -> Console:
    """Plain text when not a terminal (no colour, 80 columns unless $COLUMNS says otherwise)."""
    return Console(file=file, highlight=False, emoji=False, soft_wrap=False)


def confirm(question: str, refusal: str, *, yes: bool) -> bool:
    """Whether to go ahead with a change to the user's tree: --yes, or "y" at the terminal's
    `question`; without a terminal, refuse with `refusal` (one sentence naming --yes)."""
    if yes:
        return True
    if not sys.stdin.isatty():
        raise Refused(refusal)
    sys.stderr.write(question)
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


# -- runs and their snapshots ----------------------------------------------------------------


def find_run(store: Store, given: str) -> dict[str, Any]:
    """A run by its id, or by an unambiguous prefix of it."""
    run = store.get_run(given)
    if run is not None:
        return run
    pattern = given.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    rows = store.query(
        # lower() on both sides: SQLite's like ignores ASCII case, PostgreSQL's does not
        "select id from runs where lower(id) like lower(?) escape '\\' "
        "order by created_at desc limit 4",
        [pattern],
    )
    if len(rows) == 1 and given:
        found = store.get_run(rows[0]["id"])
        assert found is not None
        return found
    if len(rows) > 1 and given:
        shown = ", ".join(r["id"] for r in rows[:3])
        raise Refused(
            f"Run id {given!r} matches several runs ({shown}…); give more of the id, "
            "as listed by `agentguard runs`."
        )
    raise Refused(f"No run {given!r} in {store.path}; list the runs with `agentguard runs`.")


# -- formatting ------------------------------------------------------------------------------


def iso(ts: float | datetime | None) -> str | None:
    """A time for scripts: ISO 8601 UTC to the millisecond, `2026-12-02T16:27:30.123Z`."""
    if ts is None:
        return None
    moment = ts if isinstance(ts, datetime) else datetime.fromtimestamp(ts, UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def is_time_key(key: Any) -> bool:
    """The store's naming rule for times: `at`, `*_at`, `since`, `until`, `*_since`."""
    return isinstance(key, str) and (
        key in ("at", "since", "until") or key.endswith(("_at", "_since"))
    )


def json_times(doc: Any) -> Any:
    """`doc` with every time as ISO 8601 UTC: epoch seconds under a time key (the store keeps
    times as epoch floats) and datetimes anywhere. Strings (already converted) pass through."""
    if isinstance(doc, dict):
        return {
            key: iso(value)
            if is_time_key(key) and isinstance(value, int | float) and not isinstance(value, bool)
            else json_times(value)
            for key, value in doc.items()
        }
    if isinstance(doc, list | tuple):
        return [json_times(value) for value in doc]
    if isinstance(doc, datetime):
        return iso(doc)
    return doc


def when(ts: float | None) -> str:
    """A time for people: `2026-11-20 10:04:05 UTC`."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def age(ts: float | None, now: float) -> str:
    """`3m ago`, `in 4m`, `just now`; dates for anything older than a month."""
    if ts is None:
        return "-"
    delta = now - ts
    seconds = abs(delta)
    if seconds < 5:
        return "just now"
    if seconds >= 30 * 86_400:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        if seconds >= size:
            amount = f"{int(seconds // size)}{unit}"
            break
    return f"{amount} ago" if delta >= 0 else f"in {amount}"


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1000:
        return f"{value:.0f} ms"
    return f"{value / 1000:.1f} s"


def tokens(inp: int | None, out: int | None) -> str:
    if inp is None and out is None:
        return "-"
    return f"{inp or 0:,}→{out or 0:,}"


def short(sha: str | None) -> str:
    return sha[:12] if sha else "-"


def clip(text: str | None, width: int) -> str:
    if not text:
        return ""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def status_text(status: str | None) -> Text:
    return Text(status or "-", style=STATUS_STYLE.get(status or "", ""))


def plain(value: Any, style: str = "") -> Text:
    """Data from the store as text, never as rich markup."""
    return Text("" if value is None else str(value), style=style)


def cut(value: Any, style: str = "") -> Text:
    """A one-line table cell that a narrow terminal shortens with an ellipsis."""
    text = " ".join(str(value).split()) if value is not None else ""
    return Text(text, style=style, no_wrap=True, overflow="ellipsis")


def _longest_line(text: Text) -> int:
    return max((Text(line).cell_len for line in text.plain.split("\n")), default=0)


@dataclass(frozen=True)
class Col:
    """A table column: `flex` 0 is never shortened; others share what room is left by weight."""

    header: str
    flex: int = 0
    min: int = 6
    justify: Literal["left", "right"] = "left"
    wrap: bool = False  # too narrow: wrap onto more lines (cells must be wrappable Text)


def grid(cols: Sequence[Col], rows: Sequence[Sequence[Text]], width: int) -> Table:
    """A table that fits `width`: fixed columns keep their width, flexible ones are cut with an
    ellipsis or wrapped (rich alone would squeeze every column evenly at 80 columns)."""
    natural = [
        max([len(col.header), *(_longest_line(row[i]) for row in rows)])
        for i, col in enumerate(cols)
    ]
    flex = [i for i, col in enumerate(cols) if col.flex]
    widths = list(natural)
    room = width - 2 * (len(cols) - 1) - sum(natural[i] for i in range(len(cols)) if i not in flex)
    for i in flex:
        widths[i] = min(natural[i], cols[i].min)
        room -= widths[i]
    while room > 0:
        hungry = [i for i in flex if widths[i] < natural[i]]
        if not hungry:
            break
        weight = sum(cols[i].flex for i in hungry)
        given = 0
        for i in hungry:
            add = min(max(1, room * cols[i].flex // weight), natural[i] - widths[i], room - given)
            widths[i] += add
            given += add
        if not given:
            break
        room -= given
    # SIMPLE_HEAD draws a space between columns: with one space of padding, a gap of two.
    out = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1, 0, 0))
    for col, w in zip(cols, widths, strict=True):
        out.add_column(
            Text(col.header, no_wrap=True, overflow="ellipsis"),
            width=w,
            no_wrap=not col.wrap,
            overflow="fold" if col.wrap else "ellipsis",
            justify=col.justify,
        )
    for row in rows:
        out.add_row(*row)
    return out


def add_store_option(parser: argparse.ArgumentParser, *, config: str | None = None) -> None:
    """--store, on every command that opens the store (read back as `Context.store_flag`);
    `config` names the config file whose `store` is the last resort."""
    parser.add_argument(
        "--store",
        metavar="URL",
        help='the store: a postgresql:// URL (a fleet\'s shared store) or "sqlite" (the file '
        f"under --home); default $AGENTGUARD_STORE, else `store` in "
        f"{config or './agentguard.toml'}",
    )


def help_formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)
