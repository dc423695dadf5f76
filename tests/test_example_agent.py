"""The example agent's tools stay inside the project, and its loop runs through agentguard."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

import agentguard
from agentguard.testing import ToolCall, Turn, overloaded

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "coding_agent.py"


def load_example():
    spec = importlib.util.spec_from_file_location("coding_agent_example", EXAMPLE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


agent = load_example()


@pytest.mark.parametrize(
    "call",
    [
        ("read_file", {"path": "../secret.txt"}),
        ("read_file", {"path": "/etc/passwd"}),
        ("write_file", {"path": "../../evil.txt", "content": "x"}),
        ("edit_file", {"path": "../secret.txt", "old_string": "a", "new_string": "b"}),
        ("list_files", {"path": ".."}),
        ("read_file", {"path": "link/secret.txt"}),  # a symlink that leads outside
    ],
)
def test_tools_refuse_paths_outside_the_project(tmp_path: Path, call) -> None:
    project = tmp_path / "project"
    project.mkdir()
    outside = tmp_path / "secret.txt"
    outside.write_text("do not read me")
    (project / "link").symlink_to(tmp_path)
    output, is_error = agent.Tools(project).call(*call)
    assert is_error and "outside the project folder" in output
    assert outside.read_text() == "do not read me" and not (tmp_path.parent / "evil.txt").exists()


def test_tools_do_their_jobs(tmp_path: Path) -> None:
    tools = agent.Tools(tmp_path, timeout=5)
    assert tools.call("write_file", {"path": "pkg/a.py", "content": "x = 1\n"}) == (
        "wrote 6 characters to pkg/a.py",
        False,
    )
    edit = {"path": "pkg/a.py", "old_string": "1", "new_string": "2"}
    assert tools.call("edit_file", edit) == ("edited pkg/a.py", False)
    assert (tmp_path / "pkg/a.py").read_text() == "x = 2\n"
    output, is_error = tools.call(
        "edit_file", {"path": "pkg/a.py", "old_string": "y", "new_string": ""}
    )
    assert is_error and "occurs 0 times" in output
    assert tools.call("list_files", {}) == ("pkg/a.py", False)
    output, is_error = tools.call("run_command", {"command": "echo hi && exit 3"})
    assert (output, is_error) == ("exit code 3\nhi\n", False)
    assert tools.call("nope", {})[1] is True


def test_run_command_times_out(tmp_path: Path) -> None:
    output, is_error = agent.Tools(tmp_path, timeout=0.2).call(
        "run_command", {"command": "sleep 5"}
    )
    assert is_error and "did not finish within 0.2 s" in output


def fixer(request):
    """A scripted model: read app.py, fix it, run the tests, then stop."""
    seen = [b.get("name") for m in request.body["messages"] for b in _blocks(m)]
    if "edit_file" not in seen:
        if "read_file" not in seen:
            return Turn(text="", tool_calls=[ToolCall("read_file", {"path": "app.py"})])
        return Turn(
            text="",
            tool_calls=[
                ToolCall(
                    "edit_file",
                    {"path": "app.py", "old_string": "a - b", "new_string": "a + b"},
                )
            ],
        )
    if "run_command" not in seen:
        cmd = f"{sys.executable} -c 'import app; assert app.add(2, 3) == 5; print(\"ok\")'"
        return Turn(text="", tool_calls=[ToolCall("run_command", {"command": cmd})])
    return Turn(text="fixed: add() now adds")


def _blocks(message):
    content = message.get("content")
    return content if isinstance(content, list) else []


def test_the_loop_fixes_the_bug_through_a_guarded_client(fake, guarded, project, home) -> None:
    fake.set_model(fixer)
    fake.script(overloaded())
    client = guarded()
    transcript = agent.run_agent(client, "fix add()", project)
    assert transcript.tool_calls == ["read_file", "edit_file", "run_command"]
    assert transcript.final_text == "fixed: add() now adds" and transcript.steps == 4
    assert "a + b" in (project / "app.py").read_text()
    store = agentguard.Store.open(home)
    assert len(store.steps(client.run_id)) == 4
