"""Checkpoints that travel: each run's shadow refs pushed to a `snapshot_remote` in the
background, and fetched by `agentguard resume RUN --project DIR` on another machine.

The remote is a real local bare repository; "another machine" is a second copy of the project
in another folder whose shadow store has never seen the run (the store with the run's rows is
shared, as a fleet's PostgreSQL store is). A push is held up by the remote's own pre-receive
hook, which waits on a FIFO until the test releases it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import agentguard
from agentguard.cli import main
from agentguard.home import project_key
from agentguard.shadow.remote import display_url
from agentguard.store import DB_NAME
from tests.conftest import user

MODEL = "claude-opus-4-7"


def _bare(path: Path) -> Path:
    subprocess.run(["git", "init", "--quiet", "--bare", str(path)], check=True)
    return path


def _remote_ref(remote: Path, ref: str) -> str | None:
    done = subprocess.run(
        ["git", "--git-dir", str(remote), "rev-parse", "--verify", "--quiet", ref],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
    )
    return done.stdout.strip() or None


def _ask(client: object, text: str) -> None:
    client.messages.create(model=MODEL, max_tokens=16, messages=[user(text)])  # type: ignore[attr-defined]


def _kinds(guard: agentguard.Guard) -> list[str]:
    return [e["kind"] for e in guard.store.events(guard.run_id)]


def test_each_checkpoint_reaches_the_remote(guarded, project: Path, tmp_path: Path) -> None:
    remote = _bare(tmp_path / "checkpoints.git")
    client = guarded(snapshot_remote=str(remote))
    _ask(client, "one")
    (project / "made_by_agent.py").write_text("print('step two')\n")
    _ask(client, "two")
    guard = client.agentguard
    guard.close()
    steps = guard.store.steps(guard.run_id)
    assert [s["checkpoint"] for s in steps] == [
        _remote_ref(remote, f"refs/agentguard/runs/{guard.run_id}/steps/{n}") for n in (1, 2)
    ]
    assert all(s["checkpoint"] for s in steps)
    assert "snapshot_push_failed" not in _kinds(guard)


def test_a_push_never_delays_a_step(guarded, project: Path, tmp_path: Path) -> None:
    remote = _bare(tmp_path / "slow.git")
    fifo, mark, held = tmp_path / "release", tmp_path / "hold", tmp_path / "held"
    os.mkfifo(fifo)
    mark.write_text("")
    hook = remote / "hooks" / "pre-receive"
    hook.write_text(
        f'#!/bin/sh\nif [ -e "{mark}" ]; then touch "{held}"; cat "{fifo}" > /dev/null; fi\n'
    )
    hook.chmod(0o755)
    client = guarded(snapshot_remote=str(remote))
    for n in range(3):
        _ask(client, f"step {n}")  # each returns while the first push waits on the remote
    guard = client.agentguard
    deadline = time.monotonic() + 60  # a slow machine: the first push may not be there yet
    while not held.exists():
        assert time.monotonic() < deadline, "the first push never reached the remote's hook"
        time.sleep(0.01)
    assert [s["status"] for s in guard.store.steps(guard.run_id)] == ["ok", "ok", "ok"]
    assert guard._pusher is not None and guard._pusher.pushes == 0  # still held by the hook
    mark.unlink()
    with fifo.open("w"):  # the hook's `cat` gets end of file: the push goes on
        pass
    guard.close()
    for n in (1, 2, 3):
        ref = f"refs/agentguard/runs/{guard.run_id}/steps/{n}"
        assert _remote_ref(remote, ref) == guard.store.steps(guard.run_id)[n - 1]["checkpoint"]


def test_a_failed_push_is_an_event_and_is_retried(guarded, tmp_path: Path) -> None:
    remote = tmp_path / "not-yet.git"  # no repository there yet
    client = guarded(snapshot_remote=str(remote))
    _ask(client, "one")
    guard = client.agentguard
    assert guard._pusher is not None and guard._pusher.wait_idle(60)
    [failed] = [e for e in guard.store.events(guard.run_id) if e["kind"] == "snapshot_push_failed"]
    assert "not-yet.git" in json.loads(failed["detail"])["error"]
    assert guard.store.steps(guard.run_id)[0]["status"] == "ok"  # the step did not fail
    _bare(remote)
    _ask(client, "two")
    assert guard._pusher.wait_idle(60)
    assert "snapshot_push_recovered" in _kinds(guard)
    for n in (1, 2):  # the first step's checkpoint went with the second's push
        assert _remote_ref(remote, f"refs/agentguard/runs/{guard.run_id}/steps/{n}")
    guard.close()


def test_resume_on_another_machine_fetches_the_checkpoints(
    guarded, project: Path, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    remote = _bare(tmp_path / "fleet.git")
    elsewhere = tmp_path / "machine-b" / "project"
    shutil.copytree(project, elsewhere)  # the same repository, checked out on machine B
    client = guarded(snapshot_remote=str(remote))
    _ask(client, "one")
    (project / "made_by_agent.py").write_text("print('only in the checkpoint')\n")
    _ask(client, "two")
    guard = client.agentguard
    run_id = guard.run_id
    guard.close(status="interrupted")
    shutil.rmtree(home / "shadow" / project_key(project))  # machine B never had this store
    assert not (elsewhere / "made_by_agent.py").exists()

    args = ["--project", str(elsewhere), "--snapshot-remote", str(remote), "--yes", "--json"]
    code = main(["resume", run_id, *args])
    assert code == 0, capsys.readouterr()
    assert (elsewhere / "made_by_agent.py").read_text() == "print('only in the checkpoint')\n"
    events = agentguard.Guard(elsewhere, snapshots=False).store.events(run_id)
    assert "snapshots_fetched" in [e["kind"] for e in events]


def test_the_remote_is_recorded_without_its_password(guarded, home: Path) -> None:
    url = "http://agent:s3cret-token@127.0.0.1:9/checkpoints.git"  # loopback: refused at once
    client = guarded(snapshot_remote=url)
    _ask(client, "one")
    guard = client.agentguard
    assert guard._pusher is not None and guard._pusher.wait_idle(60)
    details = [json.loads(e["detail"]) for e in guard.store.events(guard.run_id)]
    remotes = {d["remote"] for d in details if "remote" in d}
    assert remotes == {display_url(url)} == {"http://agent:***@127.0.0.1:9/checkpoints.git"}
    guard.close()
    stored = b"".join(p.read_bytes() for p in home.glob(f"{DB_NAME}*"))
    assert b"s3cret-token" not in stored
