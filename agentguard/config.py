"""`agentguard.toml` or `[tool.agentguard]` in `pyproject.toml`, validated before the run starts.

    policy = "coding_agent"            # or a table: { preset = "coding_agent", max_attempts = 3 }
    chain = ["anthropic:claude-opus-4-7", "anthropic:claude-sonnet-4-6", "openai:gpt-5.5"]
    snapshots = true
    max_file_bytes = 10485760
    secret_files = ["*.p12"]           # also never snapshotted ("!.env.*" turns one off)
    snapshot_remote = "git@git.internal:team/agentguard-checkpoints.git"  # checkpoints travel
    store = "postgresql://agentguard@db.internal/agentguard"  # the fleet's shared store

    [providers.gateway]                # an OpenAI-compatible gateway of your own
    kind = "openai"
    base_url = "http://127.0.0.1:4000/v1"
    api_key_env = "GATEWAY_KEY"

Arguments given to `wrap()` win over the file; for `store` and `snapshot_remote`, so does the
environment (`store_choice` has the order).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from agentguard.errors import ConfigError
from agentguard.policy import describe_problems, policy_problems, problems
from agentguard.routes import ProviderSpec, parse_chain, parse_route
from agentguard.store_choice import store_problem

CONFIG_FILE = "agentguard.toml"


class AgentGuardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: str | dict[str, Any] | None = None
    chain: list[str | dict[str, Any]] = Field(default_factory=list)
    providers: dict[str, ProviderSpec] = Field(default_factory=dict)
    snapshots: StrictBool | None = None  # true or false, not "yes" or 1
    max_file_bytes: StrictInt | None = Field(None, gt=0)
    # Changes to the built-in secret-file patterns: "*.p12" adds one, "!.env.*" turns one off.
    secret_files: list[str] | None = None
    # A git remote (any URL git takes; a local bare repository works) that each run's
    # checkpoints are pushed to, so `agentguard resume RUN --project DIR` works on another machine.
    snapshot_remote: str | None = None
    # The store: a postgresql:// URL (a fleet's shared store) or "sqlite" (the local file);
    # --store and $AGENTGUARD_STORE win over it (see agentguard.store_choice).
    store: str | None = None


SNAPSHOT_REMOTE_ENV = "AGENTGUARD_SNAPSHOT_REMOTE"


def snapshot_remote(explicit: str | None, settings: AgentGuardConfig) -> str | None:
    """The remote checkpoints go to: an argument, else $AGENTGUARD_SNAPSHOT_REMOTE, else the
    config file's `snapshot_remote`; an empty string at any level means none."""
    for value in (explicit, os.environ.get(SNAPSHOT_REMOTE_ENV), settings.snapshot_remote):
        if value is not None:
            return value or None
    return None


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
    """The validated config, or one ConfigError naming the file and every field that is wrong
    (what each allows, and what it got)."""
    section = data.get("tool", {}).get("agentguard", {}) if in_pyproject else data
    where = f"config in {file} [tool.agentguard]" if in_pyproject else f"config in {file}"
    if not isinstance(section, dict):
        raise ConfigError(f"Invalid {where}: it must be a table (got {type(section).__name__}).")
    found: list[str] = []
    config: AgentGuardConfig | None = None
    try:
        config = AgentGuardConfig.model_validate(section)
    except ValidationError as exc:
        # policy and chain are checked below, the way wrap() will read them.
        mine = [
            e
            for e in exc.errors(include_url=False)
            if e["loc"][:1] not in (("policy",), ("chain",), ("store",))
        ]
        found += problems(mine, AgentGuardConfig)
    found += policy_problems(section.get("policy"))
    if "store" in section and (wrong := store_problem(section["store"])) is not None:
        found.append(f"store {wrong}")  # never quoted: the URL may hold a password
    found += _chain_problems(section.get("chain"), section.get("providers"))
    if found or config is None:
        raise ConfigError(describe_problems(where, found))
    return config


def _chain_problems(chain: Any, providers: Any) -> list[str]:
    if chain is None:
        return []
    if not isinstance(chain, list):
        return [
            'chain must be a list of routes such as ["anthropic:claude-opus-4-7", '
            f'"anthropic:claude-sonnet-4-6"] (got {type(chain).__name__})'
        ]
    usable: dict[str, ProviderSpec] = {}
    broken: set[str] = set()  # providers already reported above
    for name, spec in (providers if isinstance(providers, dict) else {}).items():
        try:
            usable[name] = ProviderSpec.model_validate(spec)
        except ValidationError:
            broken.add(name)
    found: list[str] = []
    for i, entry in enumerate(chain):
        named = entry.partition(":")[0] if isinstance(entry, str) else None
        if isinstance(entry, dict):
            named = entry.get("provider")
        if named in broken:
            continue
        try:
            parse_route(entry, usable)
        except ConfigError as exc:
            found.append(f"chain[{i}]: {str(exc).rstrip('.')}")
    if not found and not broken:
        try:
            parse_chain(chain, usable)
        except ConfigError as exc:
            found.append(f"chain: {str(exc).rstrip('.')}")
    return found
