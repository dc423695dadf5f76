"""Entry point of `agentguard watch [--db PATH] [--run RUN]`. Imports Textual only when called."""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

from agentguard.errors import AgentGuardError, StoreError
from agentguard.home import home_dir
from agentguard.resuming import mark_interrupted
from agentguard.store import DB_NAME, Store


def database_path(db: str | os.PathLike[str] | None, home: str | os.PathLike[str] | None) -> Path:
    return Path(db).expanduser() if db is not None else home_dir(home) / DB_NAME


def prepare(path: Path, *, explicit: bool, run_id: str | None = None) -> str | None:
    """Bring the store's schema up to date and mark runs whose process died as interrupted;
    returns the full id of `run_id` (an id or an unambiguous prefix, as the other commands take).

    The default store is created if it does not exist yet (the view then waits for runs); a
    file named with --db must exist."""
    from agentguard.commands.common import find_run

    if explicit and not path.is_file():
        raise StoreError(f"No agentguard database at {path}; check the path given to --db.")
    store = Store(path)
    try:
        mark_interrupted(store)
        return None if run_id is None else str(find_run(store, run_id)["id"])
    finally:
        store.close()


def run(
    db: Path | None = None,
    *,
    home: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
) -> int:
    """Run the watch app until the user quits; 0 on a normal exit, 2 (the CLI's refusal code)
    with one sentence when it cannot start."""
    path = database_path(db, home)
    try:
        run_id = prepare(path, explicit=db is not None, run_id=run_id)
    except AgentGuardError as exc:
        return _refuse(str(exc))
    if not stdout_is_terminal():
        return _refuse(
            "watch draws a live view in a terminal and its output is not one; run it in a "
            "terminal (in a script or a pipe, use `agentguard runs --json` or "
            "`agentguard show RUN --json`)."
        )
    try:
        from agentguard.tui.app import WatchApp
    except ImportError as exc:  # a broken install: Textual is a core dependency
        return _refuse(
            f"watch needs Textual, which did not import ({exc}); reinstall agentguard "
            "(pip install --force-reinstall agentguard)."
        )
    try:
        app = WatchApp(path, open_run=run_id)
    except StoreError as exc:
        return _refuse(str(exc))
    quiet_gc()
    app.run()
    return app.return_code or 0


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def _refuse(message: str) -> int:
    """The CLI's refusal: one sentence on stderr, exit 2."""
    print(f"agentguard: {message}", file=sys.stderr)
    return 2


def quiet_gc() -> None:
    """Keep the garbage collector's full passes short while the app runs.

    Everything imported so far (the SDKs, Textual, Rich) lives as long as the process; freezing
    it keeps a full collection from walking it each time, which otherwise stalls the event loop
    for a fifth of a second now and then (benchmarks/tui_scale.py measures it)."""
    gc.collect()
    gc.freeze()
