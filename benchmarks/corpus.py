"""A coding agent's tool results made of real text: this repository's files and real commands.

Benchmarks that store conversations must not feed the store one line repeated (zlib would make
any store look small and fast). The tool results here are what an agent working on this
repository would read, produced at run time from the checkout:

- `read_file`: a tracked source or text file, numbered as `cat -n` does, its first 120 lines;
- `bash`: the real output of `git log --stat`, `git show --stat`, `git diff` between
  commits, `ls -la` of the project's folders and `git grep -n`, each cut at 120 lines.

Outputs are taken in a fixed order and reused in turn once all have been used (a step's
tool-call id differs, so no two stored messages are the same).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINES = 120
TEXT = (".py", ".md", ".toml", ".cfg", ".txt", "Makefile", ".gitignore")
WORDS = (
    "def step",
    "store.write",
    "Served",
    "breaker",
    "snapshot",
    "class ",
    "import json",
    "monotonic",
    "RunQueued",
    "substitut",
    "checkpoint",
    "raise ",
)


@dataclass(frozen=True)
class ToolOutput:
    name: str  # the tool: read_file or bash
    input: dict[str, str]
    text: str


def _cut(text: str) -> str:
    lines = text.splitlines()
    if len(lines) <= LINES:
        return text
    return "\n".join(lines[:LINES]) + f"\n… ({len(lines) - LINES} more lines)"


def _run(*args: str) -> str:
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout


@cache
def outputs() -> tuple[ToolOutput, ...]:
    """Every tool output of the corpus, interleaved by kind (files, then commands, in turn)."""
    files = []
    for path in _run("git", "ls-files").splitlines():
        full = ROOT / path
        if not path.endswith(TEXT) or path.startswith("benchmarks/results") or not full.is_file():
            continue
        numbered = "\n".join(
            f"{n:6d}\t{line}"
            for n, line in enumerate(full.read_text(errors="replace").splitlines(), 1)
        )
        files.append(ToolOutput("read_file", {"file_path": path}, _cut(numbered)))
    commits = len(_run("git", "rev-list", "HEAD").splitlines())
    commands: list[list[str]] = []
    for k in range(0, min(commits - 1, 40), 2):
        commands.append(["git", "log", "--stat", "-n", "3", f"--skip={k}"])
        commands.append(["git", "show", "--stat", "--format=fuller", f"HEAD~{k}"])
        commands.append(["git", "diff", f"HEAD~{k + 1}", f"HEAD~{k}"])
    folders = sorted({str(Path(p).parent) for p in _run("git", "ls-files").splitlines()})
    commands += [["ls", "-la", folder] for folder in folders]
    commands += [["git", "grep", "-n", word] for word in WORDS]
    shell = [
        ToolOutput("bash", {"command": " ".join(cmd)}, _cut(_run(*cmd)))
        for cmd in commands
        if cmd[0] != "git" or cmd[1] != "grep" or _grep_finds(cmd)
    ]
    mixed: list[ToolOutput] = []
    for i in range(max(len(files), len(shell))):
        mixed += [kind[i] for kind in (files, shell) if i < len(kind)]
    return tuple(mixed)


def _grep_finds(cmd: list[str]) -> bool:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True).returncode == 0


def tool_output(step: int) -> ToolOutput:
    corpus = outputs()
    return corpus[(step - 1) % len(corpus)]
