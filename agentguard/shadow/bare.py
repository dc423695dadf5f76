"""git on a shadow store's bare repository alone: no work tree, so it can never touch the
project. gc (retention) and moving a run's snapshots to another store (restoring) use it."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from agentguard.errors import SnapshotError
from agentguard.shadow.gitenv import failure, git_env
from agentguard.shadow.private_index import index_in_use


class BareGit:
    """git on `store_dir`/repo.git in the snapshots' scrubbed environment, without a work tree
    (the store's own private index stays set: repack and prune keep what it references)."""

    def __init__(self, store_dir: Path, *, purpose: str) -> None:
        exe = shutil.which("git")
        if exe is None:
            raise SnapshotError(f"git is not installed or not on PATH; install git to {purpose}.")
        self.exe = exe
        self.store_dir = store_dir
        self.git_dir = store_dir / "repo.git"
        env = git_env(self.git_dir, store_dir, store_dir / "index")
        del env["GIT_WORK_TREE"]  # never point git at the project
        self.env = env

    def run(self, args: Sequence[str], *, stdin: str | bytes | None = None) -> bytes:
        data = stdin.encode() if isinstance(stdin, str) else stdin
        try:
            result = subprocess.run(
                [self.exe, *args],
                input=data,
                stdin=None if data is not None else subprocess.DEVNULL,
                capture_output=True,
                cwd=self.store_dir,
                # the index the store records as in use: gc keeps what it references
                env={**self.env, "GIT_INDEX_FILE": str(index_in_use(self.store_dir))},
                check=False,
            )
        except OSError as exc:
            raise SnapshotError(f"git could not be started ({exc.strerror}).") from None
        if result.returncode != 0:
            command = next((a for a in args if not a.startswith("-") and "=" not in a), "git")
            raise SnapshotError(failure(command, result.stderr, self.store_dir))
        return result.stdout

    def existing_commits(self, commits: Sequence[str]) -> list[str]:
        """Which of `commits` this store has (as commits)."""
        if not commits:
            return []
        out = self.run(
            ["cat-file", "--batch-check=%(objectname) %(objecttype)"],
            stdin="".join(f"{c}\n" for c in commits),
        )
        return [
            parts[0]
            for parts in (line.split() for line in out.decode().splitlines())
            if len(parts) == 2 and parts[1] == "commit"
        ]
