"""Working-tree snapshots in a shadow git store, so a step's tree can be verified and restored.

The store is a bare repository outside the project with its own index file, kept between
snapshots so that one costs O(changed files). git always runs with GIT_DIR, GIT_WORK_TREE and
GIT_INDEX_FILE pointing at the store and the project, never at the user's own `.git`, and with
the caller's GIT_* variables, the user's global and system config, hooks, attribute filters and
line-ending conversions all switched off, so a snapshot is the project's bytes as they are.

    <store_dir>/repo.git     the bare shadow repository (refs/agentguard/head = latest snapshot)
    <store_dir>/index        its private index
    <store_dir>/lock         flock taken around every index-mutating operation
    <store_dir>/preserved/   files a restore copied aside before overwriting them
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agentguard.errors import ProjectError, SnapshotError

try:  # pragma: no cover - Windows has no fcntl; there only the in-process lock applies
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "HEAD_REF",
    "Change",
    "RestoreResult",
    "ShadowRepo",
    "SkippedPath",
    "Snapshot",
]

DEFAULT_MAX_FILE_BYTES = 10 * 1024 * 1024
HEAD_REF = "refs/agentguard/head"

TOO_LARGE = "too_large"
NESTED_REPO = "nested_repo"

_REPO, _MISSING, _OTHER = "repo", "missing", "other"

_IDENTITY = {
    "GIT_AUTHOR_NAME": "agentguard",
    "GIT_AUTHOR_EMAIL": "agentguard@localhost",
    "GIT_COMMITTER_NAME": "agentguard",
    "GIT_COMMITTER_EMAIL": "agentguard@localhost",
}

# Appended to the shadow repo's own config when it is created. The user's global and system
# config are never read (GIT_CONFIG_GLOBAL=/dev/null, GIT_CONFIG_NOSYSTEM=1); these make the
# repo's own behaviour explicit: no hooks, no conversions, no signing, no global excludes.
_CONFIG = f"""\
[core]
\thooksPath = {os.devnull}
\tautocrlf = false
\tsafecrlf = false
\tquotepath = false
\texcludesFile = {os.devnull}
\tattributesFile = {os.devnull}
\tfsmonitor = false
\tlogAllRefUpdates = false
[commit]
\tgpgSign = false
[agentguard]
\tlayout = 1
"""

# $GIT_DIR/info/attributes outranks the project's .gitattributes: store bytes exactly as they
# are (no eol conversion, no clean/smudge filters such as LFS, no ident, no re-encoding).
_ATTRIBUTES = "* -text -filter -ident -working-tree-encoding\n"

_ZERO_OID = "0" * 40
_REFRESH_EVERY_S = 60.0
# Ref names simple enough to write as files without git's full check-ref-format rules.
_PLAIN_REF = re.compile(
    r"refs/(?:[A-Za-z0-9_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*/)+"
    r"[A-Za-z0-9_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*"
)


@dataclass(frozen=True)
class SkippedPath:
    """A path the snapshot deliberately left out, so callers can say so instead of hiding it."""

    path: str  # posix path relative to the project
    reason: str  # "too_large" | "nested_repo"
    size: int | None


@dataclass(frozen=True)
class Snapshot:
    """One commit in the shadow store and what it cost."""

    commit: str
    tree: str
    parent: str | None
    changed: int  # paths added/updated/removed in the private index by this snapshot
    skipped: tuple[SkippedPath, ...]
    duration_ms: float


@dataclass(frozen=True)
class Change:
    """One path that differs between two snapshots (from `a` to `b`)."""

    status: str  # "A" added, "M" modified, "D" deleted, "T" type change
    path: str


@dataclass(frozen=True)
class RestoreResult:
    """What a restore did, including how to undo it: `restore(result.backup.commit)`."""

    target: str
    backup: Snapshot
    changes: tuple[Change, ...]
    preserved: tuple[str, ...]  # files copied to <store_dir>/preserved/... before being replaced


@dataclass(frozen=True)
class _RawChange:
    old_mode: str
    old_oid: str
    status: str
    path: bytes


class ShadowRepo:
    """Snapshots of one project folder, kept in a store outside it.

    Safe to share between threads; two processes using the same store serialise on a lock file.
    """

    def __init__(
        self,
        project: str | os.PathLike[str],
        store_dir: str | os.PathLike[str],
        *,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    ) -> None:
        given = Path(project).expanduser()
        if not given.exists():
            raise ProjectError(
                f"Project folder {given} does not exist; "
                "pass the folder your agent edits (project=...)."
            )
        if not given.is_dir():
            raise ProjectError(
                f"Project path {given} is not a folder; "
                "pass the folder your agent edits (project=...)."
            )
        self._project = given.resolve()
        self._store = Path(store_dir).expanduser().resolve()
        if self._store.is_relative_to(self._project):
            raise SnapshotError(
                f"Shadow store {self._store} is inside the project {self._project}; "
                "put it outside the project, e.g. under $AGENTGUARD_HOME/shadow/."
            )
        git = shutil.which("git")
        if git is None:
            raise SnapshotError(
                "git is not installed or not on PATH; install git so agentguard can snapshot "
                "the project."
            )
        self._git = git
        self._max_file_bytes = max_file_bytes
        self._git_dir = self._store / "repo.git"
        self._index = self._store / "index"
        self._root = os.fsencode(self._project)
        self._env = _git_env(self._git_dir, self._project, self._index)
        self._synced_exclude: bytes | None = None
        self._last: tuple[str, str] | None = None  # (commit, tree) of our latest snapshot
        self._refresh_due = time.monotonic() + _REFRESH_EVERY_S
        self._thread_lock = threading.Lock()
        try:
            self._store.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise SnapshotError(
                f"Cannot create the shadow store {self._store} ({exc.strerror}); "
                "point AGENTGUARD_HOME at a writable folder."
            ) from None
        with self._locked():
            self._ensure_store()
        # Loose ref files are only ours to write while the store uses git's files backend.
        self._loose_refs = not (self._git_dir / "reftable").exists()

    # -- public API -------------------------------------------------------------------------

    @property
    def project(self) -> Path:
        return self._project

    @property
    def store_dir(self) -> Path:
        return self._store

    def snapshot(self, message: str = "agentguard snapshot", *, ref: str | None = None) -> Snapshot:
        """Commit the working tree as it is now; `ref` pins the commit against pruning."""
        if ref is not None and (not ref.startswith("refs/") or ref == HEAD_REF):
            raise SnapshotError(
                f"Snapshot ref {ref!r} is not allowed; pass a name under refs/, "
                "e.g. refs/agentguard/runs/<run>/steps/<n>."
            )
        with self._locked():
            return self._snapshot(message, ref)

    def diff(self, a: str, b: str | None = None) -> list[Change]:
        """Paths that differ from snapshot `a` to `b` (default: the working tree, snapshotted)."""
        old = self._resolve(a)
        if b is None:
            with self._locked():
                new = self._snapshot("agentguard diff", None).commit
        else:
            new = self._resolve(b)
        return [Change(c.status, os.fsdecode(c.path)) for c in self._diff_raw(old, new)]

    def matches(self, commit: str) -> tuple[bool, Snapshot]:
        """Whether the working tree still equals `commit`; the snapshot taken keeps any drift."""
        target = self._resolve(commit)
        tree = self._run(["rev-parse", "--verify", "--quiet", f"{target}^{{tree}}"])
        with self._locked():
            snap = self._snapshot("agentguard drift check", None)
        return snap.tree == tree.stdout.decode().strip(), snap

    def restore(self, commit: str) -> RestoreResult:
        """Make the working tree equal `commit`, after snapshotting it so this can be undone.

        Only differing paths are rewritten; files created since are deleted (and folders they
        leave empty); ignored files, nested repositories and skipped files are left alone, and
        a file the store does not hold is copied to <store_dir>/preserved/ before git replaces it.
        """
        target = self._resolve(commit)
        with self._locked():
            backup = self._snapshot(f"agentguard backup before restoring {target[:12]}", None)
            raw = self._diff_raw(backup.commit, target)
            keep, preserved = self._protect(raw)
            changes = [c for c in raw if c.path not in keep]
            if changes:
                tree = self._tree_keeping(target, [c for c in raw if c.path in keep])
                self._clear_stale_locks()
                self._last = None  # the index now holds the target, not the head's tree
                self._run(["read-tree", "-u", "--reset", tree])
        return RestoreResult(
            target=target,
            backup=backup,
            changes=tuple(Change(c.status, os.fsdecode(c.path)) for c in changes),
            preserved=tuple(preserved),
        )

    def has_commit(self, commit: str) -> bool:
        return self._lookup(commit) is not None

    def resolve_ref(self, ref: str) -> str | None:
        """The commit a shadow ref points at (e.g. a step's checkpoint), or None."""
        return self._lookup(ref) if ref.startswith("refs/") else None

    def files(self, commit: str) -> list[str]:
        """Paths held by a snapshot (posix, relative to the project)."""
        sha = self._resolve(commit)
        out = self._run(["ls-tree", "-r", "-z", "--name-only", "--full-tree", sha]).stdout
        return [os.fsdecode(p) for p in out.split(b"\0") if p]

    def read_file(self, commit: str, path: str) -> bytes:
        """A file's bytes as a snapshot holds them (a symlink gives its target)."""
        sha = self._resolve(commit)
        result = self._run(["cat-file", "blob", f"{sha}:{path}"], check=False)
        if result.returncode != 0:
            raise SnapshotError(
                f"{path} is not a file in snapshot {commit}; list its paths with files(commit)."
            )
        return result.stdout

    # -- snapshot ---------------------------------------------------------------------------

    def _snapshot(self, message: str, ref: str | None) -> Snapshot:
        start = time.perf_counter()
        if not self._project.is_dir():
            raise ProjectError(
                f"Project folder {self._project} no longer exists; "
                "recreate it or start a new run on the folder your agent edits."
            )
        rules_changed = self._sync_exclude()
        self._clear_stale_locks()

        try:
            changed, untracked = self._scan()
        except SnapshotError:
            if not self._index.exists():
                raise
            # A damaged private index only costs one full snapshot: start it afresh.
            self._index.unlink()
            self._last = None
            changed, untracked = self._scan()
        candidates: dict[bytes, bool] = {}  # path -> already in the private index
        for path in untracked.split(b"\0"):
            if path:
                candidates[path] = False
        for path in changed.split(b"\0"):
            if path:
                candidates[path] = True

        # Paths already in the index come first, so that a file removed to make way for a
        # folder (or the reverse) leaves the index before what replaces it is added.
        candidates = dict(sorted(candidates.items(), key=lambda item: not item[1]))
        skipped: list[SkippedPath] = []
        update: list[bytes] = []
        drop: dict[bytes, None] = {}  # index entries to remove whatever the working tree holds
        folders: dict[bytes, str] = {}  # cache for _obstacle
        nested_roots: dict[bytes, None] = {}
        for path, tracked in candidates.items():
            if path.endswith(b"/"):  # ls-files shows an untracked nested repository as "dir/"
                skipped.append(SkippedPath(os.fsdecode(path[:-1]), NESTED_REPO, None))
                continue
            obstacle = self._obstacle(path, folders)
            if obstacle is not None:
                kind, folder = obstacle
                if kind == _REPO:
                    nested_roots[folder] = None
                elif tracked:  # its folder is gone or now a file or symlink: git can't stat it
                    drop[path] = None
                continue
            if path == b".gitignore" or path.endswith(b"/.gitignore"):
                rules_changed = True
            try:
                st = os.lstat(self._root + b"/" + path)
            except OSError:
                if tracked:
                    update.append(path)  # deleted: update-index --remove drops it
                continue
            if stat.S_ISREG(st.st_mode) and st.st_size > self._max_file_bytes:
                skipped.append(SkippedPath(os.fsdecode(path), TOO_LARGE, st.st_size))
                if tracked:
                    drop[path] = None  # never carry a stale version of a now-skipped file
                continue
            update.append(path)

        for root in nested_roots:
            # A folder we captured earlier became a repository: stop capturing anything in it.
            skipped.append(SkippedPath(os.fsdecode(root), NESTED_REPO, None))
            inside = self._run(["ls-files", "-z", "--cached", "--", os.fsdecode(root) + "/"])
            drop.update(dict.fromkeys(p for p in inside.stdout.split(b"\0") if p))
        if rules_changed:
            # Ignore rules changed: forget files captured before they became ignored.
            ignored = self._run(["ls-files", "-z", "--cached", "--ignored", "--exclude-standard"])
            now_ignored = {p for p in ignored.stdout.split(b"\0") if p}
            if now_ignored:
                update = [p for p in update if p not in now_ignored]
                drop.update(dict.fromkeys(now_ignored))

        # Now and then also refresh every entry's stat data, so files that were only touched
        # (same content, new mtime) stop being re-hashed by each snapshot's scan.
        refresh = ["-q", "--refresh"] if time.monotonic() >= self._refresh_due else []
        if drop:
            self._run(["update-index", "-z", "--force-remove", "--stdin"], stdin=_nul_join(drop))
        if update or refresh:
            self._run(
                ["update-index", "-z", *refresh, "--add", "--remove", "--stdin"],
                stdin=_nul_join(update),
            )
            if refresh:
                self._refresh_due = time.monotonic() + _REFRESH_EVERY_S
        parent = self._read_head()
        if parent is not None and not (update or drop) and self._last is not None:
            # Nothing changed and nobody else moved the head: the index still holds its tree.
            last_commit, last_tree = self._last
            tree = last_tree if last_commit == parent else self._write_tree()
        else:
            tree = self._write_tree()
        args = ["commit-tree", "--no-gpg-sign", tree, "-m", message]
        if parent:
            args += ["-p", parent]
        commit = self._run(args).stdout.decode().strip()
        self._set_refs(commit, parent, ref)
        self._last = (commit, tree)
        return Snapshot(
            commit=commit,
            tree=tree,
            parent=parent,
            changed=len(update) + len(drop),
            skipped=tuple(sorted(skipped, key=lambda s: s.path)),
            duration_ms=(time.perf_counter() - start) * 1000,
        )

    def _scan(self) -> tuple[bytes, bytes]:
        """(indexed paths whose file changed or went, untracked paths), NUL-separated.

        Two git processes at once: `diff-files` stats the indexed files on several threads
        while `ls-files --others` walks the folders for new ones — in a large tree this scan
        is most of a snapshot's cost.
        """
        commands = (
            ["diff-files", "--name-only", "--no-renames", "-z"],
            ["ls-files", "-z", "--others", "--exclude-standard"],
        )
        try:
            running = [
                subprocess.Popen(
                    [self._git, *args],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=self._project,
                    env=self._env,
                )
                for args in commands
            ]
        except OSError as exc:
            raise _not_started(exc) from None
        outputs = [proc.communicate() for proc in running]
        for args, proc, (_, err) in zip(commands, running, outputs, strict=True):
            if proc.returncode != 0:
                raise SnapshotError(_failure(args[0], err, self._store))
        return outputs[0][0], outputs[1][0]

    def _set_refs(self, commit: str, parent: str | None, ref: str | None) -> None:
        """Point the head (and `ref`) at `commit`.

        Plain names are written as loose ref files, the way git's files backend stores them
        (lock file, then rename), which saves a git process per snapshot; anything unusual
        goes through `git update-ref`, which validates it.
        """
        names = [HEAD_REF] if ref is None else [ref, HEAD_REF]
        plain = all(_PLAIN_REF.fullmatch(n) and ".lock/" not in f"{n}/" for n in names)
        if self._loose_refs and plain:
            try:
                for name in names:
                    path = self._git_dir / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    lock = path.with_name(f"{path.name}.lock")
                    lock.write_text(f"{commit}\n", encoding="ascii")
                    os.replace(lock, path)
                return
            except OSError:
                pass  # e.g. a folder where the ref file should go: let git explain
        lines = f"update {HEAD_REF} {commit} {parent or _ZERO_OID}\n"
        if ref is not None:
            lines += f"update {ref} {commit}\n"
        self._run(["update-ref", "--stdin"], stdin=lines.encode())

    def _write_tree(self) -> str:
        return self._run(["write-tree"]).stdout.decode().strip()

    def _obstacle(self, path: bytes, cache: dict[bytes, str]) -> tuple[str, bytes] | None:
        """The first enclosing folder of `path` that is not a plain folder, and what it is.

        _REPO: a git repository of its own; _MISSING: absent; _OTHER: a file or a symlink.
        """
        prefix = b""
        for part in path.split(b"/")[:-1]:
            prefix = prefix + b"/" + part if prefix else part
            kind = cache.get(prefix)
            if kind is None:
                full = self._root + b"/" + prefix
                try:
                    mode = os.lstat(full).st_mode
                except OSError:
                    kind = _MISSING
                else:
                    if not stat.S_ISDIR(mode):
                        kind = _OTHER
                    else:
                        kind = _REPO if os.path.lexists(full + b"/.git") else ""
                cache[prefix] = kind
            if kind:
                return kind, prefix
        return None

    def _sync_exclude(self) -> bool:
        """Mirror the user's .git/info/exclude; say whether it changed."""
        source = _user_exclude_file(self._project)  # looked up each time: `git init` may come later
        try:
            wanted = source.read_bytes() if source else b""
        except OSError:
            wanted = b""
        if wanted == self._synced_exclude:
            return False
        target = self._git_dir / "info" / "exclude"
        try:
            current = target.read_bytes()
        except FileNotFoundError:
            current = b""
        self._synced_exclude = wanted
        if current == wanted:
            return False
        _write_atomic(target, wanted)
        return True

    def _read_head(self) -> str | None:
        loose = self._git_dir / HEAD_REF
        try:
            value = loose.read_text().strip()
        except OSError:
            value = ""
        if len(value) in (40, 64):
            return value
        result = self._run(["rev-parse", "--verify", "--quiet", HEAD_REF], check=False)
        return result.stdout.decode().strip() or None

    # -- restore ----------------------------------------------------------------------------

    def _protect(self, raw: Sequence[_RawChange]) -> tuple[set[bytes], list[str]]:
        """Decide which changed paths restore must leave alone, and copy aside what it would lose.

        Returns (paths to keep as they are, files copied to the preserved folder).
        """
        folders: dict[bytes, str] = {}
        obstacles = {c.path: self._obstacle(c.path, folders) for c in raw}
        keep = {path for path, found in obstacles.items() if found and found[0] == _REPO}
        deleted = {c.path for c in raw if c.status == "D"}
        added = [c.path for c in raw if c.status == "A" and c.path not in keep]

        # Where a folder must go, a file or symlink the store does not hold (ignored, too large)
        # would be replaced by git; one the store holds is a deletion git makes anyway.
        blockers: dict[bytes, bytes] = {}
        queries: list[bytes] = []
        for path in added:
            found = obstacles[path]
            if found is None or found[0] == _MISSING:
                queries.append(path)
            elif found[1] not in deleted:
                blockers[path] = found[1]
        ignored = self._ignored([*queries, *dict.fromkeys(blockers.values())])

        to_copy: dict[bytes, None] = {}
        for path in added:
            blocker = blockers.get(path)
            if blocker is not None:
                if blocker in ignored:
                    keep.add(path)
                else:
                    to_copy[blocker] = None
                continue
            if path in ignored:
                keep.add(path)
                continue
            full = self._root + b"/" + path
            try:
                st = os.lstat(full)
            except OSError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                to_copy[path] = None
            elif _contains_repo(full):
                keep.add(path)
            else:  # git would delete this folder to write a file: keep what only it holds
                inside = _walk_files(full, path)
                to_copy.update(dict.fromkeys(p for p in inside if p not in deleted))
        return keep, self._preserve(to_copy)

    def _ignored(self, paths: Sequence[bytes]) -> set[bytes]:
        if not paths:
            return set()
        # check-ignore takes paths, not pathspecs, and rejects the literal-pathspec switch.
        env = {k: v for k, v in self._env.items() if k != "GIT_LITERAL_PATHSPECS"}
        result = self._run(
            ["check-ignore", "-z", "--stdin"], stdin=_nul_join(paths), check=False, env=env
        )
        if result.returncode not in (0, 1):
            raise SnapshotError(_failure("check-ignore", result.stderr, self._store))
        return {p for p in result.stdout.split(b"\0") if p}

    def _preserve(self, paths: Iterable[bytes]) -> list[str]:
        paths = list(paths)
        if not paths:
            return []
        base = self._store / "preserved"
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        folder = base / stamp
        suffix = 0
        while folder.exists():
            suffix += 1
            folder = base / f"{stamp}-{suffix}"
        saved: list[str] = []
        for path in paths:
            rel = os.fsdecode(path)
            dest = folder / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copy2(os.fsdecode(self._root + b"/" + path), dest, follow_symlinks=False)
            except OSError as exc:
                raise SnapshotError(
                    f"Could not copy {rel} aside before restoring ({exc.strerror}); "
                    f"free space in {self._store} or move the file yourself and retry."
                ) from None
            saved.append(rel)
        return saved

    def _tree_keeping(self, target: str, kept: Sequence[_RawChange]) -> str:
        """`target`'s tree, except that kept paths stay as the backup has them."""
        if not kept:
            return target
        scratch = self._store / "index.restore"
        scratch.unlink(missing_ok=True)
        Path(f"{scratch}.lock").unlink(missing_ok=True)
        env = {**self._env, "GIT_INDEX_FILE": str(scratch)}
        try:
            self._run(["read-tree", target], env=env)
            info = b"".join(
                (
                    f"{c.old_mode} {c.old_oid}\t".encode()
                    if c.old_mode != "000000"
                    else f"0 {_ZERO_OID}\t".encode()
                )
                + c.path
                + b"\0"
                for c in kept
            )
            self._run(["update-index", "-z", "--index-info"], stdin=info, env=env)
            return self._run(["write-tree"], env=env).stdout.decode().strip()
        finally:
            scratch.unlink(missing_ok=True)

    # -- git plumbing -----------------------------------------------------------------------

    def _diff_raw(self, a: str, b: str) -> list[_RawChange]:
        out = self._run(["diff-tree", "-r", "-z", "--no-renames", "--raw", a, b]).stdout
        fields = out.split(b"\0")
        changes: list[_RawChange] = []
        for meta, path in zip(fields[0::2], fields[1::2], strict=False):
            if not meta.startswith(b":"):
                continue
            old_mode, _new_mode, old_oid, _new_oid, status = meta[1:].decode().split(" ")
            changes.append(_RawChange(old_mode, old_oid, status[:1], path))
        return changes

    def _lookup(self, commit: str) -> str | None:
        if not commit or commit.startswith("-") or any(c.isspace() for c in commit):
            return None
        result = self._run(
            ["rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"], check=False
        )
        sha = result.stdout.decode().strip()
        return sha if result.returncode == 0 and sha else None

    def _resolve(self, commit: str) -> str:
        sha = self._lookup(commit)
        if sha is None:
            raise SnapshotError(
                f"Snapshot {commit!r} is not in the shadow store {self._store}; it may have been "
                "pruned, so pick a snapshot that still exists."
            )
        return sha

    def _ensure_store(self) -> None:
        # info/attributes is written last, so a store without it was never finished: a process
        # killed mid-way must not leave one that later snapshots and restores would trust.
        attributes = self._git_dir / "info" / "attributes"
        if attributes.exists():
            return
        env = {k: v for k, v in self._env.items() if k not in ("GIT_DIR", "GIT_WORK_TREE")}
        # On a half-made repository, init fills in what is missing and keeps what is there; a
        # lock file a killed init left behind would stop it, and we hold the store's lock.
        for name in ("HEAD.lock", "config.lock"):
            (self._git_dir / name).unlink(missing_ok=True)
        self._run(["init", "--quiet", "--bare", "--template=", str(self._git_dir)], env=env)
        config = self._git_dir / "config"
        current = config.read_text(encoding="utf-8")
        if "[agentguard]" not in current:
            _write_atomic(config, (current + _CONFIG).encode())
        _write_atomic(attributes, _ATTRIBUTES.encode())

    def _clear_stale_locks(self) -> None:
        # We hold the store's lock, so any git lock file left here is from a killed process.
        Path(f"{self._index}.lock").unlink(missing_ok=True)
        Path(f"{self._git_dir / HEAD_REF}.lock").unlink(missing_ok=True)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            fd = os.open(self._store / "lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing releases the flock

    def _run(
        self,
        args: Sequence[str],
        *,
        stdin: bytes | None = None,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        try:
            result = subprocess.run(
                [self._git, *args],
                input=stdin,
                stdin=None if stdin is not None else subprocess.DEVNULL,
                capture_output=True,
                cwd=self._project if self._project.is_dir() else self._store,
                env=env or self._env,
                check=False,
            )
        except OSError as exc:
            raise _not_started(exc) from None
        if check and result.returncode != 0:
            raise SnapshotError(_failure(args[0], result.stderr, self._store))
        return result


def _git_env(git_dir: Path, project: Path, index: Path) -> dict[str, str]:
    """The caller's environment minus every GIT_* variable, plus ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_DIR=str(git_dir),
        GIT_WORK_TREE=str(project),
        GIT_INDEX_FILE=str(index),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_ATTR_NOSYSTEM="1",
        GIT_OPTIONAL_LOCKS="0",
        GIT_TERMINAL_PROMPT="0",
        GIT_LITERAL_PATHSPECS="1",
        GIT_NO_REPLACE_OBJECTS="1",
        LC_ALL="C",
        LANGUAGE="C",
        **_IDENTITY,
        # A split index (version 4) keeps the private index cheap to rewrite in large trees:
        # each snapshot writes only the entries that changed, not all of them (git ≥ 2.31 reads
        # these; an older git ignores them and is merely slower).
        GIT_CONFIG_COUNT="2",
        GIT_CONFIG_KEY_0="core.splitIndex",
        GIT_CONFIG_VALUE_0="true",
        GIT_CONFIG_KEY_1="index.version",
        GIT_CONFIG_VALUE_1="4",
    )
    return env


def _user_exclude_file(project: Path) -> Path | None:
    """The project's own info/exclude, found without running git on the user's repository."""
    dot_git = project / ".git"
    try:
        if dot_git.is_dir():
            return dot_git / "info" / "exclude"
        if not dot_git.is_file():
            return None
        line = dot_git.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    if not line.startswith("gitdir:"):
        return None
    git_dir = (project / line.removeprefix("gitdir:").strip()).resolve()
    try:  # a linked worktree keeps info/ in the common directory
        common = (git_dir / "commondir").read_text(encoding="utf-8").strip()
        git_dir = (git_dir / common).resolve()
    except OSError:
        pass
    return git_dir / "info" / "exclude"


def _not_started(exc: OSError) -> SnapshotError:
    return SnapshotError(
        f"git could not be started ({exc.strerror}); check that git is installed and on PATH."
    )


def _failure(command: str, stderr: bytes, store: Path) -> str:
    lines = stderr.decode(errors="replace").strip().splitlines()
    detail = lines[0] if lines else "no error output"
    return f"git {command} failed in the shadow store {store}: {detail}"


def _nul_join(paths: Iterable[bytes]) -> bytes:
    return b"".join(p + b"\0" for p in paths)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _contains_repo(folder: bytes) -> bool:
    return any(".git" in dirs or ".git" in files for _, dirs, files in os.walk(os.fsdecode(folder)))


def _walk_files(folder: bytes, rel: bytes) -> Iterator[bytes]:
    """Every non-directory under `folder`, as project-relative paths."""
    for dirpath, dirs, files in os.walk(folder):
        base = rel + dirpath[len(folder) :]
        yield from (base + b"/" + name for name in files)
        yield from (base + b"/" + d for d in dirs if os.path.islink(os.path.join(dirpath, d)))
