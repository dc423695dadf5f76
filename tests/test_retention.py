"""gc of the shadow git stores: old runs' snapshots really go, everything else keeps working,
and the user's own repository is never read or written.

Real git repositories and a real store on each engine (a SQLite file in tmp_path, a fresh
PostgreSQL schema); no test sleeps (ages come from the `now` passed to collect()).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import agentguard
from agentguard.errors import SnapshotError
from agentguard.home import project_key
from agentguard.retention import (
    GcReport,
    RetentionPolicy,
    collect,
    format_bytes,
    pruned_message,
)
from agentguard.shadow.private_index import index_in_use
from agentguard.snapshots import HEAD_REF, ShadowRepo
from agentguard.store import STORE_ENV, Store, dumps, open_store
from tests.conftest import ENGINES, Engine, git, user

NOW = 1_800_000_000.0
DAY = 86_400.0
BIG = 256_000  # random bytes per step: incompressible, so freed bytes are plain to see


@dataclass
class World:
    home: Path
    project: Path
    store: Store
    shadow: ShadowRepo

    @property
    def store_dir(self) -> Path:
        return self.shadow.store_dir


@pytest.fixture
def world(engine: Engine, project: Path) -> Iterator[World]:
    """A store on each engine (SQLite, PostgreSQL) and its shadow store under `store.home`."""
    store = engine.open()
    shadow = ShadowRepo(project, store.home / "shadow" / project_key(project))
    yield World(store.home, project, store, shadow)


def add_run(
    w: World,
    run_id: str,
    *,
    age_days: float,
    status: str = "completed",
    steps: int = 2,
    size: int = BIG,
) -> list[str]:
    """A run as Guard records it: a runs row, one ref'd snapshot and one row per step.

    Each step adds a big random file; they are deleted afterwards, so only this run holds them.
    """
    at = NOW - age_days * DAY
    w.store.insert_run(
        {
            "id": run_id,
            "name": run_id,
            "project": str(w.project),
            "status": status,
            "created_at": at,
            "updated_at": at,
        }
    )
    rng = random.Random(run_id)
    commits = []
    for n in range(steps):
        (w.project / f"{run_id}-{n}.bin").write_bytes(rng.randbytes(size))
        ref = f"refs/agentguard/runs/{run_id}/steps/{n}"
        snap = w.shadow.snapshot(f"agentguard run {run_id} step {n}", ref=ref)
        add_row(w, run_id, snap.commit, snap.tree, at=at)
        commits.append(snap.commit)
    for n in range(steps):
        (w.project / f"{run_id}-{n}.bin").unlink()
    return commits


def add_row(w: World, run_id: str, commit: str, tree: str, *, at: float, kind: str = "checkpoint"):
    w.store.insert_snapshot(
        {
            "commit_sha": commit,
            "project": str(w.project),
            "run_id": run_id,
            "step_id": None,
            "kind": kind,
            "created_at": at,
            "tree": tree,
            "changed": 1,
            "skipped": dumps([]),
            "duration_ms": 1.0,
        }
    )


def raw_git(store_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A second opinion on the bare shadow repository, without ShadowRepo (or a project)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_DIR=str(store_dir / "repo.git"), GIT_CONFIG_GLOBAL=os.devnull)
    env.update(GIT_CONFIG_NOSYSTEM="1")
    return subprocess.run(["git", *args], env=env, capture_output=True, text=True, check=check)


def run_refs(store_dir: Path) -> list[str]:
    out = raw_git(store_dir, "for-each-ref", "--format=%(refname)", "refs/agentguard/").stdout
    return out.split()


def has_object(store_dir: Path, commit: str) -> bool:
    return raw_git(store_dir, "cat-file", "-e", commit, check=False).returncode == 0


def size_of(folder: Path) -> int:
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def fingerprint(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under `folder`: size, mtime and a hash of its bytes.

    A shared index's mtime is left out: git refreshes it whenever it reads the split index, so
    that it is not expired while in use; its bytes must still be the same.
    """
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            st = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            mtime = 0 if path.name.startswith("sharedindex.") else st.st_mtime_ns
            found[path.relative_to(folder).as_posix()] = (st.st_size, mtime, digest)
    return found


