"""The real Claude Code CLI for the tests: installed once from the npm registry, pinned.

`require()` (called by the tests' session fixture `claude_code`) installs
`@anthropic-ai/claude-code@VERSION` into `.cache/claude-code/VERSION/` in the repository
(git-ignored) the first time, and reuses it afterwards. Where it cannot be installed (no npm,
no registry) the tests that need it are skipped with the reason — except under CI
(`CI=true`), where they fail with that sentence: CI must run them.

`ClaudeCode.run(...)` starts it as the tests need it: a private HOME (no user settings, no
login), no telemetry, no auto-update, no nonessential traffic (else it also sends
`HEAD /api/hello` and looks its own host up), `ANTHROPIC_BASE_URL` pointing at a loopback
server and a fake key. Nothing else is inherited from the environment but PATH, so a real
`ANTHROPIC_API_KEY` of the person running the tests never reaches it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

VERSION = "2.1.330"
PACKAGE = f"@anthropic-ai/claude-code@{VERSION}"
REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "claude-code"
INSTALL_TIMEOUT = 600.0
FAKE_KEY = "sk-ant-fake-claude-code-tests-0000"

QUIET = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_AUTOUPDATER": "1",
}


class ClaudeUnavailable(Exception):
    """Claude Code could not be installed here; the message is one sentence saying why."""


@dataclass(frozen=True)
class Result:
    """One finished `claude -p` run."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def json(self) -> dict[str, Any]:
        """The `--output-format json` result object."""
        return json.loads(self.stdout)

    def events(self) -> list[dict[str, Any]]:
        """The `--output-format stream-json --verbose` events, one JSON object a line."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


@dataclass(frozen=True)
class ClaudeCode:
    """The installed CLI."""

    binary: Path
    install_seconds: float  # 0.0 when the cached installation was reused

    def env(self, home: Path, base_url: str, **extra: str) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            **QUIET,
            "ANTHROPIC_BASE_URL": base_url,
            "ANTHROPIC_API_KEY": FAKE_KEY,
            **extra,
        }

    def run(
        self,
        prompt: str,
        *args: str,
        cwd: Path,
        home: Path,
        base_url: str,
        env: dict[str, str] | None = None,
        timeout: float = 120.0,
    ) -> Result:
        """`claude -p PROMPT ARGS…` in `cwd`, talking to `base_url`; `--output-format json`
        unless ARGS name another."""
        if "--output-format" not in args:
            args = (*args, "--output-format", "json")
        command = [str(self.binary), "-p", prompt, *args]
        started = time.monotonic()
        done = subprocess.run(
            command,
            cwd=cwd,
            env=self.env(home, base_url, **(env or {})),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        return Result(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def installed_version(binary: Path) -> str | None:
    """What `claude --version` says ('2.1.330 (Claude Code)' → '2.1.330'), None if it fails."""
    if not binary.exists():
        return None
    try:
        done = subprocess.run(
            [str(binary), "--version"],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": os.environ.get("PATH", ""), "HOME": str(binary.parent), **QUIET},
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = done.stdout.split()
    return words[0] if done.returncode == 0 and words else None


def install(cache: Path = CACHE, version: str = VERSION) -> ClaudeCode:
    """Claude Code `version` from the cache, installing it there first if needed.

    Raises ClaudeUnavailable with one sentence when it cannot be installed."""
    folder = cache / version
    binary = folder / "node_modules" / ".bin" / "claude"
    if installed_version(binary) == version:
        return ClaudeCode(binary, 0.0)
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise ClaudeUnavailable(
            f"cannot install {PACKAGE} for the Claude Code tests: node and npm are not on PATH "
            "(apt-get install nodejs npm)."
        )
    cache.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with _locked(cache / f".{version}.lock"):
        if installed_version(binary) == version:  # another process installed it meanwhile
            return ClaudeCode(binary, 0.0)
        staging = cache / f".{version}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        _npm_install(npm, staging)
        _finish_postinstall(staging)
        if installed_version(staging / "node_modules" / ".bin" / "claude") != version:
            raise ClaudeUnavailable(
                f"{PACKAGE} was installed into {staging} but `claude --version` does not say "
                f"{version} there."
            )
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)  # the cache holds a whole installation or none
    return ClaudeCode(binary, time.monotonic() - started)


def _npm_install(npm: str, prefix: Path) -> None:
    command = [npm, "install", "--prefix", str(prefix), PACKAGE]
    command += ["--no-audit", "--no-fund", "--loglevel=error"]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, cwd=prefix
        )
    except subprocess.TimeoutExpired:
        raise ClaudeUnavailable(
            f"`npm install {PACKAGE}` did not finish within {INSTALL_TIMEOUT:.0f} s."
        ) from None
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise ClaudeUnavailable(
            f"`npm install {PACKAGE}` failed (exit {done.returncode}): {last.strip()}"
        )


def _finish_postinstall(prefix: Path) -> None:
    """npm may skip the package's postinstall (it links the platform binary): run it."""
    if installed_version(prefix / "node_modules" / ".bin" / "claude") == VERSION:
        return
    package = prefix / "node_modules" / "@anthropic-ai" / "claude-code"
    node = shutil.which("node") or "node"
    subprocess.run(
        [node, "install.cjs"], cwd=package, capture_output=True, text=True, timeout=300, check=False
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require() -> ClaudeCode:
    """The real Claude Code CLI, for a session fixture (`claude_code` in the tests that use it):
    the test is skipped with the reason when it cannot be installed, or failed under CI."""
    try:
        return install()
    except ClaudeUnavailable as exc:
        reason = str(exc)
    if on_ci():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def tool_names(body: dict[str, Any]) -> Sequence[str]:
    return [t.get("name", "") for t in body.get("tools", []) if isinstance(t, dict)]
