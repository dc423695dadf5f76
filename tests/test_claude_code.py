"""The real Claude Code CLI (npm @anthropic-ai/claude-code, pinned in tests/claude_cli.py) against
the project's fake provider on loopback, directly — no agentguard in between yet.

These pin down what the proxy will have to carry: the requests Claude Code really sends (the
compatibility guard below), its tools executing in a real git project with their results sent
back, and its own retry loop on 529. Each test gets a private HOME for Claude Code and a
per-test fake provider; no real key, no traffic beyond 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest

from agentguard.testing import FakeProvider, RecordedRequest, ToolCall, Turn, ok, overloaded
from tests import claude_cli
from tests.claude_cli import FAKE_KEY, VERSION, ClaudeCode, tool_names
from tests.conftest import git

SHAPE = json.loads(
    (Path(__file__).parent / "fixtures" / f"claude-code-{VERSION}-shape.json").read_text()
)


def model_calls(fake: FakeProvider) -> list[RecordedRequest]:
    return [r for r in fake.requests if r.path == "/v1/messages"]


def tool_results(request: RecordedRequest) -> list[dict[str, Any]]:
    last = request.messages[-1]
    assert last["role"] == "user", last
    return [b for b in last["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]


def text_of(block: dict[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or [] if isinstance(part, dict))


def fits(schema: dict[str, Any], value: dict[str, Any]) -> bool:
    """The tool input has what the tool's schema requires and nothing it forbids."""
    properties = schema.get("properties", {})
    if not set(schema.get("required", [])) <= set(value):
        return False
    return schema.get("additionalProperties", True) is not False or set(value) <= set(properties)


def tool_schema(request: RecordedRequest, name: str) -> dict[str, Any]:
    return next(t["input_schema"] for t in request.body["tools"] if t.get("name") == name)


def dot_git(project: Path) -> dict[str, str]:
    """Every file under the project's .git, by content: to see that nothing in it changed."""
    root = project / ".git"
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def check(result: Any) -> dict[str, Any]:
    assert result.returncode == 0, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    doc = result.json()
    assert doc["is_error"] is False and doc["subtype"] == "success", doc
    return doc


# -- answers ----------------------------------------------------------------------------------


def test_a_plain_text_answer_is_claude_codes_result(
    claude_code: ClaudeCode, fake: FakeProvider, project: Path, cc_home: Path
) -> None:
    fake.script(ok(Turn(text="Hello from the fake provider.")))
    result = claude_code.run("say hello", cwd=project, home=cc_home, base_url=fake.base_url)
    doc = check(result)
    assert doc["result"] == "Hello from the fake provider."
    assert [r.reply for r in model_calls(fake)] == ["ok"]
    assert fake.pending == 0


def test_a_write_tool_call_creates_the_file_and_its_result_reaches_the_provider(
    claude_code: ClaudeCode, fake: FakeProvider, project: Path, cc_home: Path
) -> None:
    before = dot_git(project)
    target = project / "hello.txt"
    write = ToolCall("Write", {"file_path": str(target), "content": "hi from Claude Code\n"})
    fake.script(ok(Turn(text="Creating the file.", tool_calls=[write])), ok(Turn(text="Done.")))
    result = claude_code.run(
        "create hello.txt",
        "--allowedTools",
        "Write",
        cwd=project,
        home=cc_home,
        base_url=fake.base_url,
    )
    doc = check(result)
    assert doc["result"] == "Done." and doc["num_turns"] == 2
    assert target.read_text() == "hi from Claude Code\n"
    assert git(project, "status", "--porcelain") == "?? hello.txt\n"
    first, second = model_calls(fake)
    assert fits(tool_schema(first, "Write"), write.input)  # the script matches the real schema
    (sent,) = second.messages[-2]["content"][-1:]
    assert (sent["type"], sent["name"], sent["input"]) == ("tool_use", "Write", write.input)
    (answer,) = tool_results(second)
    assert answer["tool_use_id"] == sent["id"] and not answer.get("is_error")
    assert str(target) in text_of(answer)
    assert dot_git(project) == before  # Claude Code left the user's repository alone


def test_a_bash_tool_call_runs_in_the_project_and_its_output_comes_back(
    claude_code: ClaudeCode, fake: FakeProvider, project: Path, cc_home: Path
) -> None:
    before = dot_git(project)
    bash = ToolCall(
        "Bash",
        {"command": 'echo "bash-said-$((6*7)) in $(pwd)"', "description": "Say where I am"},
    )
    fake.script(ok(Turn(text="", tool_calls=[bash])), ok(Turn(text="It said 42.")))
    result = claude_code.run(
        "run the command",
        "--allowedTools",
        "Bash",
        cwd=project,
        home=cc_home,
        base_url=fake.base_url,
    )
    doc = check(result)
    assert doc["result"] == "It said 42."
    first, second = model_calls(fake)
    assert fits(tool_schema(first, "Bash"), bash.input)
    (answer,) = tool_results(second)
    assert answer.get("is_error") is False
    assert text_of(answer).strip() == f"bash-said-42 in {os.path.realpath(project)}"
    assert dot_git(project) == before


