"""The shadow git store: snapshots never touch the user's repository, restores are exact and
undoable, and what cannot be stored is reported rather than lost.

Every test builds real repositories with the git CLI in tmp_path; none of them sleep.
"""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from agentguard.errors import ProjectError, SnapshotError
from agentguard.shadow.private_index import index_in_use
from agentguard.snapshots import HEAD_REF, Change, ShadowRepo, SkippedPath

# -- helpers ------------------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    """The test's own git calls: no inherited GIT_*, no global config, no index refreshes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1", GIT_OPTIONAL_LOCKS="0")
    env.update(extra)
    return env


def ugit(repo: Path, *args: str) -> str:
    """Run git as the user would, on the user's repository."""
    result = subprocess.run(
        [
            "git",
            "-c", "user.name=Test User",
            "-c", "user.email=test@example.com",
            "-c", "commit.gpgsign=false",
            "-c", "init.defaultBranch=main",
            *args,
        ],
        cwd=repo,
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    return result.stdout


def shadow_git(shadow: ShadowRepo, *args: str) -> str:
    """Inspect the shadow store directly, as a second opinion on what the API reports."""
    result = subprocess.run(
        ["git", *args],
        env=_env(GIT_DIR=str(shadow.store_dir / "repo.git")),
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def tree_state(root: Path) -> dict[str, tuple[str, bytes | str | int]]:
    """Every path under root except .git internals: kind and content (or link target)."""
    state: dict[str, tuple[str, bytes | str | int]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel == ".git" or rel.startswith(".git/"):
            continue
        if path.is_symlink():
            state[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            state[rel] = ("dir", 0)
        else:
            state[rel] = (f"file{path.stat().st_mode & 0o111:o}", path.read_bytes())
    return state


def git_dir_state(git_dir: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """Every file and folder under a .git: mode, mtime (ns) and bytes."""
    state: dict[str, tuple[int, int, bytes | None]] = {}
    for path in sorted(git_dir.rglob("*")):
        st = path.lstat()
        data = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
        state[path.relative_to(git_dir).as_posix()] = (st.st_mode, st.st_mtime_ns, data)
    return state


def user_state(repo: Path) -> dict[str, object]:
    # Porcelain first (with optional locks off it never rewrites .git/index), then the bytes.
    return {
        "status": ugit(repo, "status", "--porcelain=v2", "--branch", "--untracked-files=all"),
        "head": ugit(repo, "rev-parse", "HEAD"),
        "refs": ugit(repo, "for-each-ref"),
        "stash": ugit(repo, "stash", "list"),
        "staged": ugit(repo, "diff", "--cached"),
        "git_dir": git_dir_state(repo / ".git"),
    }


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "home" / "shadow" / "project"


@pytest.fixture
def user_repo(tmp_path: Path) -> Path:
    """A lived-in repository: commits, tag, branch, stash, staged, unstaged, untracked, ignored."""
    repo = tmp_path / "project"
    repo.mkdir()
    ugit(repo, "init", "-q")
    write(repo / ".gitignore", "*.log\nbuild/\n")
    write(repo / "README.md", "hello\n")
    write(repo / "src" / "app.py", "print('v1')\n")
    ugit(repo, "add", "-A")
    ugit(repo, "commit", "-q", "-m", "initial")
    ugit(repo, "tag", "v1")
    ugit(repo, "branch", "feature")
    write(repo / "README.md", "work in progress\n")
    ugit(repo, "stash", "-q")
    write(repo / "src" / "app.py", "print('staged')\n")
    ugit(repo, "add", "src/app.py")
    write(repo / "README.md", "unstaged edit\n")
    write(repo / "notes.txt", "untracked\n")
    write(repo / "debug.log", "ignored\n")
    write(repo / "build" / "out.bin", b"\0ignored dir\0")
    write(repo / "secret.env", "KEY=ignored via info/exclude\n")
    with (repo / ".git" / "info" / "exclude").open("a") as fh:
        fh.write("secret.env\n")
    return repo


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    """A project folder that is not a git repository."""
    root = tmp_path / "plain"
    write(root / "a.txt", "a\n")
    write(root / "dir" / "b.txt", "b\n")
    write(root / "dir" / "sub" / "c.txt", "c\n")
    return root


# -- the user's repository is never touched ---------------------------------------------------


def test_snapshot_and_restore_leave_the_users_git_byte_for_byte_unchanged(
    user_repo: Path, store: Path
) -> None:
    before = user_state(user_repo)
    shadow = ShadowRepo(user_repo, store)

    first = shadow.snapshot()
    assert user_state(user_repo) == before

    write(user_repo / "README.md", "agent rewrote this\n")
    write(user_repo / "pkg" / "new.py", "x = 1\n")
    (user_repo / "notes.txt").unlink()
    shadow.snapshot(ref="refs/agentguard/runs/r1/steps/1")
    shadow.diff(first.commit)
    shadow.matches(first.commit)
    shadow.restore(first.commit)

    assert user_state(user_repo) == before
    assert not (user_repo / "pkg").exists()
    assert store.is_dir() and not store.is_relative_to(user_repo)


def test_untracked_files_are_captured_and_ignored_ones_are_not(
    user_repo: Path, store: Path
) -> None:
    shadow = ShadowRepo(user_repo, store)
    snap = shadow.snapshot()

    assert shadow.files(snap.commit) == [".gitignore", "README.md", "notes.txt", "src/app.py"]
    # The working tree, not the user's index or HEAD, is what a snapshot holds.
    assert shadow.read_file(snap.commit, "README.md") == b"unstaged edit\n"
    assert shadow.read_file(snap.commit, "src/app.py") == b"print('staged')\n"
    assert snap.parent is None and snap.changed == 4 and snap.skipped == ()


def test_a_folder_that_is_not_a_git_repository_works(plain: Path, store: Path) -> None:
    shadow = ShadowRepo(plain, store)
    snap = shadow.snapshot()
    original = tree_state(plain)
    assert shadow.files(snap.commit) == ["a.txt", "dir/b.txt", "dir/sub/c.txt"]

    write(plain / "a.txt", "changed\n")
    write(plain / "new.txt", "new\n")
    (plain / "dir" / "sub" / "c.txt").unlink()
    shadow.restore(snap.commit)

    assert tree_state(plain) == original
    assert not (plain / ".git").exists()


def test_the_private_index_is_split_so_a_snapshot_rewrites_only_what_changed(
    plain: Path, store: Path
) -> None:
    shadow = ShadowRepo(plain, store)
    shadow.snapshot()
    write(plain / "a.txt", "changed\n")
    snap = shadow.snapshot()
    index = index_in_use(store).read_bytes()
    assert index[:4] == b"DIRC" and int.from_bytes(index[4:8], "big") == 4  # version 4
    assert b"link" in index  # the split-index extension points at a shared index
    [shared] = (store / "repo.git").glob("sharedindex.*")
    assert shared.stat().st_size > 0
    assert shadow.files(snap.commit) == ["a.txt", "dir/b.txt", "dir/sub/c.txt"]
    assert shadow.read_file(snap.commit, "a.txt") == b"changed\n"


def test_a_store_whose_creation_was_killed_midway_is_finished_by_the_next_process(
    plain: Path, store: Path
) -> None:
    # what `git init` leaves when killed while writing HEAD and config: their lock files, and
    # no info/attributes (written last), so the store is known to be unfinished
    (store / "repo.git").mkdir(parents=True)
    (store / "repo.git" / "HEAD.lock").write_text("ref: refs/heads/main\n")
    (store / "repo.git" / "config.lock").write_text("[core]\n")
    shadow = ShadowRepo(plain, store)
    snap = shadow.snapshot()
    assert shadow.files(snap.commit) == ["a.txt", "dir/b.txt", "dir/sub/c.txt"]
    assert (store / "repo.git" / "info" / "attributes").exists()
    assert not list((store / "repo.git").glob("*.lock"))


# -- what cannot be stored is reported, and never lost ------------------------------------------


def test_files_over_the_size_limit_are_skipped_and_never_lost_by_a_restore(
    plain: Path, store: Path
) -> None:
    shadow = ShadowRepo(plain, store, max_file_bytes=1000)
    write(plain / "huge.bin", b"h" * 5000)
    write(plain / "data.bin", b"small")
    first = shadow.snapshot()
    assert first.skipped == (SkippedPath("huge.bin", "too_large", 5000),)
    assert "huge.bin" not in shadow.files(first.commit)
    assert "data.bin" in shadow.files(first.commit)

    # data.bin grows past the limit: the snapshot must not keep carrying the old version.
    write(plain / "data.bin", b"d" * 3000)
    grown = shadow.snapshot()
    assert {s.path for s in grown.skipped} == {"huge.bin", "data.bin"}
    assert "data.bin" not in shadow.files(grown.commit)
    assert grown.changed == 1  # data.bin left the index

    result = shadow.restore(first.commit)

    # Restoring brings back the small data.bin, but the big one was copied aside first.
    assert (plain / "data.bin").read_bytes() == b"small"
    assert result.preserved == ("data.bin",)
    saved = list((store / "preserved").glob("*/data.bin"))
    assert len(saved) == 1 and saved[0].read_bytes() == b"d" * 3000
    # A skipped file the target does not mention is not touched at all.
    assert (plain / "huge.bin").read_bytes() == b"h" * 5000
    assert {s.path for s in result.backup.skipped} == {"huge.bin", "data.bin"}


def test_a_nested_repository_is_skipped_left_in_place_and_left_alone_by_restore(
    plain: Path, store: Path
) -> None:
    nested = plain / "vendor" / "lib"
    nested.mkdir(parents=True)
    ugit(nested, "init", "-q")
    write(nested / "lib.py", "v1\n")
    ugit(nested, "add", "-A")
    ugit(nested, "commit", "-q", "-m", "lib")
    write(nested / "dirty.py", "untracked in the nested repo\n")
    nested_before = (tree_state(nested), git_dir_state(nested / ".git"))

    shadow = ShadowRepo(plain, store)
    first = shadow.snapshot()
    assert first.skipped == (SkippedPath("vendor/lib", "nested_repo", None),)
    assert not any(p.startswith("vendor/") for p in shadow.files(first.commit))

    write(nested / "lib.py", "edited by the agent\n")
    write(plain / "a.txt", "edited\n")
    shadow.restore(first.commit)

    assert (plain / "a.txt").read_text() == "a\n"
    assert (nested / "lib.py").read_text() == "edited by the agent\n"
    write(nested / "lib.py", "v1\n")
    assert (tree_state(nested), git_dir_state(nested / ".git")) == nested_before


def test_a_captured_folder_that_becomes_a_repository_is_dropped_and_left_alone(
    plain: Path, store: Path
) -> None:
    shadow = ShadowRepo(plain, store)
    first = shadow.snapshot()
    assert "dir/b.txt" in shadow.files(first.commit)

    ugit(plain / "dir", "init", "-q")
    write(plain / "dir" / "b.txt", "now part of its own repository\n")
    second = shadow.snapshot()
    assert SkippedPath("dir", "nested_repo", None) in second.skipped
    assert not any(p.startswith("dir/") for p in shadow.files(second.commit))

    result = shadow.restore(first.commit)
    assert result.changes == ()  # everything that differs is inside the nested repository
    assert (plain / "dir" / "b.txt").read_text() == "now part of its own repository\n"
    assert (plain / "dir" / ".git" / "HEAD").is_file()


def test_restore_leaves_a_repository_alone_even_while_the_store_still_holds_its_files(
    plain: Path, store: Path
) -> None:
    shadow = ShadowRepo(plain, store)
    first = shadow.snapshot()
    write(plain / "dir" / "b.txt", "second version\n")
    shadow.snapshot()
    ugit(plain / "dir", "init", "-q")  # nothing else in dir/ changes, so the store keeps it
    write(plain / "a.txt", "edited\n")

    result = shadow.restore(first.commit)

    assert result.changes == (Change("M", "a.txt"),)
    assert (plain / "a.txt").read_text() == "a\n"
    assert (plain / "dir" / "b.txt").read_text() == "second version\n"
    assert shadow.snapshot().changed == 0


# -- restore ----------------------------------------------------------------------------------


def test_restore_reverts_edits_deletes_new_files_recreates_deleted_ones_and_can_be_undone(
    plain: Path, store: Path
) -> None:
    write(plain / ".gitignore", "*.log\n")
    write(plain / "run.sh", "#!/bin/sh\necho hi\n").chmod(0o755)
    (plain / "link").symlink_to("dir/b.txt")
    shadow = ShadowRepo(plain, store)
    checkpoint = shadow.snapshot()
    at_checkpoint = tree_state(plain)
    assert at_checkpoint["run.sh"][0] == "file111"

    # The agent goes astray.
    write(plain / "a.txt", "rewritten\n")
    for name in ("dir/sub/c.txt", "dir/b.txt"):
        (plain / name).unlink()
    (plain / "dir" / "sub").rmdir()
    (plain / "dir").rmdir()
    write(plain / "new" / "deep" / "e.txt", "created since\n")
    write(plain / "keep" / "trace.log", "ignored, inside a folder restore empties\n")
    write(plain / "keep" / "made.txt", "created since\n")
    write(plain / "f.txt", "created since\n")
    write(plain / "session.log", "ignored\n")
    (plain / "run.sh").chmod(0o644)
    diverged = tree_state(plain)
    head_before = shadow_git(shadow, "rev-parse", HEAD_REF).strip()

    result = shadow.restore(checkpoint.commit)

    assert result.target == checkpoint.commit
    assert result.backup.parent == head_before  # the current state was snapshotted first
    assert set(shadow.files(result.backup.commit)) >= {"f.txt", "new/deep/e.txt", "keep/made.txt"}
    assert set(result.changes) == {
        Change("M", "a.txt"),
        Change("M", "run.sh"),
        Change("A", "dir/b.txt"),
        Change("A", "dir/sub/c.txt"),
        Change("D", "new/deep/e.txt"),
        Change("D", "keep/made.txt"),
        Change("D", "f.txt"),
    }
    assert result.preserved == ()
    expected = dict(at_checkpoint)
    expected["keep"] = ("dir", 0)  # still holds the ignored log, so it stays
    expected["keep/trace.log"] = diverged["keep/trace.log"]
    expected["session.log"] = diverged["session.log"]
    assert tree_state(plain) == expected
    assert not (plain / "new").exists()  # folders left empty are removed
    after = shadow.snapshot()
    assert after.changed == 0 and after.tree == checkpoint.tree  # the index follows the restore

    undo = shadow.restore(result.backup.commit)
    assert tree_state(plain) == diverged
    assert {(c.status, c.path) for c in undo.changes} == {
        ({"A": "D", "D": "A"}.get(c.status, c.status), c.path) for c in result.changes
    }


def test_restore_copies_aside_what_it_must_replace_but_does_not_hold(
    plain: Path, store: Path
) -> None:
    write(plain / ".gitignore", "*.log\n")
    shadow = ShadowRepo(plain, store)
    checkpoint = shadow.snapshot()

    # a.txt becomes a folder holding an ignored file; git would delete it to write a.txt back.
    (plain / "a.txt").unlink()
    write(plain / "a.txt" / "notes.md", "captured\n")
    write(plain / "a.txt" / "only-here.log", "ignored, held nowhere else\n")
    result = shadow.restore(checkpoint.commit)

    assert (plain / "a.txt").read_text() == "a\n"
    assert result.preserved == ("a.txt/only-here.log",)
    (saved,) = (store / "preserved").glob("*/a.txt/only-here.log")
    assert saved.read_text() == "ignored, held nowhere else\n"


def test_restore_never_writes_over_files_that_are_ignored_now(plain: Path, store: Path) -> None:
    write(plain / "cache.tmp", "captured before it was ignored\n")
    shadow = ShadowRepo(plain, store)
    checkpoint = shadow.snapshot()

    write(plain / ".gitignore", "*.tmp\n")
    write(plain / "cache.tmp", "ignored now\n")
    later = shadow.snapshot()
    assert "cache.tmp" not in shadow.files(later.commit)  # forgotten once ignored
    assert later.changed == 2  # .gitignore added, cache.tmp dropped

    result = shadow.restore(checkpoint.commit)
    assert Change("D", ".gitignore") in result.changes
    assert (plain / "cache.tmp").read_text() == "ignored now\n"
    assert not any(c.path == "cache.tmp" for c in result.changes)


def test_a_new_info_exclude_entry_is_honoured_at_the_next_snapshot(
    user_repo: Path, store: Path
) -> None:
    shadow = ShadowRepo(user_repo, store)
    first = shadow.snapshot()
    assert "notes.txt" in shadow.files(first.commit)

    with (user_repo / ".git" / "info" / "exclude").open("a") as fh:
        fh.write("notes.txt\n")
    second = shadow.snapshot()
    assert "notes.txt" not in shadow.files(second.commit)
    assert second.changed == 1


def test_type_changes_are_snapshotted_and_restored(plain: Path, store: Path) -> None:
    shadow = ShadowRepo(plain, store)
    first = shadow.snapshot()
    original = tree_state(plain)

    (plain / "a.txt").unlink()
    (plain / "a.txt").symlink_to("dir/b.txt")
    for name in ("dir/sub/c.txt", "dir/b.txt"):
        (plain / name).unlink()
    (plain / "dir" / "sub").rmdir()
    (plain / "dir").rmdir()
    write(plain / "dir", "now a file\n")
    second = shadow.snapshot()

    assert set(shadow.diff(first.commit, second.commit)) == {
        Change("T", "a.txt"),
        Change("A", "dir"),
        Change("D", "dir/b.txt"),
        Change("D", "dir/sub/c.txt"),
    }
    assert shadow.read_file(second.commit, "a.txt") == b"dir/b.txt"
    shadow.restore(first.commit)
    assert tree_state(plain) == original


def test_a_folder_replaced_by_a_symlink_is_stored_as_a_symlink_and_restored(
    plain: Path, store: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    write(outside / "b.txt", "outside the project\n")
    shadow = ShadowRepo(plain, store)
    first = shadow.snapshot()
    original = tree_state(plain)

    for name in ("dir/sub/c.txt", "dir/b.txt"):
        (plain / name).unlink()
    (plain / "dir" / "sub").rmdir()
    (plain / "dir").rmdir()
    (plain / "dir").symlink_to(outside)
    second = shadow.snapshot()
    assert shadow.files(second.commit) == ["a.txt", "dir"]
    assert shadow.read_file(second.commit, "dir") == os.fsencode(outside)

    shadow.restore(first.commit)
    assert tree_state(plain) == original
    assert tree_state(outside) == {"b.txt": ("file0", b"outside the project\n")}


def test_unusual_file_names_round_trip(plain: Path, store: Path) -> None:
    names = ["with space.txt", "star*[glob]?.txt", "new\nline.txt", "ünïcödé.txt", "-dash.txt"]
    for name in names:
        write(plain / "odd" / name, name)
    write(plain / "odd" / "weird:colon", "c")
    shadow = ShadowRepo(plain, store)
    first = shadow.snapshot()
    original = tree_state(plain)
    assert {f"odd/{n}" for n in [*names, "weird:colon"]} <= set(shadow.files(first.commit))
    assert shadow.read_file(first.commit, "odd/new\nline.txt") == b"new\nline.txt"

    (plain / "odd" / "star*[glob]?.txt").unlink()
    write(plain / "odd" / "with space.txt", "edited")
    assert set(shadow.diff(first.commit)) == {
        Change("D", "odd/star*[glob]?.txt"),
        Change("M", "odd/with space.txt"),
    }
    shadow.restore(first.commit)
    assert tree_state(plain) == original


# -- cost and correctness of the private index ------------------------------------------------


def test_the_private_index_is_kept_so_a_snapshot_only_handles_what_changed(
    tmp_path: Path, store: Path
) -> None:
    root = tmp_path / "many"
    for i in range(200):
        write(root / f"pkg{i % 10}" / f"mod{i}.py", f"value = {i}\n")
    shadow = ShadowRepo(root, store)
    first = shadow.snapshot()
    assert first.changed == 200

    write(root / "pkg3" / "mod3.py", "value = 'edited'\n")
    second = shadow.snapshot()
    assert second.changed == 1 and second.parent == first.commit
    assert shadow.diff(first.commit, second.commit) == [Change("M", "pkg3/mod3.py")]

    third = shadow.snapshot()
    assert third.changed == 0 and third.tree == second.tree and third.parent == second.commit
    assert index_in_use(store).is_file()


def test_a_same_size_edit_in_the_same_instant_is_still_seen(plain: Path, store: Path) -> None:
    shadow = ShadowRepo(plain, store)
    target = plain / "a.txt"
    write(target, "aaaa\n")
    before = target.stat()
    first = shadow.snapshot()

    write(target, "bbbb\n")  # same size, and forced to the very same mtime
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    second = shadow.snapshot()

    assert second.changed == 1
    assert shadow.read_file(second.commit, "a.txt") == b"bbbb\n"
    assert second.tree != first.tree


def test_a_damaged_private_index_costs_one_full_snapshot_not_an_error(
    plain: Path, store: Path
) -> None:
    shadow = ShadowRepo(plain, store)
    first = shadow.snapshot()
    index_in_use(store).write_bytes(b"not an index")
    Path(f"{index_in_use(store)}.lock").write_bytes(b"left by a killed process")

    second = shadow.snapshot()
    assert second.tree == first.tree and second.parent == first.commit
    assert shadow.snapshot().changed == 0


def test_the_periodic_stat_refresh_keeps_snapshots_correct(plain: Path, store: Path) -> None:
    shadow = ShadowRepo(plain, store)
    first = shadow.snapshot()
    write(plain / "a.txt", "edited\n")
    (plain / "dir" / "b.txt").unlink()
    os.utime(plain / "dir" / "sub" / "c.txt", ns=(0, 10**18))  # touched, same content
    shadow._refresh_due = 0.0  # white-box: what happens once a minute

    second = shadow.snapshot()
    assert second.changed == 3  # the touched file is re-read once, its index entry refreshed
    assert shadow.diff(first.commit, second.commit) == [
        Change("M", "a.txt"),
        Change("D", "dir/b.txt"),
    ]
    assert shadow._refresh_due > 0
    assert shadow.snapshot().changed == 0  # ... and not again


# -- isolation from the user's git setup ------------------------------------------------------


def test_global_config_hooks_and_inherited_git_variables_are_ignored(
    user_repo: Path, store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "hook-ran"
    hooks = tmp_path / "evil-hooks"
    hooks.mkdir()
    script = f"#!/bin/sh\necho \"$0\" >> '{marker}'\nexit 1\n"
    for name in ("pre-commit", "post-commit", "post-checkout", "reference-transaction",
                 "post-index-change", "post-rewrite"):  # fmt: skip
        write(hooks / name, script).chmod(0o755)
    write(tmp_path / "gpg", script).chmod(0o755)
    home = tmp_path / "fakehome"
    gitconfig = write(
        home / ".gitconfig",
        f"[core]\n\thooksPath = {hooks}\n\tautocrlf = true\n\texcludesFile = {home}/ignore\n"
        f"[user]\n\tuseConfigOnly = true\n"
        f"[commit]\n\tgpgSign = true\n[gpg]\n\tprogram = {tmp_path / 'gpg'}\n",
    )
    write(home / "ignore", "*.ignored-globally\n")
    write(home / ".config" / "git" / "attributes", "* text eol=crlf\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(gitconfig))

    # The trap works: plain git with this environment does run the hook.
    scratch = tmp_path / "scratch"
    subprocess.run(["git", "init", "-q", str(scratch)], check=True, capture_output=True)
    blob = subprocess.run(
        ["git", "hash-object", "-w", "--stdin"], cwd=scratch, input=b"x", capture_output=True
    ).stdout.decode()
    subprocess.run(["git", "update-ref", "refs/x", blob.strip()], cwd=scratch, capture_output=True)
    assert marker.exists()
    marker.unlink()

    before = user_state(user_repo)
    # Variables that would point git at the user's own repository, or inject config.
    monkeypatch.setenv("GIT_DIR", str(user_repo / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(user_repo))
    monkeypatch.setenv("GIT_INDEX_FILE", str(user_repo / ".git" / "index"))
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "core.hooksPath")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", str(hooks))

    write(user_repo / "crlf.txt", b"one\ntwo\r\n")
    write(user_repo / "x.ignored-globally", "as git status would: ignored\n")
    shadow = ShadowRepo(user_repo, store)
    first = shadow.snapshot(ref="refs/agentguard/runs/r/steps/1")
    files = shadow.files(first.commit)
    assert "crlf.txt" in files  # the global attributes (eol=crlf) are not used
    assert "x.ignored-globally" not in files  # the user's global ignore rules are honoured
    assert shadow.read_file(first.commit, "crlf.txt") == b"one\ntwo\r\n"  # bytes as they are
    write(user_repo / "README.md", "agent edit\n")
    shadow.restore(first.commit)

    assert (user_repo / "crlf.txt").read_bytes() == b"one\ntwo\r\n"
    assert not marker.exists()
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_CONFIG_COUNT"):
        monkeypatch.delenv(name)
    (user_repo / "crlf.txt").unlink()
    (user_repo / "x.ignored-globally").unlink()
    assert user_state(user_repo) == before


# -- errors say what to do --------------------------------------------------------------------


def test_the_store_must_be_outside_the_project(plain: Path) -> None:
    with pytest.raises(SnapshotError, match="inside the project"):
        ShadowRepo(plain, plain / ".agentguard")
    with pytest.raises(SnapshotError, match="inside the project"):
        ShadowRepo(plain, plain)
    assert not (plain / ".agentguard").exists()


def test_a_missing_project_is_a_project_error_that_says_what_to_pass(
    tmp_path: Path, store: Path
) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ProjectError) as excinfo:
        ShadowRepo(missing, store)
    assert str(excinfo.value) == (
        f"Project folder {missing} does not exist; pass the folder your agent edits (project=...)."
    )
    with pytest.raises(ProjectError, match="not a folder"):
        ShadowRepo(write(tmp_path / "file.txt", "x"), store)


def test_unknown_commits_and_paths_raise_snapshot_errors(plain: Path, store: Path) -> None:
    shadow = ShadowRepo(plain, store)
    snap = shadow.snapshot()
    bogus = "deadbeef" * 5
    assert shadow.has_commit(snap.commit) and not shadow.has_commit(bogus)
    assert not shadow.has_commit("--all")
    for call in (
        lambda: shadow.restore(bogus),
        lambda: shadow.diff(bogus),
        lambda: shadow.diff(snap.commit, bogus),
        lambda: shadow.files(bogus),
        lambda: shadow.matches(bogus),
    ):
        with pytest.raises(SnapshotError, match=rf"{bogus}.*pruned"):
            call()
    with pytest.raises(SnapshotError, match=r"missing\.txt is not a file"):
        shadow.read_file(snap.commit, "missing.txt")
    with pytest.raises(SnapshotError, match="under refs/"):
        shadow.snapshot(ref="agentguard/x")
    with pytest.raises(SnapshotError, match="update-ref failed"):
        shadow.snapshot(ref="refs/agentguard/bad..name")
    assert tree_state(plain)["a.txt"] == ("file0", b"a\n")  # nothing was restored


# -- diff, refs, drift, threads ---------------------------------------------------------------


def test_diff_reports_added_modified_and_deleted_paths(plain: Path, store: Path) -> None:
    shadow = ShadowRepo(plain, store)
    first = shadow.snapshot()
    write(plain / "a.txt", "modified\n")
    (plain / "dir" / "b.txt").unlink()
    write(plain / "added" / "new.txt", "new\n")
    second = shadow.snapshot()

    assert shadow.diff(first.commit, second.commit) == [
        Change("M", "a.txt"),
        Change("A", "added/new.txt"),
        Change("D", "dir/b.txt"),
    ]
    assert shadow.diff(second.commit, first.commit) == [
        Change("M", "a.txt"),
        Change("D", "added/new.txt"),
        Change("A", "dir/b.txt"),
    ]
    assert shadow.diff(second.commit, second.commit) == []

    write(plain / "later.txt", "after the second snapshot\n")
    assert shadow.diff(second.commit) == [Change("A", "later.txt")]  # against the working tree


def test_refs_pin_snapshots_and_the_head_follows_the_latest(plain: Path, store: Path) -> None:
    shadow = ShadowRepo(plain, store)
    first = shadow.snapshot(ref="refs/agentguard/runs/run-1/steps/1")
    write(plain / "a.txt", "step two\n")
    second = shadow.snapshot("step 2", ref="refs/agentguard/runs/run@1/steps/2")  # via git
    refs = shadow_git(shadow, "for-each-ref", "--format=%(refname) %(objectname)")
    assert refs.splitlines() == [
        f"{HEAD_REF} {second.commit}",
        f"refs/agentguard/runs/run-1/steps/1 {first.commit}",
        f"refs/agentguard/runs/run@1/steps/2 {second.commit}",
    ]
    assert shadow_git(shadow, "log", "--format=%s", HEAD_REF).splitlines() == [
        "step 2",
        "agentguard snapshot",
    ]
    assert shadow.has_commit("refs/agentguard/runs/run-1/steps/1")


def test_matches_detects_drift_and_keeps_it(plain: Path, store: Path) -> None:
    shadow = ShadowRepo(plain, store)
    checkpoint = shadow.snapshot()
    same, snap = shadow.matches(checkpoint.commit)
    assert same and snap.tree == checkpoint.tree

    write(plain / "a.txt", "drifted\n")
    same, drift = shadow.matches(checkpoint.commit)
    assert not same
    assert shadow.read_file(drift.commit, "a.txt") == b"drifted\n"


def test_concurrent_snapshots_from_threads_and_instances_form_one_history(
    plain: Path, store: Path
) -> None:
    shadows = [ShadowRepo(plain, store), ShadowRepo(plain, store)]
    errors: list[BaseException] = []

    def work(shadow: ShadowRepo, n: int) -> None:
        try:
            for i in range(4):
                write(plain / f"t{n}.txt", f"{n}:{i}\n")
                shadow.snapshot(ref=f"refs/agentguard/runs/t{n}/steps/{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(shadows[n % 2], n)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    history = shadow_git(shadows[0], "rev-list", HEAD_REF)
    assert len(history.split()) == 16  # every snapshot chained onto the one before
    final = shadows[1].snapshot()
    assert final.changed == 0
    assert set(shadows[0].files(final.commit)) >= {f"t{n}.txt" for n in range(4)}
