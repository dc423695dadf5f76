"""Which store agentguard opens — one rule for the CLI, `wrap()`, the proxy and the status line.

    explicit (--store, wrap(store_url=), ProxyOptions.build(store=))
      > $AGENTGUARD_STORE
      > `store` in the config file (agentguard.toml, or [tool.agentguard] in pyproject.toml)

The first level that is set decides, as with `snapshot_remote`; a postgresql:// URL there means
the shared PostgreSQL store, `"sqlite"` or an empty value the local SQLite file under
AGENTGUARD_HOME. Anything else is refused in one sentence rather than ignored: a mistyped URL
must not send a team's runs into one machine's private file without a word. A value is never
quoted in a message, since a URL may carry a password.

Kept light (no pydantic, no sqlite_utils): `agentguard statusline` imports it on every prompt
refresh of Claude Code.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentguard.errors import ConfigError, StoreError

STORE_ENV = "AGENTGUARD_STORE"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
LOCAL = "sqlite"  # the word that names the local SQLite file at any level
CONFIG_FILE = "agentguard.toml"  # agentguard.config.CONFIG_FILE (not imported: pydantic)

# Any way TOML can write a `store` key (bare, quoted, dotted, in an inline table) matches;
# what else matches only costs a parse.
_STORE_KEY = re.compile(rb"\bstore[\"']?\s*=")

# A configured value, or a function that finds it (the config file is read only when neither
# an explicit value nor $AGENTGUARD_STORE decides), with where it came from for messages.
Configured = tuple[Any, str] | None


def is_postgres(location: str | None) -> bool:
    return bool(location) and str(location).startswith(POSTGRES_SCHEMES)


def store_problem(value: object) -> str | None:
    """What is wrong with `value` as a store, as `must be …` (never quoting it); None if fine."""
    if not isinstance(value, str):
        return f'must be a postgresql:// URL or "{LOCAL}" (got {type(value).__name__})'
    text = value.strip()
    if not text or text.lower() == LOCAL or is_postgres(text):
        return None
    given = f"a {text.split('://', 1)[0]}:// URL" if "://" in text else "a value that is no URL"
    return (
        f'must be a postgresql:// URL, or "{LOCAL}" (or empty) for the local SQLite file, '
        f"not {given}"
    )


def store_location(value: object, given_as: str) -> str:
    """`value` as open_store takes it: "" for the local SQLite file, else the PostgreSQL URL.
    A bad value is one StoreError naming `given_as` (where it came from), not the value."""
    problem = store_problem(value)
    if problem is not None:
        fix = "fix or unset it" if given_as == f"${STORE_ENV}" else "fix it"
        raise StoreError(f"{given_as} {problem}; {fix}.")
    text = str(value).strip()
    return "" if text.lower() == LOCAL else text


def choose_store(
    explicit: str | None,
    configured: Configured | Callable[[], Configured] = None,
    *,
    given_as: str = "--store",
) -> str:
    """The store to open: `explicit` (named `given_as` in messages), else $AGENTGUARD_STORE,
    else `configured` — (value, where) or a function returning it, called only when needed.
    Returns "" for the local SQLite file, else the postgresql:// URL."""
    if explicit is not None:
        return store_location(explicit, given_as)
    env = os.environ.get(STORE_ENV)
    if env is not None:
        return store_location(env, f"${STORE_ENV}")
    found = configured() if callable(configured) else configured
    if found is None or found[0] is None:
        return ""
    value, where = found
    return store_location(value, f"store in {where}")


def configured_store(folder: str | os.PathLike[str] | None = None) -> Configured:
    """The `store` key of the config file of `folder` (default: the current folder) and the
    file's name, read without validating the rest of the file (a command that only reads runs
    need not refuse over a bad `chain`); None when no config file sets it. The same file
    load_config picks: agentguard.toml, else a pyproject.toml with [tool.agentguard]."""
    base = Path(folder) if folder is not None else Path.cwd()
    for name, in_pyproject in ((CONFIG_FILE, False), ("pyproject.toml", True)):
        file = base / name
        if not file.is_file():
            continue
        try:
            raw = file.read_bytes()
        except OSError as exc:
            raise ConfigError(f"Cannot read {file} ({exc.strerror}).") from None
        if not _STORE_KEY.search(raw):  # the usual case, without parsing (or importing) TOML
            return None
        import tomllib

        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:  # load_config's words
            raise ConfigError(f"{file} is not valid TOML ({exc}); fix the file.") from None
        if in_pyproject:
            tool = data.get("tool")
            section = tool.get("agentguard") if isinstance(tool, dict) else None
            if not isinstance(section, dict):
                return None
            where = f"{file} [tool.agentguard]"
        else:
            section, where = data, str(file)
        return (section["store"], where) if "store" in section else None
    return None