def pruned_at(w: World) -> dict[str, float | None]:
    rows = w.store.query("select commit_sha, pruned_at from snapshots")
    return {r["commit_sha"]: r["pruned_at"] for r in rows}


AGE_ONLY = RetentionPolicy(max_age_days=30, keep_runs=0)


# -- what gets pruned ----------------------------------------------------------------------------


def test_age_pruning_really_frees_the_bytes_of_old_runs(world: World) -> None:
    old1 = add_run(world, "old1", age_days=45)
    old2 = add_run(world, "old2", age_days=31)
    new = add_run(world, "new", age_days=2)
    before = size_of(world.store_dir)

    report = collect(world.store, AGE_ONLY, now=NOW)

    assert sorted(report.runs_pruned) == ["old1", "old2"]
    assert report.refs_deleted == 4 and report.snapshots_pruned == 4 and not report.dry_run
    assert report.bytes_before == before and report.bytes_after == size_of(world.store_dir)
    assert report.bytes_before - report.bytes_after > 4 * BIG * 0.95  # four big blobs gone
    assert report.projects == 1 and report.stores[0].project == str(world.project)
    for commit in old1 + old2:
        assert not world.shadow.has_commit(commit)
    for commit in new:
        assert world.shadow.has_commit(commit)
    assert run_refs(world.store_dir) == sorted(
        [HEAD_REF, "refs/agentguard/runs/new/steps/0", "refs/agentguard/runs/new/steps/1"]
    )
    marks = pruned_at(world)
    assert all(marks[c] == NOW for c in old1 + old2)
    assert all(marks[c] is None for c in new)
    events = world.store.events("old1")
    assert [e["kind"] for e in events] == ["snapshots_pruned"]
    assert world.store.events("new") == []
    assert raw_git(world.store_dir, "fsck", "--full", "--no-dangling").returncode == 0
    summary = report.summary()
    assert (
        summary.startswith("freed ") and "from 1 project, 2 runs (4 refs, 4 snapshots)" in summary
    )


def test_keep_runs_protects_the_newest_runs_whatever_their_age(world: World) -> None:
    commits = {name: add_run(world, name, age_days=age, steps=1) for name, age in
               [("r1", 400), ("r2", 300), ("r3", 200), ("r4", 100)]}  # fmt: skip

    report = collect(world.store, RetentionPolicy(max_age_days=30, keep_runs=2), now=NOW)

    assert report.runs_pruned == ["r2", "r1"]  # newest first
    assert [world.shadow.has_commit(c[0]) for c in commits.values()] == [False, False, True, True]


def test_running_and_waiting_runs_are_never_pruned(world: World) -> None:
    done = add_run(world, "done", age_days=400, status="interrupted")
    busy = add_run(world, "busy", age_days=400, status="running")
    queued = add_run(world, "queued", age_days=400, status="waiting")

    report = collect(
        world.store, RetentionPolicy(max_age_days=0, keep_runs=0, max_bytes=0), now=NOW
    )

    assert report.runs_pruned == ["done"]
    assert all(world.shadow.has_commit(c) for c in busy + queued)
    assert not any(world.shadow.has_commit(c) for c in done)
    assert report.stores[0].over_budget
    assert "1 project still over max_bytes (0 B)" in report.summary()


def test_max_bytes_drops_the_oldest_runs_until_the_store_fits(world: World) -> None:
    oldest = add_run(world, "oldest", age_days=3, steps=1, size=2 * BIG)
    middle = add_run(world, "middle", age_days=2, steps=1, size=2 * BIG)
    newest = add_run(world, "newest", age_days=1, steps=1, size=2 * BIG)
    budget = size_of(world.store_dir) - BIG  # one run's blob (2 * BIG) must go, one is enough
    policy = RetentionPolicy(max_age_days=None, keep_runs=None, max_bytes=budget)

    report = collect(world.store, policy, now=NOW)

    assert report.runs_pruned == ["oldest"]
    assert report.bytes_after == size_of(world.store_dir) <= budget
    assert not report.stores[0].over_budget
    assert not world.shadow.has_commit(oldest[0])
    assert world.shadow.has_commit(middle[0]) and world.shadow.has_commit(newest[0])
    # Already within the budget: a second gc prunes nothing.
    again = collect(world.store, policy, now=NOW)
    assert again.runs_pruned == [] and again.bytes_after == report.bytes_after
    assert again.summary().startswith("nothing to prune; shadow stores hold ")


