"""`pip install agentguard` (no extras) gives a working `agentguard watch`.

One slow test: a fresh venv, `pip install .` from this checkout, then the installed command.
pip talks only to the package registry it is configured with (and its default cache, so a
rerun is quick); nothing else goes over the network.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSTALL_TIMEOUT_S = 900  # building the wheel and fetching Textual, GitPython, the SDKs


def run(args: list[str | Path], *, timeout: float = 120, cwd: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    done = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
        check=False,
    )
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


def test_pip_install_without_extras_gives_a_working_watch(tmp_path: Path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv])
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    run(
        [bin_dir / "python", "-m", "pip", "install", "--quiet", ROOT],
        timeout=INSTALL_TIMEOUT_S,
        cwd=tmp_path,
    )
    # outside the checkout, so the installed copy is the one imported
    out = run([bin_dir / "agentguard", "watch", "--help"], cwd=tmp_path)
    assert "usage: agentguard watch" in out
    # `--help` never loads the TUI: check that Textual and the app itself are installed too,
    # and GitPython (a core dependency as well)
    probe = "import agentguard.tui.app, git, textual; print('ok')"
    assert run([bin_dir / "python", "-c", probe], cwd=tmp_path).strip() == "ok"
