"""How this process is ending, so a run left open is closed with the truth.

`atexit` alone cannot tell a script that finished from one that died of an exception: both run
the exit handlers. So, like other run trackers, agentguard chains `sys.excepthook` (an uncaught
exception, KeyboardInterrupt included) and `sys.exit` (an exit status) once, when the first run
starts, and the run's exit handler asks `ending()` what happened. A signal that kills the
process runs no handler at all; such a run is marked `interrupted` by the next agentguard
process that finds its pid gone (`resuming.mark_interrupted`).
"""

from __future__ import annotations

import sys
import threading
import types
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Ending:
    """What ended the process: the run status it means and, for a crash, why."""

    status: str  # completed | failed | interrupted
    error_type: str | None = None
    message: str | None = None


_lock = threading.Lock()
_installed = False
_uncaught: BaseException | None = None
_exit_code: Any = None


def install() -> None:
    """Chain the hooks once per process (idempotent, keeps whatever hooks were there)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
        previous_hook = sys.excepthook
        previous_exit = sys.exit

        def excepthook(
            kind: type[BaseException], value: BaseException, tb: types.TracebackType | None
        ) -> None:
            global _uncaught
            _uncaught = value
            previous_hook(kind, value, tb)

        def exit(status: Any = None) -> None:
            global _exit_code
            _exit_code = status
            previous_exit(status)

        sys.excepthook = excepthook
        sys.exit = exit


def ending() -> Ending:
    """Called from an exit handler: how the process is ending, as a run status."""
    if _uncaught is not None:
        if isinstance(_uncaught, KeyboardInterrupt):
            return Ending("interrupted", "KeyboardInterrupt", "interrupted by the user (Ctrl-C)")
        return Ending("failed", type(_uncaught).__name__, describe(_uncaught))
    if _exit_code not in (None, 0):
        detail = f"the process exited with status {_exit_code}"
        return Ending("failed", "SystemExit", detail)
    return Ending("completed")


def describe(exc: BaseException) -> str:
    """An exception's first line, or its type when it has no message."""
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