def test_keep_runs_wins_over_max_bytes(world: World) -> None:
    add_run(world, "a", age_days=3, steps=1)
    add_run(world, "b", age_days=2, steps=1)
    policy = RetentionPolicy(max_age_days=None, keep_runs=1, max_bytes=1)

    report = collect(world.store, policy, now=NOW)

    assert report.runs_pruned == ["a"]
    assert report.stores[0].over_budget


def test_dry_run_changes_nothing_and_predicts_the_real_gc(world: World) -> None:
    old = add_run(world, "old", age_days=60, steps=3)
    add_run(world, "new", age_days=1)
    files, rows, refs = fingerprint(world.store_dir), pruned_at(world), run_refs(world.store_dir)

    dry = collect(world.store, AGE_ONLY, dry_run=True, now=NOW)

    assert fingerprint(world.store_dir) == files
    assert pruned_at(world) == rows and run_refs(world.store_dir) == refs
    assert world.store.events("old") == []
    assert all(world.shadow.has_commit(c) for c in old)
    assert dry.dry_run and dry.runs_pruned == ["old"]
    assert (dry.refs_deleted, dry.snapshots_pruned) == (3, 3)
    assert dry.bytes_before == size_of(world.store_dir)
    summary = dry.summary()
    assert summary.startswith("dry run: would free about ") and "nothing was changed" in summary

    real = collect(world.store, AGE_ONLY, now=NOW)

    assert (real.runs_pruned, real.refs_deleted, real.snapshots_pruned) == (["old"], 3, 3)
    assert abs(dry.bytes_after - real.bytes_after) < 0.1 * real.bytes_before


def test_a_dry_run_on_a_store_without_a_lock_file_creates_none(world: World) -> None:
    add_run(world, "old", age_days=60, steps=1)
    (world.store_dir / "lock").unlink()
    report = collect(world.store, AGE_ONLY, dry_run=True, now=NOW)
    assert report.runs_pruned == ["old"] and not (world.store_dir / "lock").exists()


# -- what keeps working ---------------------------------------------------------------------------


def test_after_gc_snapshots_and_restores_of_kept_checkpoints_still_work(world: World) -> None:
    old = add_run(world, "old", age_days=60)
    kept = add_run(world, "kept", age_days=1)
    world.shadow.snapshot()  # records that add_run deleted its files afterwards
    head = raw_git(world.store_dir, "rev-parse", HEAD_REF).stdout.strip()
    index = index_in_use(world.store_dir)
    index_bytes = index.read_bytes()

    collect(world.store, AGE_ONLY, now=NOW)

    assert raw_git(world.store_dir, "rev-parse", HEAD_REF).stdout.strip() == head
    assert index.read_bytes() == index_bytes  # the private index is untouched
    for shadow in (world.shadow, ShadowRepo(world.project, world.store_dir)):  # old and new process
        assert shadow.snapshot().changed == 0  # still O(changed): nothing re-added
    (world.project / "app.py").write_text("def add(a, b):\n    return a + b\n")
    snap = world.shadow.snapshot(ref="refs/agentguard/runs/next/steps/0")
    assert snap.changed == 1 and world.shadow.read_file(snap.commit, "app.py").endswith(b"a + b\n")

    result = world.shadow.restore(kept[1])
    assert {c.path for c in result.changes} == {"kept-0.bin", "kept-1.bin", "app.py"}
    assert (world.project / "kept-1.bin").read_bytes() == world.shadow.read_file(
        kept[1], "kept-1.bin"
    )
    with pytest.raises(SnapshotError, match="pruned"):
        world.shadow.restore(old[0])


def test_objects_only_the_private_index_holds_survive_gc(world: World) -> None:
    old = add_run(world, "old", age_days=60)
    add_run(world, "new", age_days=1, steps=1)
    world.shadow.restore(old[1])  # the index now holds the old run's blobs, the head does not
    old_tree = raw_git(world.store_dir, "rev-parse", f"{old[1]}^{{tree}}").stdout.strip()
    backup_row = world.store.query("select count(*) as n from snapshots")[0]["n"]

    report = collect(world.store, AGE_ONLY, now=NOW)

    assert report.runs_pruned == ["old"] and not world.shadow.has_commit(old[1])
    assert world.store.query("select count(*) as n from snapshots")[0]["n"] == backup_row
    snap = ShadowRepo(world.project, world.store_dir).snapshot()  # write-tree needs those blobs
    assert snap.tree == old_tree
    assert raw_git(world.store_dir, "fsck", "--full", "--no-dangling").returncode == 0


