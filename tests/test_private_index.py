"""The shadow store's private index lives outside the store, in memory-backed storage
(agentguard.shadow.private_index): every way that folder can go wrong — gone after a reboot or a
logout, opened to others, owned by someone else, a symlink, nearly full — still gives correct
snapshots; the store records the one index in use, so a move never picks up a stale index
(which would carry a since-ignored file back into a snapshot) and gc protects the right one.
The head ref is replaced by an exchange (agentguard.shadow.refs), leaving no lock."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agentguard.shadow import private_index as private_index_module
from agentguard.shadow import refs
from agentguard.shadow.bare import BareGit
from agentguard.shadow.private_index import INDEX_DIR_ENV, SHARED_MEMORY, index_in_use
from agentguard.snapshots import HEAD_REF, ShadowRepo

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not SHARED_MEMORY.is_dir(), reason="needs /dev/shm"
)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    for n in range(30):
        path = root / f"pkg{n % 3}" / f"file{n}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"value = {n}\n")
    return root


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "indexes"
    monkeypatch.setenv(INDEX_DIR_ENV, str(path))
    return path


def files_in(shadow: ShadowRepo, commit: str) -> dict[str, bytes]:
    return {name: shadow.read_file(commit, name) for name in shadow.files(commit)}


@linux_only
def test_by_default_the_index_is_in_a_private_folder_in_shared_memory(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(INDEX_DIR_ENV)
    store = tmp_path / "store"
    shadow = ShadowRepo(tree, store)
    index = index_in_use(store)  # what gc (retention) protects: the one recorded in the store
    try:
        snap = shadow.snapshot()
        assert index.parent == SHARED_MEMORY / f"agentguard-{os.getuid()}"
        assert index.is_file() and not (store / "index").exists()
        assert not index.parent.stat().st_mode & 0o077  # only this user can read it
        assert len(shadow.files(snap.commit)) == 30
    finally:
        index.unlink(missing_ok=True)
        index.with_suffix(".store").unlink(missing_ok=True)


def test_a_store_made_before_the_record_keeps_its_index_where_it_stays(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    monkeypatch.setenv(INDEX_DIR_ENV, "")  # inside the store, as every store was before
    first = ShadowRepo(tree, store).snapshot()
    (store / "repo.git" / "info" / "agentguard-index").unlink()  # made before the record

    shadow = ShadowRepo(tree, store)
    (tree / "pkg0" / "file0.py").write_text("value = 'edited'\n")
    second = shadow.snapshot()
    # only the edited file was read: with an empty index every file would count as changed
    assert second.changed == 1 and second.parent == first.commit


def test_a_moved_index_starts_empty_so_a_stale_one_never_brings_back_a_dropped_file(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    (tree / "notes.txt").write_text("private notes\n")
    monkeypatch.setenv(INDEX_DIR_ENV, "")
    shadow = ShadowRepo(tree, store)
    shadow.snapshot()
    stale = (store / "index").read_bytes()  # holds notes.txt
    monkeypatch.setenv(INDEX_DIR_ENV, str(tmp_path / "indexes"))
    elsewhere = ShadowRepo(tree, store)
    (tree / ".gitignore").write_text("notes.txt\n")  # the user ignores it from now on
    assert "notes.txt" not in elsewhere.files(elsewhere.snapshot().commit)
    (store / "index").write_bytes(stale)  # an index left in the store from an earlier time

    monkeypatch.setenv(INDEX_DIR_ENV, "")  # a process that keeps the index in the store
    snap = ShadowRepo(tree, store).snapshot()

    assert "notes.txt" not in shadow.files(snap.commit) and snap.changed == 31
    assert index_in_use(store) == store / "index"
    assert not any((tmp_path / "indexes").iterdir())  # the one it replaced is gone


def test_an_index_lost_with_its_folder_costs_one_full_snapshot(tree: Path, folder: Path) -> None:
    shadow = ShadowRepo(tree, folder.parent / "store")
    first = shadow.snapshot()
    shutil.rmtree(folder)  # a reboot, or systemd removing the user's /dev/shm files at logout
    (tree / "pkg1" / "file1.py").write_text("value = 'after the reboot'\n")

    second = shadow.snapshot()

    assert second.parent == first.commit
    assert second.changed == 30  # every file read again: the index was gone
    got = files_in(shadow, second.commit)
    assert got["pkg1/file1.py"] == b"value = 'after the reboot'\n" and len(got) == 30
    assert not folder.stat().st_mode & 0o077
    third = shadow.snapshot()
    assert third.changed == 0 and third.tree == second.tree


def test_a_folder_opened_to_others_is_left_for_the_store_mid_run(tree: Path, folder: Path) -> None:
    store = folder.parent / "store"
    shadow = ShadowRepo(tree, store)
    first = shadow.snapshot()
    folder.chmod(0o777)  # anyone could now read it, or swap in an index of their own
    (tree / "pkg2" / "file2.py").write_text("value = 'edited'\n")

    second = shadow.snapshot()

    assert (store / "index").is_file()  # the index went back into the store
    assert second.parent == first.commit and second.changed == 30  # read afresh
    assert files_in(shadow, second.commit)["pkg2/file2.py"] == b"value = 'edited'\n"
    assert index_in_use(store) == store / "index"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_a_folder_someone_else_owns_is_never_used(tree: Path, folder: Path) -> None:
    folder.mkdir(mode=0o700)
    os.chown(folder, 4242, -1)
    store = folder.parent / "store"
    snap = ShadowRepo(tree, store).snapshot()
    assert (store / "index").is_file() and not any(folder.iterdir())
    assert len(ShadowRepo(tree, store).files(snap.commit)) == 30


def test_a_symlink_in_the_folders_place_is_never_followed(
    tree: Path, folder: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    folder.symlink_to(elsewhere)
    store = tmp_path / "store"
    ShadowRepo(tree, store).snapshot()
    assert (store / "index").is_file() and not any(elsewhere.iterdir())


@pytest.fixture
def exchanges(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The exchange calls refs makes (their results), the real call still made."""
    real = refs._exchange
    if real is None:
        pytest.skip("renameat2 is not available here")
    made: list[int] = []

    def spy(*args: object) -> int:
        made.append(real(*args))
        return made[-1]

    monkeypatch.setattr(refs, "_exchange", spy)
    return made


