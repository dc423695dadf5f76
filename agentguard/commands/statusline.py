"""`agentguard statusline`: one line for Claude Code's status bar — who is serving this session.

Claude Code runs a status-line command after each assistant message (and every
`refreshInterval` seconds when set), writing a JSON object about the session to its stdin
(`session_id`, `cwd`, `workspace: {current_dir, project_dir}`, `model: {id, display_name}`,
`version`, …) and showing the first line the command prints. This prints exactly one line,
about the latest step of the session's run:

    agentguard ⚠ sonnet-4-6 serving — opus-4-7 529 ×5      another model answered the last turn
    agentguard ✓ opus-4-7 · 2 retries                      the requested model answered, 3rd try
    agentguard ⏳ waiting for opus-4-7 — 529 storm, 2m13s   a turn in flight after failures
    agentguard ✗ opus-4-7 failed — 529 ×10                 the last turn was not served
    agentguard                                             nothing known about this session

It runs every few hundred milliseconds, so it reads the store once, read-only, with a few
indexed queries, and imports nothing heavy; and it never fails loudly: bad or missing JSON on
stdin, no store, a store from another version — it prints `agentguard` and exits 0.

The store is the one every command reads (`--store`, else $AGENTGUARD_STORE, else `store` in
the current folder's config file): the SQLite file through `sqlite3` itself, or a fleet's
PostgreSQL server through one psycopg connection — never a PostgresStore, whose opening
migrates and starts a pool. A server that does not answer costs at most CONNECT_TIMEOUT_S
(psycopg's shortest) and prints `agentguard`, as a missing SQLite file does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agentguard.home import home_dir
from agentguard.store_choice import choose_store, configured_store
from agentguard.tui.formatting import short_error, short_model

if TYPE_CHECKING:
    from agentguard.commands.common import Context

NAME = "statusline"
SUMMARY = "Print one status line for Claude Code (reads its session JSON on stdin)."
EPILOG = """\
Claude Code runs it with the session as JSON on stdin; add to ~/.claude/settings.json:
  "statusLine": {"type": "command", "command": "agentguard statusline"}

examples:
  echo '{"session_id": "…", "workspace": {"current_dir": "'$PWD'"}}' | agentguard statusline
"""
DB_NAME = "agentguard.db"  # agentguard.store.DB_NAME, not imported: it would load sqlite_utils
PREFIX = "agentguard"
SESSION_EVENT = "client_session"
RECENT_RUNS = 500  # a session's client_session event is looked for among the newest runs
FINISHED = ("ok",)
IN_FLIGHT = ("pending", "waiting")
CONNECT_TIMEOUT_S = 2  # psycopg waits at least 2 s whatever it is given
STATEMENT_TIMEOUT_MS = 2000
# The session id of a client_session event: SQLite reads the JSON text with json_extract;
# PostgreSQL keeps it as text too, cast only on that kind's rows (another kind's detail is
# never parsed, whatever it holds).
SESSION_OF_EVENT = {
    "sqlite": "json_extract(e.detail, '$.session_id')",
    "postgresql": f"case when e.kind = '{SESSION_EVENT}' then e.detail::jsonb ->> 'session_id' end",
}

Row = Mapping[str, Any]


class Rows(Protocol):
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Reader(Protocol):
    """A read-only connection to either engine, taking this module's SQL (`?` placeholders)."""

    engine: str

    def execute(self, sql: str, params: Sequence[Any]) -> Rows: ...

    def close(self) -> None: ...


class _SQLite:
    engine = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        conn.row_factory = sqlite3.Row
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any]) -> Rows:
        return self.conn.execute(sql, tuple(params))

    def close(self) -> None:
        self.conn.close()


class _Postgres:
    engine = "postgresql"

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any]) -> Rows:
        return self.conn.execute(sql.replace("?", "%s"), list(params))  # no `?` in our literals

    def close(self) -> None:
        self.conn.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass  # everything comes from stdin; --home and --store are shared with the other commands


def run(ctx: Context, args: argparse.Namespace) -> int:
    print_line(ctx.home, ctx.store_flag)
    return 0