def test_when_every_run_is_pruned_the_head_and_the_next_snapshot_survive(world: World) -> None:
    only = add_run(world, "only", age_days=60)

    report = collect(world.store, AGE_ONLY, now=NOW)

    assert report.runs_pruned == ["only"]
    assert not world.shadow.has_commit(only[0])
    assert world.shadow.has_commit(only[1])  # the head's commit stays, so its row is not marked
    assert pruned_at(world) == {only[0]: NOW, only[1]: None}
    assert run_refs(world.store_dir) == [HEAD_REF]
    assert world.shadow.snapshot().parent == only[1]


def test_a_kept_run_resumed_after_a_pruned_one_keeps_every_snapshot(world: World) -> None:
    """History a0 -> a_drift -> b0 -> c0: only the pruned b0 leads to a_drift."""
    (a0,) = add_run(world, "a", age_days=90, status="waiting", steps=1)
    (world.project / "drift.txt").write_text("changed during a step of run a\n")
    drift = world.shadow.snapshot("agentguard drift check")  # no ref: only its row names it
    add_row(world, "a", drift.commit, drift.tree, at=NOW - 90 * DAY, kind="drift")
    (b0,) = add_run(world, "b", age_days=60, steps=1)
    (c0,) = add_run(world, "c", age_days=1, steps=1)

    report = collect(world.store, AGE_ONLY, now=NOW)

    assert report.runs_pruned == ["b"]
    assert not world.shadow.has_commit(b0)
    assert all(world.shadow.has_commit(c) for c in (a0, drift.commit, c0))
    assert f"refs/agentguard/runs/a/kept/{drift.commit}" in run_refs(world.store_dir)
    world.shadow.restore(drift.commit)
    assert (world.project / "drift.txt").read_text() == "changed during a step of run a\n"
    assert raw_git(world.store_dir, "fsck", "--full", "--no-dangling").returncode == 0

    # The run finishes and ages out: its snapshots, and the ref gc made, go too.
    world.store.update_run("a", status="completed")
    again = collect(world.store, AGE_ONLY, now=NOW)
    assert again.runs_pruned == ["a"] and again.refs_deleted == 2
    assert not world.shadow.has_commit(drift.commit)


def test_a_second_gc_changes_nothing(world: World) -> None:
    add_run(world, "old", age_days=60)
    add_run(world, "new", age_days=1)
    collect(world.store, AGE_ONLY, now=NOW)
    files = fingerprint(world.store_dir)

    report = collect(world.store, AGE_ONLY, now=NOW)

    assert report.runs_pruned == [] and report.refs_deleted == 0
    assert fingerprint(world.store_dir) == files
    assert report.bytes_before == report.bytes_after == size_of(world.store_dir)


# -- what is never touched ------------------------------------------------------------------------


def test_the_users_project_and_git_repository_are_never_touched(world: World) -> None:
    git(world.project, "stash", "list")
    (world.project / "notes.log").write_text("ignored\n")
    add_run(world, "old", age_days=60)
    add_run(world, "new", age_days=1)
    (world.project / "app.py").write_text("work in progress\n")
    status = git(world.project, "status", "--porcelain", "--ignored")
    head, branches = git(world.project, "rev-parse", "HEAD"), git(world.project, "branch", "-a")
    before = fingerprint(world.project)
    assert ".git/HEAD" in before and ".git/index" in before

    locked = os.geteuid() != 0  # root reads through permissions: then the fingerprint decides
    if locked:
        (world.project / ".git").chmod(0)  # gc must not even need to read it
    try:
        report = collect(world.store, AGE_ONLY, now=NOW)
    finally:
        (world.project / ".git").chmod(0o755)

    assert report.runs_pruned == ["old"]
    assert fingerprint(world.project) == before
    assert git(world.project, "status", "--porcelain", "--ignored") == status
    assert git(world.project, "rev-parse", "HEAD") == head
    assert git(world.project, "branch", "-a") == branches
    assert git(world.project, "stash", "list") == ""


