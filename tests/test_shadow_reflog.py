"""The shadow store keeps a reflog for its refs, so no snapshot becomes unreachable (and
prunable by any git) before agentguard's own gc says so; gc still frees it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from agentguard.home import project_key
from agentguard.retention import RetentionPolicy, collect
from agentguard.snapshots import HEAD_REF, ShadowRepo
from agentguard.store import Store

STEP = "refs/agentguard/runs/r1/steps/{}"


def raw_git(store_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Plain git on the bare store: its own config only, as any git tool would see it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_DIR=str(store_dir / "repo.git"), GIT_CONFIG_GLOBAL=os.devnull)
    env.update(GIT_CONFIG_NOSYSTEM="1")
    return subprocess.run(["git", *args], env=env, capture_output=True, text=True, check=check)


def reflog(store_dir: Path, ref: str) -> list[str]:
    out = raw_git(store_dir, "reflog", "show", "--format=%H %gs", ref, check=False)
    return out.stdout.splitlines() if out.returncode == 0 else []


def test_every_snapshot_is_logged_and_stays_reachable_until_gc(home: Path, project: Path) -> None:
    store_dir = home / "shadow" / project_key(project)
    shadow = ShadowRepo(project, store_dir)
    first = shadow.snapshot("agentguard run r1 step 1", ref=STEP.format(1)).commit
    (project / "new.txt").write_text("step 2's tools wrote this\n")
    second = shadow.snapshot("agentguard run r1 step 2", ref=STEP.format(2)).commit

    assert reflog(store_dir, HEAD_REF) == [
        f"{second} agentguard run r1 step 2",
        f"{first} agentguard run r1 step 1",
    ]
    assert reflog(store_dir, STEP.format(1)) == [f"{first} agentguard run r1 step 1"]

    # Something moves the head back and deletes step 2's ref: the commit is reachable from
    # no ref now, only from the head's reflog, which keeps it from any git's pruning.
    raw_git(store_dir, "update-ref", HEAD_REF, first)
    raw_git(store_dir, "update-ref", "-d", STEP.format(2))
    assert second not in raw_git(store_dir, "rev-list", "--all").stdout
    unreachable = raw_git(store_dir, "fsck", "--unreachable", "--no-progress").stdout
    assert second not in unreachable
    raw_git(store_dir, "prune", "--expire=now")
    assert raw_git(store_dir, "cat-file", "-e", second, check=False).returncode == 0

    # agentguard's gc expires the reflog for what it lets go: then the commit really goes.
    store = Store.open(home)
    try:
        collect(store, RetentionPolicy(max_age_days=0, keep_runs=0))
    finally:
        store.close()
    assert raw_git(store_dir, "cat-file", "-e", second, check=False).returncode != 0
    assert raw_git(store_dir, "cat-file", "-e", first, check=False).returncode == 0  # the head


def test_a_store_made_before_reflogs_logs_updates_git_itself_writes(
    home: Path, project: Path
) -> None:
    store_dir = home / "shadow" / project_key(project)
    ShadowRepo(project, store_dir)
    raw_git(store_dir, "config", "core.logAllRefUpdates", "false")  # what older stores say

    shadow = ShadowRepo(project, store_dir)
    unusual = "refs/agentguard/runs/r1/steps/a@b"  # not a plain name: git update-ref writes it
    snap = shadow.snapshot("agentguard run r1 step a@b", ref=unusual)
    assert reflog(store_dir, unusual) == [f"{snap.commit} agentguard run r1 step a@b"]
    assert reflog(store_dir, HEAD_REF) == [f"{snap.commit} agentguard run r1 step a@b"]
