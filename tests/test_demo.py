"""The offline demo, headless: the story it tells is in the store, and the bug gets fixed."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from agentguard.cli import main
from agentguard.demo import GATEWAY, PRIMARY, TIER, run_demo, summary
from agentguard.store import Store
from tests.conftest import git


def test_the_demo_fixes_the_bug_through_the_storm(tmp_path: Path, home: Path) -> None:
    lines: list[str] = []
    result = run_demo(home=home, workdir=tmp_path, echo=lines.append)
    store = Store.open(home)
    steps = store.steps(result.run_id)
    served = [s["served_model"] for s in steps]
    assert served == [PRIMARY, PRIMARY, TIER, GATEWAY, PRIMARY, PRIMARY]

    attempts = {s["number"]: store.attempts(s["id"]) for s in steps}
    # step 2: the primary's 529s were retried, not substituted
    assert [a["status_code"] for a in attempts[2]] == [529, 529, 200]
    assert not steps[1]["substituted"]
    # step 3: tier fallback; step 4: provider fallback; both recorded with their reasons
    assert steps[2]["substituted"] and "529 overloaded_error ×3" in steps[2]["reason"]
    assert [a["model"] for a in attempts[4]][-1] == GATEWAY and steps[3]["substituted"]
    substitutions = [
        json.loads(e["detail"]) for e in store.events(result.run_id) if e["kind"] == "substitution"
    ]
    assert [s["served"] for s in substitutions] == [
        f"anthropic:{TIER}",
        f"deepseek:{GATEWAY}",
    ]
    # every attempt carries its request-id
    assert all(a["request_id"] for rows in attempts.values() for a in rows)
    # the tree was verified before each route change
    verified = [e for e in store.events(result.run_id) if e["kind"] == "tree_verified"]
    assert {e["step_id"] for e in verified} == {steps[2]["id"], steps[3]["id"]}
    # back on the primary once the storm passed
    assert not steps[4]["substituted"] and not steps[5]["substituted"]

    assert result.tests_pass, result.test_output
    assert "return a + b" in (result.project / "calc.py").read_text()
    # the project's git state is clean apart from the agent's edit
    assert git(result.project, "status", "--porcelain").splitlines() == [" M calc.py"]
    assert git(result.project, "log", "--oneline").count("\n") == 1
    assert git(result.project, "for-each-ref", "--format=%(refname)").split() == ["refs/heads/main"]

    text = summary(result)
    assert "project test: PASS" in text and f"served by {GATEWAY}" in text
    assert any("served by claude-sonnet-4-6 instead of claude-opus-4-7" in line for line in lines)


# -- where the demo leaves things, and what it tells the user to type next -------------------


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The system's temporary folder, empty, so anything the demo leaves there is seen."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project checkout with agentguard in .venv (not on PATH), as `make demo` runs it."""
    folder = tmp_path / "checkout"
    script = folder / ".venv" / "bin" / "agentguard"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    (folder / "Makefile").write_text("demo:\n\t.venv/bin/agentguard demo\n")
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "argv", [str(script), "demo"])
    tools = tmp_path / "bin"  # git, but no agentguard, on PATH
    tools.mkdir()
    (tools / "git").symlink_to(shutil.which("git") or "/usr/bin/git")
    monkeypatch.setenv("PATH", str(tools))
    monkeypatch.delenv("MAKELEVEL", raising=False)
    return folder


def test_the_demo_leaves_no_temporary_folder_and_names_commands_that_work(
    home: Path, private_tmp: Path, checkout: Path, capsys
) -> None:
    assert main(["demo", "--no-tui"]) == 0
    out = capsys.readouterr().out
    assert list(private_tmp.iterdir()) == []
    project = home / "demo" / "calc-project"  # beside its run, so diff and restore still work
    assert f"in {project}" in out
    [hint] = [line for line in out.splitlines() if line.startswith("see it all: ")]
    run_id = Store.open(home).query("select id from runs")[0]["id"]
    show, watch = hint.removeprefix("see it all: ").split("   or   ")
    assert show == f".venv/bin/agentguard show {run_id}"
    assert watch == ".venv/bin/agentguard watch"
    program, *args = shlex.split(show)
    assert os.access(checkout / program, os.X_OK)  # typed here, it runs this agentguard
    assert main(args) == 0 and run_id in capsys.readouterr().out
    assert main(["diff", run_id, "--step", "1", "--to", "6"]) == 0  # the project is still there
    assert "calc.py" in capsys.readouterr().out


def test_an_interrupted_demo_leaves_no_temporary_folder(
    home: Path, private_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import agentguard.demo

    real = agentguard.demo.load_example_agent

    def interrupted_agent():
        example = real()
        monkeypatch.setattr(
            example, "run_agent", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt())
        )
        return example

    monkeypatch.setattr(agentguard.demo, "load_example_agent", interrupted_agent)
    assert main(["demo", "--no-tui"]) == 130
    assert list(private_tmp.iterdir()) == []


def test_the_hint_follows_how_the_demo_was_run(
    checkout: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from agentguard.commands.demo import next_commands

    assert next_commands(None) == (".venv/bin/agentguard show RUN", ".venv/bin/agentguard watch")
    # `make demo` in a checkout whose Makefile has a watch target
    monkeypatch.setenv("MAKELEVEL", "1")
    (checkout / "Makefile").write_text("demo:\n\t.venv/bin/agentguard demo\nwatch:\n\tx\n")
    assert next_commands(None) == (".venv/bin/agentguard show RUN", "make watch")
    # a fleet's $AGENTGUARD_STORE: the demo's run is in this machine's SQLite store all the same
    monkeypatch.setenv("AGENTGUARD_STORE", "postgresql://db.internal/agentguard")
    assert next_commands(None) == (
        ".venv/bin/agentguard show RUN --store sqlite",
        ".venv/bin/agentguard watch --store sqlite",
    )
    monkeypatch.delenv("AGENTGUARD_STORE")
    # with --home, both commands carry it (make watch would look elsewhere)
    assert next_commands("/data/ag home") == (
        ".venv/bin/agentguard --home '/data/ag home' show RUN",
        ".venv/bin/agentguard --home '/data/ag home' watch",
    )
    # agentguard on PATH: its plain name
    monkeypatch.setenv("PATH", str(checkout / ".venv" / "bin"))
    monkeypatch.delenv("MAKELEVEL")
    assert next_commands(None) == ("agentguard show RUN", "agentguard watch")
    # run as a module
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "agentguard" / "cli.py"), "demo"])
    assert next_commands(None)[1].endswith(" -m agentguard.cli watch")


def test_make_has_a_watch_target() -> None:
    makefile = (Path(__file__).parent.parent / "Makefile").read_text()
    assert "\nwatch: $(STAMP)\n\t$(BIN)/agentguard watch\n" in makefile
