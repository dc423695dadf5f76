"""Entry point of `agentguard watch [--db PATH] [--run RUN]`. Imports Textual only when called.

It watches the SQLite file under AGENTGUARD_HOME (or the one --db names), or — when the store
chosen is a postgresql:// URL — the fleet's shared store, every machine's runs at once.
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path
from typing import Any

from agentguard.errors import AgentGuardError, StoreError
from agentguard.home import home_dir
from agentguard.resuming import mark_interrupted
from agentguard.store import DB_NAME, STORE_ENV, Store, open_store
from agentguard.tui.data import is_postgres_locator

# What watch reads: a SQLite file, or a postgresql:// URL (fleet mode).
Locator = Path | str


def database_path(db: str | os.PathLike[str] | None, home: str | os.PathLike[str] | None) -> Path:
    return Path(db).expanduser() if db is not None else home_dir(home) / DB_NAME


def locate(
    db: str | os.PathLike[str] | None,
    home: str | os.PathLike[str] | None,
    store: str | None = None,
) -> Locator:
    """The store to watch: the file --db names, else the chosen store — `store` as the CLI
    chose it ("" or "sqlite": the file under `home`; a postgresql:// URL: the fleet's), or
    $AGENTGUARD_STORE when None. A value that is neither is refused as `open_store` words it."""
    if db is not None:
        return database_path(db, home)
    chosen = (os.environ.get(STORE_ENV, "") if store is None else store).strip()
    if is_postgres_locator(chosen):
        return chosen
    open_store(home, url=chosen).close()  # refuses a bad value; creates the default file
    return database_path(None, home)


def prepare(
    locator: Locator,
    *,
    explicit: bool,
    run_id: str | None = None,
    home: str | os.PathLike[str] | None = None,
) -> str | None:
    """Bring the store's schema up to date and mark runs whose process died as interrupted;
    returns the full id of `run_id` (an id or an unambiguous prefix, as the other commands take).

    The default store is created if it does not exist yet (the view then waits for runs); a
    file named with --db must exist. A PostgreSQL store is migrated here (which adds the
    triggers that announce its changes) before the app listens to it."""
    from agentguard.commands.common import find_run

    if is_postgres_locator(locator):
        store: Any = open_store(home, url=str(locator))
    else:
        path = Path(locator)
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
    store: str | None = None,
) -> int:
    """Run the watch app until the user quits; 0 on a normal exit, 2 (the CLI's refusal code)
    with one sentence when it cannot start. `store` is the CLI's choice (see `locate`)."""
    try:
        locator = locate(db, home, store)
        run_id = prepare(locator, explicit=db is not None, run_id=run_id, home=home)
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
        app = WatchApp(locator, home=home, open_run=run_id)
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