def print_line(home: str | None = None, store: str | None = None) -> None:
    try:
        line = status_line(read_session(), home, store=store)
    except Exception:  # a status bar must never show a traceback
        line = PREFIX
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def read_session() -> dict[str, Any]:
    """Claude Code's JSON from stdin; {} when there is none, it is not JSON or not an object."""
    stdin = sys.stdin
    if stdin is None or stdin.closed or stdin.isatty():  # run by hand: do not wait for input
        return {}
    try:
        doc = json.loads(stdin.read() or "{}")
    except (ValueError, OSError):
        return {}
    return doc if isinstance(doc, dict) else {}


def status_line(
    session: dict[str, Any],
    home: str | None = None,
    now: float | None = None,
    *,
    store: str | None = None,
) -> str:
    """The line for `session`, from the store `store` (--store) or the usual choice names."""
    db = open_reader(home, store)
    if db is None:
        return PREFIX
    try:
        run_id = run_for_session(db, _text(session.get("session_id")), _projects(session))
        if run_id is None:
            return PREFIX
        return describe(db, run_id, time.time() if now is None else now)
    finally:
        db.close()


def open_reader(home: str | None = None, store: str | None = None) -> Reader | None:
    """A read-only connection to the chosen store; None when there is no SQLite file (nothing
    is created). A PostgreSQL server that does not answer raises (the caller prints PREFIX)."""
    location = choose_store(store, configured_store)
    if location:
        import psycopg  # only here: it costs more to import than the SQLite lookup takes
        from psycopg.rows import dict_row

        from agentguard.store_pg_setup import connect_options

        options = {**connect_options(location), "connect_timeout": CONNECT_TIMEOUT_S}
        conn = psycopg.connect(location, **options, row_factory=dict_row)
        try:  # read only, as SQLite's mode=ro; a locked table must not hold the prompt either
            conn.execute(
                f"set statement_timeout = {STATEMENT_TIMEOUT_MS}; "
                "set default_transaction_read_only = on"
            )
        except BaseException:
            conn.close()
            raise
        return _Postgres(conn)
    path = home_dir(home) / DB_NAME
    if not path.is_file():
        return None
    return _SQLite(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=0.25))


def run_for_session(db: Reader, session_id: str | None, projects: Sequence[str] = ()) -> str | None:
    """The run of a Claude Code session, or None. The contract a proxy writes to:

    1. a run whose `runs.name` is the session id (the newest if several), else
    2. a run with an event of kind `client_session` whose JSON detail has
       `"session_id": <the session id>` (looked for among the RECENT_RUNS newest runs), else
    3. the newest run whose `project` is one of `projects` — Claude Code's
       `workspace.current_dir`, `workspace.project_dir` and `cwd`, as given and resolved —
       for a session the store has not seen (or no session id at all).

    The session id is Claude Code's `session_id` on the status line's stdin, the same value it
    sends as the `x-claude-code-session-id` header on every request.
    """
    if session_id:
        row = db.execute(
            "select id from runs where name = ? order by created_at desc limit 1", (session_id,)
        ).fetchone()
        if row is not None:
            return str(row["id"])
        row = db.execute(
            f"""select e.run_id from events e
               where e.run_id in (select id from runs order by created_at desc limit ?)
                 and e.kind = ? and {SESSION_OF_EVENT[db.engine]} = ?
               order by e.at desc limit 1""",
            (RECENT_RUNS, SESSION_EVENT, session_id),
        ).fetchone()
        if row is not None:
            return str(row["run_id"])
    if not projects:
        return None
    marks = ",".join("?" * len(projects))
    row = db.execute(
        f"select id from runs where project in ({marks}) order by created_at desc limit 1",
        tuple(projects),
    ).fetchone()
    return str(row["id"]) if row is not None else None


def describe(db: Reader, run_id: str, now: float) -> str:
    """The line for a run: its latest step, or the one before while a turn is in flight."""
    steps = db.execute(
        """select id, status, requested_model, served_model, substituted, started_at
           from steps where run_id = ? order by number desc limit 2""",
        (run_id,),
    ).fetchall()
    if not steps:
        return PREFIX
    latest = steps[0]
    attempts = _attempts(db, latest["id"])
    if latest["status"] in IN_FLIGHT:
        failures = [a for a in attempts if _failed(a)]
        if failures:
            return _waiting(latest, attempts, failures, now)
        if len(steps) > 1 and steps[1]["status"] in FINISHED:  # a turn going normally: the
            return _finished(steps[1], _attempts(db, steps[1]["id"]))  # last one still holds
        return f"{PREFIX} ⏳ {short_model(latest['requested_model'])}"
    if latest["status"] in FINISHED:
        return _finished(latest, attempts)
    failures = [a for a in attempts if _failed(a)]
    line = f"{PREFIX} ✗ {short_model(latest['requested_model'])} {latest['status']}"
    return f"{line} — {_failures_by_model(failures)}" if failures else line