def test_claude_code_retries_a_529_storm_itself(
    claude_code: ClaudeCode, fake: FakeProvider, project: Path, cc_home: Path
) -> None:
    """Claude Code's own retry loop: without agentguard every 529 is visible to the client,
    which sleeps ≈0.5·2ⁿ s before its n-th retry (up to 10). The proxy must absorb these."""
    fake.script(overloaded(), overloaded(), ok(Turn(text="Survived the storm.")))
    result = claude_code.run(
        "hello",
        "--output-format",
        "stream-json",
        "--verbose",
        cwd=project,
        home=cc_home,
        base_url=fake.base_url,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    events = result.events()
    retries = [e for e in events if e.get("subtype") == "api_retry"]
    assert [(e["attempt"], e["error_status"]) for e in retries] == [(1, 529), (2, 529)]
    assert all(e["max_retries"] == 10 for e in retries)
    (final,) = [e for e in events if e.get("type") == "result"]
    assert final["result"] == "Survived the storm." and final["is_error"] is False
    calls = model_calls(fake)
    assert [r.reply for r in calls] == ["error:529", "error:529", "ok"]
    # Each retry was sent only after the delay Claude Code announced (server-side clock).
    for retry, (before, after) in zip(retries, itertools.pairwise(calls), strict=True):
        assert after.received_at - before.received_at >= retry["retry_delay_ms"] / 1000 * 0.9


# -- what Claude Code sends: the proxy's compatibility guard ------------------------------------


def test_the_requests_claude_code_sends_have_the_shape_the_proxy_relies_on(
    claude_code: ClaudeCode, fake: FakeProvider, project: Path, cc_home: Path
) -> None:
    """If an upgrade of Claude Code changes any of this, the proxy's assumptions must be
    revisited (the pinned shape is tests/fixtures/claude-code-VERSION-shape.json)."""
    fake.script(ok(Turn(text="shape")))
    doc = check(claude_code.run("hi", cwd=project, home=cc_home, base_url=fake.base_url))
    # Only model calls reach ANTHROPIC_BASE_URL with nonessential traffic off.
    assert [(r.method, r.path) for r in fake.requests] == [("POST", "/v1/messages")]
    (request,) = fake.requests
    assert request.query == "beta=true"
    headers = request.headers
    assert set(SHAPE["header_names"]) <= set(headers)
    assert headers["anthropic-version"] == SHAPE["anthropic_version"] == "2023-06-01"
    assert headers["anthropic-beta"].split(",") == SHAPE["anthropic_beta"]
    assert "claude-code-20250219" in headers["anthropic-beta"]
    assert headers["x-claude-code-session-id"] == doc["session_id"]  # one run per session
    assert headers["user-agent"].startswith(f"claude-cli/{VERSION} ")
    assert headers["x-api-key"] == "***" and "authorization" not in headers
    assert FAKE_KEY not in json.dumps([headers, request.body, request.query])
    body = request.body
    assert list(body) == SHAPE["body_keys"]
    assert {k: body[k] for k in SHAPE["params"]} == SHAPE["params"]
    assert body["stream"] is True and body["max_tokens"] == 128000
    assert [m["role"] for m in body["messages"]] == SHAPE["message_roles"][0] == ["user", "system"]
    assert isinstance(body["system"], list) and body["system"][0]["type"] == "text"
    assert list(tool_names(body)) == SHAPE["tool_names"] and len(body["tools"]) >= 12
    for name in ("Write", "Bash"):
        live, pinned = tool_schema(request, name), SHAPE["tools"][name]["input_schema"]
        assert live["properties"].keys() == pinned["properties"].keys()
        assert live.get("required") == pinned.get("required")
        assert live.get("additionalProperties") == pinned.get("additionalProperties")


# -- the set-up -----------------------------------------------------------------------------------


def test_without_npm_the_install_says_why_in_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(claude_cli.ClaudeUnavailable) as caught:
        claude_cli.install(cache=tmp_path / "cache")
    message = str(caught.value)
    assert "node and npm are not on PATH" in message and "\n" not in message
    assert not (tmp_path / "cache").exists()  # nothing half-installed left behind
