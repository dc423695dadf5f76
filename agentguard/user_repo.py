"""The user's own git repository as they see it: branch, HEAD and whether it has changes.

Read with GitPython at each checkpoint (in the guard's snapshot thread, never on the caller's
path) and again before `restore` / `resume` rewrite the tree, so they can say when the project
has moved to another branch or commit since the checkpoint and ask first.

Only reads: the git calls run with GIT_OPTIONAL_LOCKS=0, so `git status` never takes
index.lock or rewrites the user's index. The user's own git config applies (it is their
repository as they see it). GitPython is imported on first use: without it, or without a git
executable (GitPython raises ImportError then), nothing is recorded and nothing fails. The
shadow store never goes through here; its hermetic plumbing is agentguard.shadow.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentguard.errors import AgentGuardError

if TYPE_CHECKING:
    from agentguard.store import Store

log = logging.getLogger("agentguard")

SHORT = 7  # as `git log --oneline` prints a commit
COLUMNS = ("git_branch", "git_head", "git_dirty")  # on the snapshots row (migration m006)


class BranchMoved(AgentGuardError):
    """The project's branch or HEAD changed since the checkpoint a rewind would bring back."""


@dataclass(frozen=True)
class GitState:
    """Where the user's repository was: `branch` None is a detached HEAD, `head` None a branch
    with no commits yet; `dirty` is `git status --porcelain` (untracked files count) of the
    project folder not being empty."""

    branch: str | None
    head: str | None
    dirty: bool

    def describe(self, *, branch_word: bool = True) -> str:
        """'branch main at 3f2a1b9' (or 'feature/login at 88da3ac'), 'a detached HEAD at …'."""
        at = f"at {self.head[:SHORT]}" if self.head else "with no commits yet"
        if self.branch is None:
            return f"a detached HEAD {at}"
        return f"{'branch ' if branch_word else ''}{self.branch} {at}"

    def as_json(self) -> dict[str, Any]:
        return {"branch": self.branch, "head": self.head, "dirty": self.dirty}

    def columns(self) -> dict[str, Any]:
        return {"git_branch": self.branch, "git_head": self.head, "git_dirty": int(self.dirty)}


def columns(state: GitState | None) -> dict[str, Any]:
    """The snapshots row's git columns; all null when nothing was recorded."""
    return state.columns() if state is not None else dict.fromkeys(COLUMNS)


def from_row(row: dict[str, Any] | None) -> GitState | None:
    """The state a snapshots row recorded (`git_dirty` is set whenever anything was)."""
    if row is None or row.get("git_dirty") is None:
        return None
    return GitState(row["git_branch"], row["git_head"], bool(row["git_dirty"]))


def recorded(store: Store, commit: str | None) -> GitState | None:
    """The user's git state when the shadow snapshot `commit` was taken, if it was recorded."""
    if not commit:
        return None
    rows = store.query(
        "select git_branch, git_head, git_dirty from snapshots where commit_sha = ?", [commit]
    )
    return from_row(rows[0] if rows else None)


def read_state(
    project: str | os.PathLike[str], *, snapshot_tree: str | None = None, complete: bool = True
) -> GitState | None:
    """The repository holding `project` now; None when it is not in one, git or GitPython is
    missing, or git fails (recording the state must never fail a step). One reading; a guard
    that reads at every checkpoint keeps a `StateReader`."""
    reader = StateReader(project)
    try:
        return reader.read(snapshot_tree=snapshot_tree, complete=complete)
    finally:
        reader.close()