def _finished(step: Row, attempts: list[Row]) -> str:
    requested, served = step["requested_model"], step["served_model"] or step["requested_model"]
    if step["substituted"]:
        own = [a for a in attempts if a["model"] == requested and _failed(a)]
        why = _counted(own) if own else "asked for"
        return f"{PREFIX} ⚠ {short_model(served)} serving — {short_model(requested)} {why}"
    retries = max(len(attempts) - 1, 0)
    line = f"{PREFIX} ✓ {short_model(served)}"
    if retries:
        line += f" · {retries} {'retry' if retries == 1 else 'retries'}"
    return line


def _waiting(step: Row, attempts: list[Row], failures: list[Row], now: float) -> str:
    requested = step["requested_model"]
    trying = attempts[-1]["model"] if attempts else requested
    waited = _duration(now - (step["started_at"] or now))
    if trying and trying != requested:  # falling back: say to what, and why
        own = [a for a in failures if a["model"] == requested] or failures
        return (
            f"{PREFIX} ⏳ falling back to {short_model(trying)} — "
            f"{short_model(requested)} {_counted(own)}, {waited}"
        )
    label, count = Counter(_label(a) for a in failures).most_common(1)[0]
    storm = f"{label} storm" if count > 1 else label
    return f"{PREFIX} ⏳ waiting for {short_model(requested)} — {storm}, {waited}"


def _attempts(db: Reader, step_id: int) -> list[Row]:
    return db.execute(
        """select model, status_code, error_type, outcome from attempts
           where step_id = ? order by number""",
        (step_id,),
    ).fetchall()


def _failed(attempt: Row) -> bool:
    return attempt["outcome"] not in ("ok", "pending")


def _label(attempt: Row) -> str:
    """What went wrong, shortest: '529', 'overloaded' (mid-stream, status 200), 'timeout'."""
    code = attempt["status_code"]
    if code and code != 200:
        return str(code)
    return short_error(attempt["error_type"]) or str(attempt["outcome"])


def _counted(failures: list[Row]) -> str:
    """'529 ×5', or '529 ×3, 500 ×1' in order of first appearance."""
    counts = Counter(_label(a) for a in failures)
    return ", ".join(f"{label} ×{n}" for label, n in counts.items())


def _failures_by_model(failures: list[Row]) -> str:
    models = list(dict.fromkeys(a["model"] for a in failures))
    if len(models) == 1:
        return _counted(failures)
    return "; ".join(
        f"{short_model(m)} {_counted([a for a in failures if a['model'] == m])}" for m in models
    )


def _duration(seconds: float) -> str:
    """'45s', '2m13s', '1h02m'."""
    s = int(max(seconds, 0.0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _projects(session: dict[str, Any]) -> list[str]:
    """The folders the session works in, as Claude Code gives them and resolved."""
    workspace = session.get("workspace")
    workspace = workspace if isinstance(workspace, dict) else {}
    found: list[str] = []
    for value in (workspace.get("current_dir"), workspace.get("project_dir"), session.get("cwd")):
        if not _text(value):
            continue
        found.append(value)
        with contextlib.suppress(OSError, RuntimeError, ValueError):
            found.append(str(Path(value).expanduser().resolve()))
    return list(dict.fromkeys(found))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m agentguard.commands.statusline [--home PATH] [--store URL]`: the same line
    without loading the whole CLI (its imports cost more than the query)."""
    parser = argparse.ArgumentParser(prog="agentguard statusline", description=SUMMARY)
    parser.add_argument("--home", metavar="PATH", default=None)
    parser.add_argument("--store", metavar="URL", default=None)
    args = parser.parse_args(argv)
    print_line(args.home, args.store)
    return 0


if __name__ == "__main__":
    sys.exit(main())