def test_a_store_whose_project_folder_was_deleted_is_still_collected(world: World) -> None:
    old = add_run(world, "old", age_days=60)
    new = add_run(world, "new", age_days=1)
    shutil.rmtree(world.project)

    report = collect(world.store, AGE_ONLY, now=NOW)

    assert report.runs_pruned == ["old"]
    store = report.stores[0]
    assert store.project == str(world.project) and not store.project_exists
    assert store.freed > 2 * BIG * 0.95
    assert not any(has_object(world.store_dir, c) for c in old)
    assert all(has_object(world.store_dir, c) for c in new)
    assert not world.project.exists()  # gc did not recreate it


def test_refs_without_a_run_row_are_aged_by_their_commit_time(world: World) -> None:
    (world.project / "orphan.bin").write_bytes(random.Random(1).randbytes(BIG))
    snap = world.shadow.snapshot(ref="refs/agentguard/runs/orphan/steps/0")
    (world.project / "orphan.bin").unlink()
    world.shadow.snapshot()
    commit_time = int(raw_git(world.store_dir, "log", "-1", "--format=%ct", snap.commit).stdout)

    young = collect(world.store, AGE_ONLY, now=commit_time + 29 * DAY)
    assert young.runs_pruned == [] and world.shadow.has_commit(snap.commit)

    old = collect(world.store, AGE_ONLY, now=commit_time + 31 * DAY)
    assert old.runs_pruned == ["orphan"] and not world.shadow.has_commit(snap.commit)
    assert old.bytes_before - old.bytes_after > BIG * 0.95


# -- end to end, through a guarded client ---------------------------------------------------------


@pytest.fixture(params=ENGINES)
def store_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The engine a guarded client and open_store() use: SQLite under AGENTGUARD_HOME, or a
    PostgreSQL schema named by $AGENTGUARD_STORE."""
    if request.param == "postgresql":
        monkeypatch.setenv(STORE_ENV, request.getfixturevalue("postgres_schema_url"))
    else:
        monkeypatch.delenv(STORE_ENV, raising=False)
    return request.param


def test_checkpoints_of_a_guarded_client_are_collected(
    store_env, guarded, home, project, clock
) -> None:
    first = guarded()
    (project / "data.bin").write_bytes(random.Random(2).randbytes(BIG))
    msg = first.messages.create(model="claude-opus-4-7", max_tokens=64, messages=[user("go")])
    old_checkpoint = agentguard.info(msg).checkpoint
    first.agentguard.close()
    clock.advance(40 * DAY)
    (project / "data.bin").unlink()
    second = guarded()
    msg = second.messages.create(model="claude-opus-4-7", max_tokens=64, messages=[user("go")])
    new_checkpoint = agentguard.info(msg).checkpoint
    store = open_store(home)
    assert store_env == "sqlite" or not isinstance(store, Store)

    report = collect(store, AGE_ONLY, now=clock.now())

    assert report.runs_pruned == [first.run_id]  # the second run is still running
    shadow = ShadowRepo(project, home / "shadow" / project_key(project))
    assert not shadow.has_commit(old_checkpoint) and shadow.has_commit(new_checkpoint)
    (row,) = store.query("select * from snapshots where commit_sha = ?", [old_checkpoint])
    assert pruned_message(row["pruned_at"]).startswith("snapshot pruned by gc on ")
    assert report.bytes_before - report.bytes_after > BIG * 0.95
    store.close()


# -- the small parts ------------------------------------------------------------------------------


def test_an_empty_home_has_nothing_to_collect(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "empty-home")
    report = collect(store)
    assert report == GcReport(0, [], 0, 0, 0, False)
    assert report.summary() == "no shadow stores to collect"
    store.close()


def test_policy_values_are_checked() -> None:
    for bad in ({"max_age_days": -1}, {"keep_runs": -1}, {"max_bytes": -5}):
        with pytest.raises(ValueError):
            RetentionPolicy(**bad)


def test_sizes_read_like_a_person_would_write_them() -> None:
    assert [format_bytes(n) for n in (0, 999, 12_345, 12_300_000, 4_200_000_000)] == [
        "0 B",
        "999 B",
        "12.3 kB",
        "12.3 MB",
        "4.2 GB",
    ]