def test_the_head_ref_moves_by_exchange_without_leaving_a_lock(
    tree: Path, folder: Path, exchanges: list[int]
) -> None:
    store = folder.parent / "store"
    shadow = ShadowRepo(tree, store)
    commits = [shadow.snapshot(ref=f"refs/agentguard/runs/r/steps/{n}").commit for n in range(3)]
    git_dir = store / "repo.git"
    assert (git_dir / HEAD_REF).read_text().strip() == commits[-1]
    assert exchanges == [0, 0]  # the head, after its first write; step refs are new files
    assert not list(git_dir.glob("refs/**/*.lock"))
    log = subprocess.run(
        ["git", "--git-dir", str(git_dir), "reflog", "show", "--format=%H", HEAD_REF],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert log == commits[::-1]


def test_a_process_killed_between_the_exchange_and_the_unlink_leaves_nothing_stuck(
    tree: Path, folder: Path
) -> None:
    if refs._exchange is None:
        pytest.skip("renameat2 is not available here")
    store = folder.parent / "store"
    shadow = ShadowRepo(tree, store)
    first = shadow.snapshot()
    (tree / "pkg0" / "file3.py").write_text("value = 'next'\n")
    second = shadow.snapshot()
    head = store / "repo.git" / HEAD_REF
    lock = Path(f"{head}.lock")
    # what a kill right after the exchange leaves: the new value in place, the old in the lock
    lock.write_text(f"{first.commit}\n")
    assert refs._exchange(-100, bytes(lock), -100, bytes(head), 2) == 0
    assert head.read_text().strip() == first.commit and lock.read_text().strip() == second.commit

    third = shadow.snapshot()

    assert third.parent == first.commit and not lock.exists()
    assert head.read_text().strip() == third.commit


def test_without_the_exchange_call_the_ref_is_renamed_into_place(
    tree: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(refs, "_exchange", None)  # another OS, or a libc without renameat2
    store = folder.parent / "store"
    shadow = ShadowRepo(tree, store)
    first, second = shadow.snapshot(), shadow.snapshot()
    assert second.parent == first.commit
    assert (store / "repo.git" / HEAD_REF).read_text().strip() == second.commit


def test_a_nearly_full_folder_is_left_for_the_store(
    tree: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = folder.parent / "store"
    shadow = ShadowRepo(tree, store)
    first = shadow.snapshot()
    assert not (store / "index").exists()
    # as if the folder's file system (a container's 64 MB /dev/shm) had filled up
    monkeypatch.setattr(private_index_module, "MIN_FREE_BYTES", 1 << 62)
    (tree / "pkg1" / "file4.py").write_text("value = 'edited'\n")

    second = shadow.snapshot()

    assert (store / "index").is_file() and second.parent == first.commit
    assert files_in(shadow, second.commit)["pkg1/file4.py"] == b"value = 'edited'\n"


def test_a_head_ref_emptied_by_a_power_loss_is_found_again_from_its_reflog(
    tree: Path, folder: Path
) -> None:
    store = folder.parent / "store"
    shadow = ShadowRepo(tree, store)
    first = shadow.snapshot()
    (store / "repo.git" / HEAD_REF).write_bytes(b"")  # renamed into place, never written out
    second = ShadowRepo(tree, store).snapshot()
    assert second.parent == first.commit  # the history goes on, not a new root


def test_the_index_of_a_deleted_store_is_removed_when_another_starts_one(
    tree: Path, folder: Path
) -> None:
    gone = folder.parent / "gone-store"
    ShadowRepo(tree, gone).snapshot()
    [orphan] = folder.glob("*.index")
    shutil.rmtree(gone)  # e.g. a demo's home, deleted with its store
    for note in folder.glob("*.store"):  # set up long enough ago to be swept
        os.utime(note, (0, 0))

    ShadowRepo(tree, folder.parent / "new-store").snapshot()

    assert not orphan.exists() and len(list(folder.glob("*.index"))) == 1
    assert len(list(folder.glob("*.store"))) == 1


def test_gc_reads_the_index_the_store_records(tree: Path, folder: Path) -> None:
    store = folder.parent / "store"
    ShadowRepo(tree, store).snapshot()
    listed = BareGit(store, purpose="test").run(["ls-files", "-z"]).split(b"\0")
    assert len([p for p in listed if p]) == 30  # the index in the folder, not an absent one


def test_an_index_naming_objects_the_store_lost_is_dropped_not_fatal(
    tree: Path, folder: Path
) -> None:
    store = folder.parent / "store"
    shadow = ShadowRepo(tree, store)
    shadow.snapshot()
    (tree / "pkg0" / "file0.py").write_text("value = 'only in the index and one commit'\n")
    second = shadow.snapshot()
    where = f"{second.commit}:pkg0/file0.py"
    blob = subprocess.run(
        ["git", "--git-dir", str(store / "repo.git"), "rev-parse", where],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (store / "repo.git" / "objects" / blob[:2] / blob[2:]).unlink()  # pruned, or a lost file
    (tree / "pkg0" / "file3.py").write_text("value = 'next'\n")  # its folder's tree is rebuilt

    third = shadow.snapshot()  # write-tree fails on the index once; read afresh, it succeeds

    assert third.parent == second.commit and third.changed == 30
    assert shadow.read_file(third.commit, "pkg0/file0.py") == (
        b"value = 'only in the index and one commit'\n"
    )
