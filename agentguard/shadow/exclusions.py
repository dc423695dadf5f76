"""Files the shadow store never holds besides what `.gitignore` says.

- The user's own global ignore rules (`core.excludesFile`, else the XDG default
  `$XDG_CONFIG_HOME/git/ignore` / `~/.config/git/ignore`): a file `git status` calls ignored is
  not snapshotted either, although the store otherwise never reads the user's git config.
- Files that look like secrets (`SecretFiles`), whatever the ignore rules say: never stored,
  reported as skipped, and never deleted or overwritten by a restore.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from agentguard.errors import ConfigError

DEFAULT_SECRET_FILES = (
    ".env",
    ".env.*",
    "*.pem",
    "*.key",
    "id_rsa*",
    ".npmrc",
    ".pypirc",
    ".netrc",
)


def secret_file_patterns(entries: Iterable[str] | None) -> tuple[str, ...]:
    """The built-in patterns changed by `entries`: "PATTERN" adds one, "!PATTERN" turns one off."""
    patterns = list(DEFAULT_SECRET_FILES)
    for entry in entries or ():
        if not isinstance(entry, str) or not entry.strip("!").strip():
            raise ConfigError(
                f"secret_files entry {entry!r} is not a file pattern; use e.g. '*.p12' to add "
                "one or '!.env.*' to turn a built-in one off."
            )
        name = entry.strip()
        if name.startswith("!"):
            patterns = [p for p in patterns if p != name[1:]]
        elif name not in patterns:
            patterns.append(name)
    return tuple(patterns)


class SecretFiles:
    """Which project paths are secret files.

    A pattern without "/" matches the name of a file or of any folder on its path (`.env`
    also covers `.env/…`); one with "/" matches the path from the project root. `*` and `?`
    never match "/", `**` does; matching is case-sensitive, as git's is.
    """

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(patterns)
        self._names: list[tuple[str, re.Pattern[bytes]]] = []
        self._paths: list[tuple[str, re.Pattern[bytes]]] = []
        for pattern in self.patterns:
            body = pattern.rstrip("/")
            if "/" in body:
                self._paths.append((pattern, _compile(body.lstrip("/"))))
            elif body:
                self._names.append((pattern, _compile(body)))

    def match(self, path: bytes) -> str | None:
        """The pattern `path` (posix, relative to the project) matches, or None."""
        parts = path.split(b"/")
        for part in parts:
            for pattern, regex in self._names:
                if regex.fullmatch(part):
                    return pattern
        if self._paths:
            for end in range(1, len(parts) + 1):
                prefix = b"/".join(parts[:end])
                for pattern, regex in self._paths:
                    if regex.fullmatch(prefix):
                        return pattern
        return None

    def matching(self, paths: Iterable[bytes]) -> set[bytes]:
        return {p for p in paths if self.match(p) is not None}

    def fingerprint(self) -> bytes:
        """What the store records to notice that the patterns changed since its last snapshot."""
        return "".join(f"{p}\n" for p in self.patterns).encode()


def reason(pattern: str) -> str:
    """The SkippedPath reason of a secret file."""
    return f"secret file (matches {pattern})"


def _compile(glob: str) -> re.Pattern[bytes]:
    out: list[str] = []
    i = 0
    while i < len(glob):
        c = glob[i]
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and "]" in glob[i + 2 :]:
            end = glob.index("]", i + 2)
            inner = glob[i + 1 : end]
            if inner.startswith("!"):
                inner = "^" + inner[1:]
            out.append("[" + inner.replace("\\", "\\\\") + "]")
            i = end + 1
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile(os.fsencode("".join(out)), re.DOTALL)


def global_excludes_file(git: str, cwd: Path) -> Path | None:
    """The global ignore file `git status` uses for this user, or None.

    Asks git itself (so `include`s, `~` and GIT_CONFIG_GLOBAL work as they do for the user),
    from `cwd`, a folder that is in no repository, with only the user's config variables.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update({k: v for k, v in os.environ.items() if k.startswith("GIT_CONFIG")})
    env["GIT_CEILING_DIRECTORIES"] = str(cwd.parent)
    try:
        result = subprocess.run(
            [git, "config", "--includes", "--path", "--get", "core.excludesFile"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            cwd=cwd,
            env=env,
            check=False,
        )
    except OSError:
        return None
    configured = os.fsdecode(result.stdout.rstrip(b"\n")) if result.returncode == 0 else ""
    if configured:
        return Path(configured) if os.path.isabs(configured) else None
    xdg = os.environ.get("XDG_CONFIG_HOME")
    if xdg:
        return Path(xdg) / "git" / "ignore"
    home = os.environ.get("HOME")
    return Path(home) / ".config" / "git" / "ignore" if home else None
