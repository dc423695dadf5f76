"""Working-tree snapshots in a shadow git store, so a step's tree can be verified and restored.

The store is a bare repository outside the project with its own index file, kept between
snapshots so that one costs O(changed files). How git is run on it (hermetic, never on the
user's own `.git`) is in agentguard.shadow.gitenv; this module is the public import point.

    <store_dir>/repo.git     the bare shadow repository (refs/agentguard/head = latest snapshot)
    <store_dir>/index        its private index
    <store_dir>/lock         flock taken around every index-mutating operation
    <store_dir>/preserved/   files a restore copied aside before overwriting them
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from agentguard.config import load_config
from agentguard.errors import ProjectError, SnapshotError
from agentguard.shadow import protect, refs
from agentguard.shadow.exclusions import (
    DEFAULT_SECRET_FILES,
    SecretFiles,
    global_excludes_file,
    secret_file_patterns,
)
from agentguard.shadow.exclusions import reason as secret_reason
from agentguard.shadow.gitenv import (
    HEAD_REF,
    STORE_ATTRIBUTES,
    STORE_CONFIG,
    failure,
    git_env,
    not_started,
    nul_join,
    write_atomic,
)
from agentguard.shadow.model import (
    DEFAULT_MAX_FILE_BYTES,
    NESTED_REPO,
    TOO_LARGE,
    Change,
    RawChange,
    RestoreResult,
    SkippedPath,
    Snapshot,
)
from agentguard.shadow.private_index import choose_index
from agentguard.shadow.worktree import REPO, obstacle, user_exclude_file

try:  # pragma: no cover - Windows has no fcntl; there only the in-process lock applies
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "DEFAULT_SECRET_FILES",
    "HEAD_REF",
    "Change",
    "RestoreResult",
    "ShadowRepo",
    "SkippedPath",
    "Snapshot",
]

# retention.py runs git on the stores the same way.
_git_env = git_env
_failure = failure

_REFRESH_EVERY_S = 60.0


class _IndexNamesMissingObjects(SnapshotError):
    """write-tree failed on what the private index holds: the next attempt starts without it."""


class ShadowRepo:
    """Snapshots of one project folder, kept in a store outside it.

    Safe to share between threads; two processes using the same store serialise on a lock file.
    `secret_files` changes the built-in secret-file patterns ("*.p12" adds, "!.env.*" removes);
    None takes `secret_files` from the project's agentguard config, so every command that opens
    the store (the guard, restore, resume, the TUI) protects the same files.
    """

    def __init__(
        self,
        project: str | os.PathLike[str],
        store_dir: str | os.PathLike[str],
        *,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        secret_files: Sequence[str] | None = None,
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
        self._index = self._store / "index"  # until the store is made: see _use_recorded_index
        self._ready = False
        self._root = os.fsencode(self._project)
        self._env = git_env(self._git_dir, self._project, self._index)
        self._synced_exclude: bytes | None = None
        if secret_files is None:
            secret_files = load_config(self._project)[0].secret_files
        self._secrets = SecretFiles(secret_file_patterns(secret_files))
        self._secrets_checked = False  # has this instance swept them out of the private index?
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
        # Asked once, from the store folder (in no repository): the user's global ignore file.
        self._global_excludes = global_excludes_file(git, self._store)
        with self._locked():
            self._ensure_store()
            self._ready = True
            self._use_recorded_index()
        # Loose ref files are only ours to write while the store uses git's files backend.
        self._loose_refs = not (self._git_dir / "reftable").exists()

    # -- public API -------------------------------------------------------------------------

    @property
    def project(self) -> Path:
        return self._project

    @property
    def store_dir(self) -> Path:
        return self._store

    @property
    def secret_files(self) -> tuple[str, ...]:
        """The patterns of files this store never holds and a restore never touches."""
        return self._secrets.patterns

    def snapshot(self, message: str = "agentguard snapshot", *, ref: str | None = None) -> Snapshot:
        """Commit the working tree as it is now; `ref` pins the commit against pruning."""
        if ref is not None and (not ref.startswith("refs/") or ref == HEAD_REF):
            raise SnapshotError(
                f"Snapshot ref {ref!r} is not allowed; pass a name under refs/, "
                "e.g. refs/agentguard/runs/<run>/steps/<n>."
            )
        with self._locked():
            try:
                return self._snapshot(message, ref)
            except _IndexNamesMissingObjects:
                # The index names objects the store no longer has (pruned, or lost with a
                # damaged object file): every later snapshot would fail the same way. It is
                # only a cache: read every file afresh, once.
                self._forget_index()
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
                kept = [c for c in raw if c.path in keep]
                tree = protect.tree_keeping(self._run, self._env, self._store, target, kept)
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
        secrets_fingerprint = None if self._secrets_checked else self._secrets_changed()

        try:
            changed, untracked = self._scan()
        except SnapshotError:
            if not self._index.exists():
                raise
            # A damaged private index only costs one full snapshot: start it afresh.
            self._forget_index()
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
        folders: dict[bytes, str] = {}  # cache for obstacle()
        nested_roots: dict[bytes, None] = {}
        for path, tracked in candidates.items():
            if path.endswith(b"/"):  # ls-files shows an untracked nested repository as "dir/"
                skipped.append(SkippedPath(os.fsdecode(path[:-1]), NESTED_REPO, None))
                continue
            secret = self._secrets.match(path)
            if secret is not None:
                if tracked:
                    drop[path] = None  # captured before it matched: never carry it on
                try:
                    size: int | None = os.lstat(self._root + b"/" + path).st_size
                except OSError:
                    continue  # gone: nothing to report
                skipped.append(SkippedPath(os.fsdecode(path), secret_reason(secret), size))
                continue
            blocked = obstacle(self._root, path, folders)
            if blocked is not None:
                kind, folder = blocked
                if kind == REPO:
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

        if secrets_fingerprint is not None:
            # The patterns changed since the store's last snapshot: drop what now matches.
            cached = self._run(["ls-files", "-z", "--cached"]).stdout.split(b"\0")
            now_secret = self._secrets.matching(p for p in cached if p)
            if now_secret:
                update = [p for p in update if p not in now_secret]
                drop.update(dict.fromkeys(now_secret))

        # Now and then also refresh every entry's stat data, so files that were only touched
        # (same content, new mtime) stop being re-hashed by each snapshot's scan.
        refresh = ["-q", "--refresh"] if time.monotonic() >= self._refresh_due else []
        if drop:
            self._run(["update-index", "-z", "--force-remove", "--stdin"], stdin=nul_join(drop))
        if update or refresh:
            self._run(
                ["update-index", "-z", *refresh, "--add", "--remove", "--stdin"],
                stdin=nul_join(update),
            )
            if refresh:
                self._refresh_due = time.monotonic() + _REFRESH_EVERY_S
        if secrets_fingerprint is not None:
            write_atomic(self._secrets_record, secrets_fingerprint)
        self._secrets_checked = True
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
        self._set_refs(commit, parent, ref, message)
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
            raise not_started(exc) from None
        outputs = [proc.communicate() for proc in running]
        for args, proc, (_, err) in zip(commands, running, outputs, strict=True):
            if proc.returncode != 0:
                raise SnapshotError(failure(args[0], err, self._store))
        return outputs[0][0], outputs[1][0]

    def _set_refs(self, commit: str, parent: str | None, ref: str | None, message: str) -> None:
        """Point the head (and `ref`) at `commit`, logging both in their reflogs."""
        names = refs.ref_names(ref)
        if self._loose_refs and refs.are_plain(names):
            olds = {name: refs.read_loose(self._git_dir, name) for name in names}
            olds[HEAD_REF] = parent
            if refs.write_loose(self._git_dir, names, commit, olds, message):
                return
        self._run(
            ["update-ref", "-m", refs.reflog_message(message), "--stdin"],
            stdin=refs.update_script(commit, parent, ref),
        )

    def _write_tree(self) -> str:
        result = self._run(["write-tree"], check=False)
        if result.returncode != 0:
            error = _IndexNamesMissingObjects if self._index.exists() else SnapshotError
            raise error(failure("write-tree", result.stderr, self._store))
        return result.stdout.decode().strip()

    @property
    def _secrets_record(self) -> Path:
        return self._git_dir / "info" / "agentguard-secret-files"

    def _secrets_changed(self) -> bytes | None:
        """The patterns to record if they differ from those of the store's last snapshot."""
        wanted = self._secrets.fingerprint()
        try:
            if self._secrets_record.read_bytes() == wanted:
                return None
        except OSError:
            pass
        return wanted

    def _sync_exclude(self) -> bool:
        """Mirror the user's global ignore file and .git/info/exclude; say whether they changed.

        In one file, global rules first: later lines win, as info/exclude outranks the global
        file in git; both stay below the project's .gitignore files.
        """
        project_rules = user_exclude_file(self._project)  # each time: `git init` may come later
        wanted = b""
        for source in (self._global_excludes, project_rules):
            try:
                text = source.read_bytes() if source else b""
            except OSError:
                text = b""
            if text:
                wanted += text if text.endswith(b"\n") else text + b"\n"
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
        write_atomic(target, wanted)
        return True

    def _read_head(self) -> str | None:
        loose = refs.read_loose(self._git_dir, HEAD_REF)
        if loose is not None:
            return loose
        result = self._run(["rev-parse", "--verify", "--quiet", HEAD_REF], check=False)
        found = result.stdout.decode().strip()
        if found:
            return found
        # an empty or torn head file (a power loss before it was written out): its reflog's
        # last line says where it pointed, if that commit is here
        tip = refs.reflog_tip(self._git_dir, HEAD_REF)
        return tip if tip is not None and self.has_commit(tip) else None

    # -- restore ----------------------------------------------------------------------------

    def _protect(self, raw: Sequence[RawChange]) -> tuple[set[bytes], list[str]]:
        """(paths restore must leave as they are, files it copied aside first)."""
        keep, to_copy = protect.protect(self._root, raw, self._left_alone, self._secrets.matching)
        return keep, protect.preserve(self._root, self._store, to_copy)

    def _left_alone(self, paths: Sequence[bytes]) -> set[bytes]:
        """Paths a restore never writes: ignored by the rules, or secret files."""
        return self._secrets.matching(paths) | protect.ignored(
            self._run, self._env, self._store, paths
        )

    # -- git plumbing -----------------------------------------------------------------------

    def _diff_raw(self, a: str, b: str) -> list[RawChange]:
        out = self._run(["diff-tree", "-r", "-z", "--no-renames", "--raw", a, b]).stdout
        fields = out.split(b"\0")
        changes: list[RawChange] = []
        for meta, path in zip(fields[0::2], fields[1::2], strict=False):
            if not meta.startswith(b":"):
                continue
            old_mode, _new_mode, old_oid, _new_oid, status = meta[1:].decode().split(" ")
            changes.append(RawChange(old_mode, old_oid, status[:1], path))
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
            write_atomic(config, (current + STORE_CONFIG).encode())
        write_atomic(attributes, STORE_ATTRIBUTES.encode())

    def _forget_index(self) -> None:
        """Drop the private index (a cache): the next scan reads every file afresh."""
        self._index.unlink(missing_ok=True)
        self._last = None

    def _use_recorded_index(self) -> None:
        """The private index the store records as in use, or a new one if this process would
        keep it elsewhere (see shadow.private_index); under the store's lock, before every
        use of the index, since another process may have moved it."""
        index = choose_index(self._store)
        if index != self._index:
            self._index = index
            self._env = {**self._env, "GIT_INDEX_FILE": str(index)}
            self._last = None

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
                if self._ready:
                    self._use_recorded_index()
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
            raise not_started(exc) from None
        if check and result.returncode != 0:
            raise SnapshotError(failure(args[0], result.stderr, self._store))
        return result
