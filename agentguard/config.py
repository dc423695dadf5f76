"""`agentguard.toml` or `[tool.agentguard]` in `pyproject.toml`, validated before the run starts.

    policy = "coding_agent"            # or a table: { preset = "coding_agent", max_attempts = 3 }
    chain = ["anthropic:claude-opus-4-7", "anthropic:claude-sonnet-4-6", "openai:gpt-5.5"]
    snapshots = true
    max_file_bytes = 10485760
    secret_files = ["*.p12"]           # also never snapshotted ("!.env.*" turns one off)

    [providers.gateway]                # an OpenAI-compatible gateway of your own
    kind = "openai"
    base_url = "http://127.0.0.1:4000/v1"
    api_key_env = "GATEWAY_KEY"

Arguments given to `wrap()` win over the file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agentguard.errors import ConfigError
from agentguard.policy import validate_model
from agentguard.routes import ProviderSpec

CONFIG_FILE = "agentguard.toml"


class AgentGuardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: str | dict[str, Any] | None = None
    chain: list[str | dict[str, Any]] = Field(default_factory=list)
    providers: dict[str, ProviderSpec] = Field(default_factory=dict)
    snapshots: bool | None = None
    max_file_bytes: int | None = Field(None, gt=0)
    # Changes to the built-in secret-file patterns: "*.p12" adds one, "!.env.*" turns one off.
    secret_files: list[str] | None = None


def load_config(
    project: Path, path: str | Path | None = None
) -> tuple[AgentGuardConfig, Path | None]:
    """The config for a project: an explicit file, else agentguard.toml, else pyproject.toml."""
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"Config file {file} does not exist; check the path you passed.")
        return _parse(file, _read(file), in_pyproject=file.name == "pyproject.toml"), file
    for candidate, in_pyproject in (
        (project / CONFIG_FILE, False),
        (project / "pyproject.toml", True),
    ):
        if candidate.is_file():
            data = _read(candidate)
            if in_pyproject and "agentguard" not in data.get("tool", {}):
                continue
            return _parse(candidate, data, in_pyproject=in_pyproject), candidate
    return AgentGuardConfig(), None


def _read(file: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file} is not valid TOML ({exc}); fix the file.") from None
    except OSError as exc:
        raise ConfigError(f"Cannot read {file} ({exc.strerror}).") from None


def _parse(file: Path, data: dict[str, Any], *, in_pyproject: bool) -> AgentGuardConfig:
    section = data.get("tool", {}).get("agentguard", {}) if in_pyproject else data
    where = f"{file} [tool.agentguard]" if in_pyproject else str(file)
    return validate_model(AgentGuardConfig, section, f"config in {where}")
