"""What every benchmark shares: timing, the machine, generated repos, the results table."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
GIT_ENV = {
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}


@dataclass
class Figure:
    """One measured number, beside its target (benchmarks/README.md) and a baseline (plain git
    doing the same work, for the checkpoint benchmark)."""

    benchmark: str
    case: str
    metric: str
    value: float
    unit: str
    target: str = ""
    meets: bool | None = None
    baseline: float | None = None
    note: str = ""


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)

    def add(self, *args: Any, **kwargs: Any) -> Figure:
        figure = Figure(*args, **kwargs)
        self.figures.append(figure)
        return figure

    def table(self) -> str:
        rows = [("benchmark", "case", "metric", "value", "baseline", "target", "ok", "note")]
        for f in self.figures:
            rows.append(
                (
                    f.benchmark,
                    f.case,
                    f.metric,
                    number(f.value, f.unit),
                    "" if f.baseline is None else number(f.baseline, f.unit),
                    f.target,
                    {True: "yes", False: "NO", None: ""}[f.meets],
                    f.note,
                )
            )
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def save(self, name: str) -> Path:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{name}.json"
        path.write_text(
            json.dumps(
                {"machine": machine(), "figures": [asdict(f) for f in self.figures]}, indent=2
            )
            + "\n"
        )
        return path


def number(value: float, unit: str) -> str:
    """A figure as printed: 3 significant digits, ∞ for a step that never finished."""
    if value == float("inf"):
        shown = "∞"
    elif abs(value) >= 1000:
        shown = f"{value:,.0f}"
    else:
        shown = f"{value:.3g}"
    return f"{shown} {unit}".strip()


def machine() -> dict[str, Any]:
    """Enough about the machine to compare runs honestly."""
    git = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip()
    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
    ).stdout.strip()
    edited = subprocess.run(
        ["git", "status", "--porcelain", "--", "agentguard"],
        cwd=root,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    return {
        "commit": head or "?",  # the agentguard measured: this commit, plus edited files
        "edited": len(edited),  # files under agentguard/ differing from that commit
        "when": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "git": git,
    }


def timed(fn: Callable[[], Any], repeat: int = 5) -> float:
    """Median wall time of `fn` in milliseconds."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | GIT_ENV
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=base | (env or {}),
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def repo_file(root: Path, i: int) -> Path:
    """The path of generated file number `i` in a `make_repo` tree."""
    return root / f"pkg{i % 50:02d}" / f"mod{i % 7}" / f"file{i:05d}.py"


def make_repo(root: Path, files: int, *, size: int = 600) -> Path:
    """A committed git repo of `files` small source files in nested folders."""
    root.mkdir(parents=True)
    body = ("x = 1  # filler line\n" * (size // 21 + 1))[:size]
    for i in range(files):
        path = repo_file(root, i)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# {i}\n{body}")
    (root / ".gitignore").write_text("*.log\n__pycache__/\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "generated")
    return root


def agent_step_edit(root: Path, step: int, files: int) -> None:
    """What one agent step does to the tree: modify 10 files, create 1, delete 1."""
    for k in range(10):
        path = repo_file(root, (step * 37 + k * 101) % files)
        path.write_text(path.read_text() + f"# step {step} edit {k}\n")
    (root / "pkg00" / f"new_step{step}.py").write_text(f"created = {step}\n")
    old = root / "pkg00" / f"new_step{step - 1}.py"
    if old.exists():
        old.unlink()


def changed_paths(root: Path) -> list[str]:
    """Paths `git status` reports as changed, added or deleted against the repo's HEAD."""
    out = git(root, "status", "--porcelain", "--untracked-files=all")
    return [line.split(None, 1)[1] for line in out.splitlines() if line.strip()]