class StateReader:
    """Reads the state of the repository holding `project`, again and again: GitPython's Repo
    stays open between readings, so its `git cat-file` processes do too and a reading spawns
    no process (13 ms → well under 1 ms a checkpoint). Used from one thread at a time."""

    def __init__(self, project: str | os.PathLike[str]) -> None:
        self.folder = Path(project)
        self._repo: Any = None

    def read(self, *, snapshot_tree: str | None = None, complete: bool = True) -> GitState | None:
        """With `snapshot_tree` (the tree a shadow snapshot of the folder just wrote), "dirty"
        costs no `git status`: git names trees by content, so the folder is clean exactly when
        that tree is HEAD's tree of the folder. Only when they differ and the snapshot left
        files out (`complete=False`: a secret or large file, which HEAD may track) is `git
        status` asked. A checkpoint's state is read this way on the snapshot thread; a `git
        status` of 50,000 files costs as much as the snapshot itself."""
        repo = self._open()
        if repo is None:
            return None
        try:
            if repo.bare or repo.working_tree_dir is None:
                return None
            detached = repo.head.is_detached
            branch = None if detached else repo.head.reference.name
            head = repo.head.commit.hexsha if repo.head.is_valid() else None
            inside = self.folder.resolve().relative_to(Path(repo.working_tree_dir).resolve())
            if snapshot_tree is not None:
                same = _head_tree(repo, inside) == snapshot_tree
                if same or complete:
                    return GitState(branch=branch, head=head, dirty=not same)
            # One `git status` of the project folder (is_dirty would run three git commands and
            # list every untracked file); untracked files count, ignored ones do not.
            status = repo.git.status("--porcelain", "--no-renames", "--", inside.as_posix())
            return GitState(branch=branch, head=head, dirty=bool(status.strip()))
        except Exception as exc:  # git failed or the repository is odd: record nothing
            log.debug("agentguard: could not read the git state of %s: %s", self.folder, exc)
            self.close()  # the next reading starts afresh
            return None

    def _open(self) -> Any:
        if self._repo is not None:
            return self._repo
        try:
            from git import Repo
            from git.exc import InvalidGitRepositoryError, NoSuchPathError
        except ImportError:  # no GitPython, or GitPython found no git executable
            return None
        try:
            repo = Repo(self.folder, search_parent_directories=True)
        except (InvalidGitRepositoryError, NoSuchPathError):
            return None  # not (yet) a repository: asked again next time
        except Exception as exc:
            log.debug("agentguard: could not open the git repository of %s: %s", self.folder, exc)
            return None
        # never take index.lock, never rewrite the user's index (git status would refresh it)
        repo.git.update_environment(GIT_OPTIONAL_LOCKS="0")
        self._repo = repo
        return repo

    def close(self) -> None:
        """Ends GitPython's git processes."""
        repo, self._repo = self._repo, None
        if repo is not None:
            repo.close()


EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # git's name for a tree with nothing in it


def _head_tree(repo: Any, inside: Path) -> str:
    """The tree HEAD holds for the folder `inside` the repository (the empty tree if none)."""
    if not repo.head.is_valid():
        return EMPTY_TREE
    tree = repo.head.commit.tree
    if inside.parts:
        try:
            tree = tree / inside.as_posix()
        except KeyError:  # the folder is not in HEAD at all
            return EMPTY_TREE
    return str(tree.hexsha)


def moved(then: GitState | None, now: GitState | None) -> bool:
    """The branch or HEAD changed; unknown on either side is not a move (nothing to compare)."""
    if then is None or now is None:
        return False
    return (then.branch, then.head) != (now.branch, now.head)


def moved_sentence(then: GitState, now: GitState, what: str = "the checkpoint") -> str:
    """'the project is now on branch main at 3f2a1b9, the checkpoint was taken on
    feature/login at 88da3ac'."""
    return (
        f"the project is now on {now.describe()}, "
        f"{what} was taken on {then.describe(branch_word=False)}"
    )


def moved_since(
    store: Store, project: str | os.PathLike[str], commit: str, *, what: str = "the checkpoint"
) -> str | None:
    """The sentence saying how the project moved since snapshot `commit`, or None if it did not
    (or either state is unknown)."""
    then = recorded(store, commit)
    if then is None:
        return None
    now = read_state(project)
    if now is None or not moved(then, now):
        return None
    return moved_sentence(then, now, what)
