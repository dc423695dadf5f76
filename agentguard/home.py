"""Where agentguard keeps its data: never inside the user's project."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import platformdirs

from agentguard.errors import StoreError

ENV_VAR = "AGENTGUARD_HOME"


def home_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The data folder: explicit override, then $AGENTGUARD_HOME, then the per-user data dir."""
    raw = override if override is not None else os.environ.get(ENV_VAR)
    return Path(raw).expanduser() if raw else Path(platformdirs.user_data_dir("agentguard"))


def ensure_home(path: Path) -> Path:
    """Create the data folder (mode 0700) or say plainly why it cannot be used."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = path / f".write-test-{os.getpid()}-{threading.get_ident()}"
        probe.touch()
        probe.unlink(missing_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise StoreError(
            f"agentguard cannot write to its data folder {path} ({reason}); "
            f"set {ENV_VAR} to a writable folder."
        ) from None
    return path


def project_key(project: Path) -> str:
    """A stable short name for a project folder, used to name its shadow store."""
    return hashlib.sha256(str(project.resolve()).encode()).hexdigest()[:16]
