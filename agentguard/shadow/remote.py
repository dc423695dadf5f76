"""A run's checkpoints on a git remote: pushed after each checkpoint, fetched on another machine.

Only the run's own refs travel (`refs/agentguard/runs/RUN/*`: one per step, plus drift and
backup snapshots), with the objects they need. Pushing happens on a thread of its own, one push
at a time, so a step never waits for the network; a push that fails is retried with the next
checkpoint (and at the run's end), each failure reported to the caller, never raised.

git runs on the shadow store itself (GIT_DIR), never on the user's repository; unlike a
snapshot, a push or fetch reads the user's global git config, where credential helpers, proxies
and `insteadOf` rewrites for the remote live. It never prompts (GIT_TERMINAL_PROMPT=0, ssh in
batch mode).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from agentguard.errors import SnapshotError

RUNS_PREFIX = "refs/agentguard/runs/"
PUSH_TIMEOUT_S = 120.0


def run_refspec(run_id: str) -> str:
    """Every ref of one run, forced: a ref the run moved (a drift snapshot) moves there too."""
    return f"+{RUNS_PREFIX}{run_id}/*:{RUNS_PREFIX}{run_id}/*"


def display_url(url: str) -> str:
    """The remote as it may be shown or stored: a password in it replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def remote_env(git_dir: Path) -> dict[str, str]:
    """The caller's environment minus its GIT_* variables, on the shadow store, never asking."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_DIR=str(git_dir), GIT_TERMINAL_PROMPT="0", LC_ALL="C", LANGUAGE="C")
    env["GIT_SSH_COMMAND"] = os.environ.get("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    return env


def _git(git_dir: Path, args: list[str], what: str, url: str, timeout: float) -> None:
    try:
        done = subprocess.run(
            ["git", *args],
            env=remote_env(git_dir),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise SnapshotError(
            f"git {what} {display_url(url)} took longer than {timeout:g} s; check the remote."
        ) from None
    except OSError as exc:
        raise SnapshotError(
            f"git could not be started ({exc.strerror}); check that git is installed."
        ) from None
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        detail = lines[-1] if lines else f"exit status {done.returncode}"
        password = urlsplit(url).password
        if password:  # git may quote the URL it was given
            detail = detail.replace(password, "***")
        raise SnapshotError(f"git {what} {display_url(url)} failed: {detail}")


def push_run(git_dir: Path, url: str, run_id: str, timeout: float = PUSH_TIMEOUT_S) -> None:
    """Push every ref of `run_id` (and the objects they need) to `url`."""
    args = ["push", "--quiet", "--no-verify", url, run_refspec(run_id)]
    _git(git_dir, args, "push to", url, timeout)


def fetch_run(git_dir: Path, url: str, run_id: str, timeout: float = PUSH_TIMEOUT_S) -> None:
    """Fetch every ref of `run_id` from `url` into the shadow store at `git_dir`."""
    args = ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", url, run_refspec(run_id)]
    _git(git_dir, args, "fetch from", url, timeout)


class Pusher:
    """Pushes one run's refs in the background: `request()` after each checkpoint, `close()`
    at the run's end. Requests made while a push runs are folded into one next push."""

    def __init__(
        self,
        git_dir: Path,
        url: str,
        run_id: str,
        *,
        on_failure: Callable[[str], None],
        on_recovery: Callable[[], None],
        timeout: float = PUSH_TIMEOUT_S,
    ) -> None:
        self.git_dir, self.url, self.run_id, self.timeout = git_dir, url, run_id, timeout
        self._on_failure, self._on_recovery = on_failure, on_recovery
        self._wanted = threading.Condition()
        self._pending = False
        self._busy = False
        self._closing = False
        self._failing = False
        self.pushes = 0  # pushes that succeeded (for tests and stats)
        self._thread = threading.Thread(target=self._run, name="agentguard-push", daemon=True)
        self._thread.start()

    def request(self) -> None:
        with self._wanted:
            self._pending = True
            self._wanted.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Until every push requested so far has been tried (False: `timeout` passed first)."""
        with self._wanted:
            return self._wanted.wait_for(lambda: not self._pending and not self._busy, timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Push what is pending, then stop; False when that did not finish within `timeout`
        (the thread is a daemon: it never keeps the process alive)."""
        with self._wanted:
            self._closing = True
            self._pending = self._pending or self._failing  # the last push failed: once more
            self._wanted.notify_all()
        self._thread.join(self.timeout + 5 if timeout is None else timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._wanted:
                while not self._pending and not self._closing:
                    self._wanted.wait()
                if not self._pending:
                    return
                self._pending, self._busy = False, True
            try:
                self._push_once()
            finally:
                with self._wanted:
                    self._busy = False
                    self._wanted.notify_all()

    def _push_once(self) -> None:
        try:
            push_run(self.git_dir, self.url, self.run_id, self.timeout)
        except SnapshotError as exc:
            self._failing = True
            self._report(self._on_failure, str(exc))
            return
        self.pushes += 1
        if self._failing:
            self._failing = False
            self._report(self._on_recovery)

    @staticmethod
    def _report(callback: Callable[..., None], *args: str) -> None:
        with contextlib.suppress(Exception):  # the store may be closing; the next push reports
            callback(*args)
