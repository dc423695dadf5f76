"""The `agentguard` command, run as `main([...])` on real runs in a real store and real git repos.

Runs are made the way an agent makes them: a wrapped Anthropic client against the fake provider.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import agentguard
from agentguard.cli import main
from agentguard.clock import FakeClock
from agentguard.store import Store
from agentguard.testing import overloaded
from tests.conftest import ATTEMPTS, dead_pid, git, storm, user

OPUS, SONNET, HAIKU = "claude-opus-4-7", "claude-sonnet-4-6", "claude-haiku-4-5"
ORIGINAL = "def add(a, b):\n    return a - b\n"
FIXED = "def add(a, b):\n    return a + b\n"


@pytest.fixture
def clock() -> FakeClock:
    """Steps happen now, so ages read like ages (the shared fixture starts in 2027)."""
    return FakeClock(start=time.time() - 60)


@pytest.fixture(autouse=True)
def no_terminal(monkeypatch):
    """stdin is not a terminal unless a test says otherwise."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys, *argv: str) -> dict:
    code, out, err = cli(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def one_sentence(err: str) -> str:
    """An error is one line on stderr, `agentguard: ...`, with no traceback."""
    assert err.startswith("agentguard: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def ask(client, model: str = OPUS, *, turns: int = 1):
    messages = [user("fix the bug")]
    for i in range(turns - 1):
        messages += [{"role": "assistant", "content": f"step {i}"}, user("go on")]
    return client.messages.create(model=model, max_tokens=16, messages=messages)


@pytest.fixture
def edited_run(guarded, project):
    """Two steps with an agent edit between them: app.py fixed and notes.txt added."""
    client = guarded(run="fix-add")
    ask(client)
    (project / "app.py").write_text(FIXED)
    (project / "notes.txt").write_text("fixed the sign\n")
    ask(client, turns=2)
    client.agentguard.close()
    return client.run_id


@pytest.fixture
def substituted_run(fake, guarded):
    fake.script(*storm(), model=OPUS)
    client = guarded(
        run="overloaded",
        chain=[f"anthropic:{OPUS}", f"anthropic:{SONNET}"],
        on_substitution=lambda info: None,
    )
    ask(client)
    client.agentguard.close()
    return client.run_id


@pytest.fixture
def failed_run(fake, guarded):
    fake.script(*storm(), model=HAIKU)
    client = guarded(run="broken")
    with pytest.raises(agentguard.RetriesExhausted):
        ask(client, HAIKU)
    client.agentguard.close()
    return client.run_id


@pytest.fixture
def crashed_run(home, project):
    """A `running` run whose process is gone."""
    store = Store.open(home)
    store.insert_run(
        {
            "id": "deadbeef0001",
            "name": "crashed",
            "project": str(project.resolve()),
            "status": "running",
            "created_at": time.time() - 7200,
            "updated_at": time.time() - 7000,
            "pid": dead_pid(),
            "hostname": socket.gethostname(),
        }
    )
    store.close()
    return "deadbeef0001"


def events(home: Path, run_id: str, kind: str) -> list[dict]:
    store = Store.open(home)
    try:
        rows = [e for e in store.events(run_id) if e["kind"] == kind]
        return [json.loads(e["detail"]) for e in rows]
    finally:
        store.close()


def tree(project: Path) -> dict[str, str]:
    return {
        str(p.relative_to(project)): p.read_text()
        for p in sorted(project.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(project).parts
    }


# -- runs ------------------------------------------------------------------------------------


def test_runs_lists_substituted_failed_and_interrupted_runs(
    capsys, substituted_run, failed_run, crashed_run
):
    code, out, err = cli(capsys, "runs")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), out
    row = next(line for line in lines if line.startswith(substituted_run))
    assert "completed" in row and OPUS in row
    assert f"+ {SONNET}" in out  # the model that also served, on its own line
    assert any(failed_run in line and "failed" in line for line in lines)
    assert any("deadbeef0001" in line and "interrupted" in line for line in lines)
    flat = " ".join(out.split())
    assert f"last errors: {failed_run} step 1 failed after {ATTEMPTS} attempt(s)" in flat
    assert f"529 overloaded_error ×{ATTEMPTS}" in flat
    assert "ago" in out

    doc = cli_json(capsys, "runs")
    runs = {r["id"]: r for r in doc["runs"]}
    assert list(runs) == [failed_run, substituted_run, "deadbeef0001"]  # newest first
    sub = runs[substituted_run]
    assert sub["status"] == "completed" and sub["substitutions"] == 1 and sub["steps"] == 1
    assert sub["primary_model"] == OPUS and sub["served_models"] == [SONNET]
    assert sub["created_at"].endswith("Z") and "T" in sub["created_at"]
    assert runs[failed_run]["status"] == "failed"
    assert "529 overloaded_error" in runs[failed_run]["last_error"]
    assert runs[failed_run]["primary_model"] == HAIKU  # asked for, though nothing served
    assert runs["deadbeef0001"]["status"] == "interrupted"


def test_runs_filters_and_wide_terminals(capsys, monkeypatch, substituted_run, failed_run, project):
    assert [r["id"] for r in cli_json(capsys, "runs", "--status", "failed")["runs"]] == [failed_run]
    assert len(cli_json(capsys, "runs", "--project", str(project))["runs"]) == 2
    assert cli_json(capsys, "runs", "--project", str(project / "elsewhere"))["runs"] == []
    assert len(cli_json(capsys, "runs", "--limit", "1")["runs"]) == 1
    code, out, _ = cli(capsys, "runs", "--status", "waiting")
    assert code == 0 and out.startswith("No runs with status waiting")
    monkeypatch.setenv("COLUMNS", "160")
    code, out, _ = cli(capsys, "runs")
    assert code == 0 and "project" in out.splitlines()[0] and "served by" in out
    code, _, err = cli(capsys, "runs", "--limit", "0")
    assert code == 2 and "at least 1" in err


# -- show ------------------------------------------------------------------------------------


def test_show_makes_a_substitution_impossible_to_miss(capsys, fake, substituted_run):
    code, out, err = cli(capsys, "show", substituted_run)
    assert code == 0 and err == ""
    flat = " ".join(out.split())
    assert (
        f"served by {SONNET} (anthropic) instead of {OPUS} — 529 overloaded_error ×{ATTEMPTS}"
        in flat
    )
    assert "1 of 1 steps served by another model" in flat
    request_ids = [r.request_id for r in fake.requests]
    assert len(request_ids) == ATTEMPTS + 1
    for request_id in request_ids:  # every attempt, with its request-id
        assert request_id in out
    assert "→ retry" in flat and "→ next_route" in flat and "200 ok" in flat
    assert "substitution" in out and "coding_agent" in out


def test_show_json_has_steps_attempts_and_events(capsys, fake, substituted_run, project):
    doc = cli_json(capsys, "show", substituted_run[:6])  # a unique prefix is enough
    run = doc["run"]
    assert run["id"] == substituted_run and run["substitutions"] == 1
    assert run["project"] == str(project.resolve()) and run["policy"] == "coding_agent"
    [step] = doc["steps"]
    assert step["substituted"] is True and step["served_model"] == SONNET
    assert (
        step["requested_model"] == OPUS
        and step["reason"] == f"{OPUS}: 529 overloaded_error ×{ATTEMPTS}"
    )
    assert len(step["checkpoint"]) == 40
    attempts = step["attempts"]
    assert [a["model"] for a in attempts] == [OPUS] * ATTEMPTS + [SONNET]
    assert [a["request_id"] for a in attempts] == [r.request_id for r in fake.requests]
    assert attempts[0]["error_type"] == "overloaded_error" and attempts[0]["status_code"] == 529
    assert attempts[1]["slept_before_ms"] > 0 and attempts[-1]["outcome"] == "ok"
    kinds = [e["kind"] for e in doc["events"]]
    assert "substitution" in kinds
    sub = next(e for e in doc["events"] if e["kind"] == "substitution")
    assert sub["step"] == 1 and sub["detail"]["served"] == f"anthropic:{SONNET}"


def test_show_a_waiting_run_gives_its_next_attempt(capsys, fake, guarded, clock):
    fake.script(*[overloaded() for _ in range(3)])
    client = guarded(policy="high_stakes", run="queued")
    with pytest.raises(agentguard.RunQueued):
        ask(client)
    client.agentguard.close()
    code, out, _ = cli(capsys, "show", client.run_id)
    assert code == 0 and "waiting" in out and "next attempt" in out and "in " in out
    doc = cli_json(capsys, "show", client.run_id)
    assert doc["run"]["status"] == "waiting" and doc["run"]["next_attempt_at"].endswith("Z")


# -- diff ------------------------------------------------------------------------------------


def test_diff_between_steps_and_against_the_working_tree(capsys, edited_run, project):
    # step 1's tools (the edit between the steps): checkpoint 1 → checkpoint 2
    code, out, _ = cli(capsys, "diff", edited_run, "--step", "1")
    assert code == 0 and "step 1" in out and "→ step 2" in out
    assert "M app.py" in out and "A notes.txt" in out and "2 paths changed" in out

    doc = cli_json(capsys, "diff", edited_run, "--step", "1", "--to", "2", "--patch")
    assert doc["changes"] == [
        {"status": "M", "path": "app.py"},
        {"status": "A", "path": "notes.txt"},
    ]
    assert "-    return a - b\n+    return a + b\n" in doc["patch"]
    assert "+++ b/notes.txt" in doc["patch"]

    last = cli_json(capsys, "diff", edited_run, "--step", "2")  # the newest step: → the tree now
    assert last["from"]["label"] == "step 2" and last["to"]["commit"] is None
    assert last["to"]["label"] == "working tree" and last["changes"] == []

    (project / "app.py").write_text("def add(a, b):\n    return b + a\n")
    (project / "notes.txt").unlink()
    (project / "debug.log").write_text("ignored by .gitignore\n")
    code, out, _ = cli(capsys, "diff", edited_run, "--patch")
    assert code == 0 and "→ working tree" in out
    assert "M app.py" in out and "D notes.txt" in out and "debug.log" not in out
    assert "+    return b + a" in out and "-fixed the sign" in out

    code, _, err = cli(capsys, "diff", edited_run, "--to", "2")
    assert code == 2 and "needs --step" in one_sentence(err)
    code, _, err = cli(capsys, "diff", edited_run, "--step", "9")
    assert code == 2 and "has no step 9 (it has steps 1–2)" in one_sentence(err)


# -- restore ---------------------------------------------------------------------------------


def test_restore_rewinds_records_the_backup_and_undoes(capsys, edited_run, project, home):
    (project / "scratch.txt").write_text("made after the run\n")
    before = tree(project)
    code, out, err = cli(capsys, "restore", edited_run, "--step", "1", "--yes")
    assert code == 0, err
    assert tree(project) == {".gitignore": "*.log\n", "app.py": ORIGINAL}
    [event] = events(home, edited_run, "restored")
    backup = event["backup"]
    assert backup in out and f"agentguard restore {edited_run} --undo" in out
    assert event["via"] == "step" and event["changes"] == 3
    store = Store.open(home)
    [row] = store.query("select * from snapshots where commit_sha = ?", [backup])
    assert row["kind"] == "backup" and row["run_id"] == edited_run
    store.close()
    assert git(project, "status", "--porcelain") == ""  # back at the user's own commit

    code, out, err = cli(capsys, "restore", edited_run, "--undo", "--yes")
    assert code == 0, err
    assert tree(project) == before

    doc = cli_json(capsys, "restore", edited_run, "--to-snapshot", backup[:12], "--yes")
    assert doc["restored"] is False and doc["changes"] == []  # already there: nothing to do

    doc = cli_json(capsys, "restore", edited_run, "--step", "2", "--yes")
    assert doc["restored"] is True and doc["backup"] and tree(project)["app.py"] == FIXED
    assert "scratch.txt" not in tree(project)
    assert doc["undo"][0] == f"agentguard restore {edited_run} --undo"


def test_restore_without_a_terminal_needs_yes(capsys, edited_run, project, home):
    before = tree(project)
    code, out, err = cli(capsys, "restore", edited_run, "--step", "1")
    assert code == 2 and out == ""
    assert "pass --yes" in one_sentence(err)
    assert tree(project) == before and events(home, edited_run, "restored") == []


def test_restore_asks_on_a_terminal(capsys, monkeypatch, edited_run, project):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    before = tree(project)
    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    code, _, err = cli(capsys, "restore", edited_run, "--step", "1")
    assert code == 1 and tree(project) == before
    assert f"Restore {project.resolve()} to run {edited_run} step 1? This rewrites 2 files" in err
    assert "nothing was changed" in err

    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    code, out, _ = cli(capsys, "restore", edited_run, "--step", "1")
    assert code == 0 and tree(project)["app.py"] == ORIGINAL and "--undo" in out


def test_restore_refusals_change_nothing(capsys, edited_run, project):
    before = tree(project)
    code, _, err = cli(capsys, "restore", edited_run, "--undo", "--yes")
    assert code == 2 and "no restore to undo" in one_sentence(err)
    code, _, err = cli(capsys, "restore", edited_run, "--to-snapshot", "0" * 40, "--yes")
    assert code == 2 and "is not in run" in one_sentence(err)
    code, _, err = cli(capsys, "restore", edited_run, "--step", "7", "--yes")
    assert code == 2 and "has no step 7" in one_sentence(err)
    code, _, err = cli(capsys, "restore", edited_run, "--yes")  # no --step/--undo/--to-snapshot
    assert code == 2 and "one of the arguments" in err
    assert tree(project) == before


# -- resume ----------------------------------------------------------------------------------


def test_resume_restores_the_tree_and_prints_the_snippet(capsys, edited_run, project, home):
    (project / "app.py").write_text("half-written by a dying agent\n")
    code, out, err = cli(capsys, "resume", edited_run)
    assert code == 0, err
    assert (project / "app.py").read_text() == FIXED  # step 2's checkpoint
    assert f'run = agentguard.resume("{edited_run}")' in out
    assert "client = run.wrap(Anthropic())" in out
    assert "client.messages.create(**run.request())" in out
    assert "from step" in out and "4" in out  # step 2's 3 messages + its recorded response

    doc = cli_json(capsys, "resume", edited_run, "--no-restore")
    assert doc["run_id"] == edited_run and doc["step"] == 2 and doc["model"] == OPUS
    assert doc["message_count"] == 4 and doc["last_message"]["role"] == "assistant"
    assert doc["restored"] is False and doc["backup"] is None
    assert doc["pending_tool_calls"] == []

    [prepared, _] = events(home, edited_run, "resume_prepared")
    assert prepared["restored"] is True and prepared["backup"]
    # the tree it replaced is kept, and `restore --undo` brings it back
    code, _, err = cli(capsys, "restore", edited_run, "--undo", "--yes")
    assert code == 0, err
    assert (project / "app.py").read_text() == "half-written by a dying agent\n"


def test_resume_due_resumes_only_runs_whose_time_has_come(
    capsys, fake, guarded, project, home, tmp_path
):
    fake.script(*[overloaded() for _ in range(6)])
    queued = []
    for name in ("due", "later"):
        client = guarded(policy="high_stakes", run=name)
        with pytest.raises(agentguard.RunQueued):
            ask(client)
        client.agentguard.close()
        queued.append(client.run_id)
    due, later = queued
    store = Store.open(home)
    store.update_run(due, next_attempt_at=time.time() - 5)
    store.update_run(later, next_attempt_at=time.time() + 3600)
    store.close()

    (project / "app.py").write_text("edited while the run waited\n")
    doc = cli_json(capsys, "resume", "--due")
    assert [r["run_id"] for r in doc["resumed"]] == [due] and doc["failed"] == []
    assert doc["resumed"][0]["restored"] is True
    assert (project / "app.py").read_text() == ORIGINAL
    assert len(events(home, later, "resume_prepared")) == 0
    code, out, _ = cli(capsys, "resume", "--due")  # still waiting until its loop goes on
    assert code == 0 and "Resumed 1 due run" in out and due in out and later not in out

    store = Store.open(home)
    store.update_run(due, status="completed")
    store.close()
    code, out, _ = cli(capsys, "resume", "--due")
    assert code == 0 and out.strip() == "no queued runs are due"


def test_resume_refusals(capsys, edited_run, project, tmp_path):
    code, _, err = cli(capsys, "resume")
    assert code == 2 and "either a run id or --due" in one_sentence(err)
    code, _, err = cli(capsys, "resume", edited_run, "--project", str(tmp_path / "nowhere"))
    assert code == 2 and "no longer exists" in one_sentence(err)


# -- gc --------------------------------------------------------------------------------------


def test_gc_dry_run_then_for_real(capsys, edited_run, project, home):
    checkpoint = cli_json(capsys, "show", edited_run)["steps"][0]["checkpoint"]
    doc = cli_json(capsys, "gc", "--max-age-days", "0", "--keep-runs", "0", "--dry-run")
    assert doc["dry_run"] is True and doc["runs_pruned"] == [edited_run]
    assert "dry run" in doc["summary"] and doc["projects"] == 1
    code, out, _ = cli(capsys, "diff", edited_run, "--step", "1")  # still all there
    assert code == 0 and "M app.py" in out

    code, out, err = cli(capsys, "gc", "--max-age-days", "0", "--keep-runs", "0")
    assert code == 0, err
    assert "freed" in out and "1 run" in out
    doc = cli_json(capsys, "show", edited_run)
    assert doc["steps"][0]["checkpoint_pruned_at"] is not None
    code, out, _ = cli(capsys, "show", edited_run)
    assert "snapshot pruned by gc on" in out
    code, _, err = cli(capsys, "restore", edited_run, "--step", "1", "--yes")
    assert code == 2 and checkpoint[:12] in one_sentence(err)
    assert "snapshot pruned by gc on" in err
    assert (project / "app.py").read_text() == FIXED  # nothing touched

    code, _, err = cli(capsys, "gc", "--max-bytes", "lots")
    assert code == 2 and "500MB" in err


# -- bad inputs ------------------------------------------------------------------------------


def test_unknown_run_is_one_sentence(capsys, edited_run):
    for argv in (
        ["show", "nope"],
        ["diff", "nope"],
        ["restore", "nope", "--step", "1", "--yes"],
        ["resume", "nope"],
    ):
        code, out, err = cli(capsys, *argv)
        assert code == 2 and out == ""
        assert "No run 'nope'" in one_sentence(err) and "agentguard runs" in err


def test_a_run_whose_project_folder_is_gone(capsys, edited_run, project, home, tmp_path):
    moved = tmp_path / "moved"
    project.rename(moved)
    shadow = list((home / "shadow").iterdir())
    for argv in (
        ["diff", edited_run],
        ["restore", edited_run, "--step", "1", "--yes"],
        ["resume", edited_run],
    ):
        code, _, err = cli(capsys, *argv)
        assert code == 2 and "no longer exists" in one_sentence(err), argv
    assert list((home / "shadow").iterdir()) == shadow and (moved / "notes.txt").exists()
    assert not project.exists()
    doc = cli_json(capsys, "resume", edited_run, "--project", str(moved))
    assert doc["project"] == str(moved.resolve()) and doc["restored"] is True
    assert f'project="{moved.resolve()}"' in doc["snippet"]


def test_a_damaged_database_is_refused_and_kept(capsys, home):
    home.mkdir(parents=True, exist_ok=True)
    db = home / "agentguard.db"
    db.write_bytes(b"this is not a database\n" * 100)
    for argv in (["runs"], ["show", "abc"], ["gc", "--dry-run"], ["resume", "--due"]):
        code, out, err = cli(capsys, *argv)
        assert code == 2 and out == ""
        assert "damaged or not a database" in one_sentence(err) and "mv " in err
    assert db.read_bytes() == b"this is not a database\n" * 100


def test_a_database_from_a_newer_agentguard_is_refused(capsys, home, edited_run):
    store = Store.open(home)
    store.db["_sqlite_migrations"].insert(
        {"migration_set": "agentguard", "name": "m999_future", "applied_at": "2099-01-01"}
    )
    store.close()
    code, _, err = cli(capsys, "runs")
    assert code == 2 and "newer agentguard" in one_sentence(err)


def test_home_option_and_help(capsys, tmp_path, edited_run):
    other = tmp_path / "other-home"
    doc = cli_json(capsys, "--home", str(other), "runs")
    assert doc == {"runs": []} and (other / "agentguard.db").exists()
    assert cli_json(capsys, "runs", "--home", str(other)) == {"runs": []}
    code, out, _ = cli(capsys, "restore", "--help")
    assert code == 0 and "examples:" in out and "--undo" in out
    code, out, _ = cli(capsys, "--version")
    assert code == 0 and out.strip() == f"agentguard {agentguard.__version__}"
    code, _, err = cli(capsys)
    assert code == 2 and "runs" in err


def test_the_console_script_runs(home, edited_run):
    """The installed entry point (one process: importing the SDKs takes a moment)."""
    script = Path(sys.executable).with_name("agentguard")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "agentguard.cli"]
    done = subprocess.run(
        [*command, "show", edited_run, "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "AGENTGUARD_HOME": str(home)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["run"]["id"] == edited_run
