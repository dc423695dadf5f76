"""The real Claude Code CLI through `agentguard run -- claude -p …` against the fake provider.

Each test starts `agentguard run --upstream FAKE -- claude -p …` as a person would (a separate
process, Claude Code's `-p` mode, a private HOME, no nonessential traffic), then looks at what
Claude Code printed, what the fake provider received and what the store recorded. The project
carries an `agentguard.toml` with the `coding_agent` preset's tries but millisecond backoffs,
so a storm the proxy absorbs costs no wall-clock time; its `.git` is compared byte for byte
before and after every run.

What Claude Code 2.1.330 itself does in the fault cases (seen here, asserted below):
- a 529 or an SSE `overloaded_error` before the first content: nothing — the proxy retried;
- an `overloaded_error` after content: it resends the request WITHOUT streaming (a new step);
- a 400: it resends up to five times, dropping `anthropic-beta` entries, then ends the turn
  with `API Error: 400 <the provider's message>`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agentguard.store import Store
from agentguard.testing import (
    FakeProvider,
    RecordedRequest,
    ToolCall,
    Turn,
    error,
    midstream_error,
    ok,
    overloaded,
)
from tests.claude_cli import ClaudeCode, Result
from tests.conftest import ATTEMPTS, git, storm
from tests.test_claude_code import dot_git, text_of, tool_results

OPUS, SONNET = "claude-opus-4-7", "claude-sonnet-4-6"
FAST_POLICY = 'policy = { preset = "coding_agent", base_delay = 0.001, max_delay = 0.005 }\n'


@pytest.fixture
def repo(project: Path) -> Path:
    """The user's project, with a committed agentguard.toml: the fast policy."""
    (project / "agentguard.toml").write_text(FAST_POLICY)
    git(project, "add", "agentguard.toml")
    git(project, "commit", "-q", "-m", "agentguard config")
    return project


def through(
    claude_code: ClaudeCode,
    fake: FakeProvider,
    repo: Path,
    cc_home: Path,
    home: Path,
    prompt: str,
    *args: str,
    chain: tuple[str, ...] = (),
) -> Result:
    """`agentguard run --upstream FAKE [--chain …] -- claude -p PROMPT ARGS…` in the project;
    `--output-format json` unless ARGS name another. The project's .git must come out as it
    went in."""
    if "--output-format" not in args:
        args = (*args, "--output-format", "json")
    command = [sys.executable, "-m", "agentguard.cli", "run", "--project", str(repo)]
    command += ["--upstream", fake.base_url]
    if chain:
        command += ["--chain", *chain]
    command += ["--", str(claude_code.binary), "-p", prompt, *args]
    # ANTHROPIC_BASE_URL is agentguard run's to set: this one must never be used.
    env = claude_code.env(cc_home, "http://127.0.0.1:9", AGENTGUARD_HOME=str(home))
    before = dot_git(repo)
    started = time.monotonic()
    done = subprocess.run(
        command,
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    result = Result(done.returncode, done.stdout, done.stderr, time.monotonic() - started)
    assert dot_git(repo) == before  # the user's repository, byte for byte
    return result


def succeeded(result: Result) -> dict[str, Any]:
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-2000:])
    doc = final(result)
    assert doc["is_error"] is False and doc["subtype"] == "success", doc
    return doc


def final(result: Result) -> dict[str, Any]:
    """The result object, from `--output-format json` or the last of stream-json's events."""
    (doc,) = [e for e in result.events() if e.get("type") == "result"]
    return doc


def retries_seen_by_claude_code(result: Result) -> list[dict[str, Any]]:
    return [e for e in result.events() if e.get("subtype") == "api_retry"]


def assistant_messages(result: Result) -> list[dict[str, Any]]:
    return [e["message"] for e in result.events() if e.get("type") == "assistant"]


def model_calls(fake: FakeProvider) -> list[RecordedRequest]:
    return [r for r in fake.requests if r.path == "/v1/messages"]


def table(home: Path, sql: str) -> list[dict[str, Any]]:
    store = Store.open(home)
    try:
        return store.query(sql)
    finally:
        store.close()


def steps(home: Path) -> list[dict[str, Any]]:
    return table(home, "select * from steps order by id")


def attempts(home: Path) -> list[dict[str, Any]]:
    return table(home, "select * from attempts order by id")


def stream_json(*args: str) -> tuple[str, ...]:
    return (*args, "--output-format", "stream-json", "--verbose")


# -- answers ----------------------------------------------------------------------------------


def test_a_plain_answer_through_agentguard_run(
    claude_code: ClaudeCode, fake: FakeProvider, repo: Path, cc_home: Path, home: Path
) -> None:
    fake.script(ok(Turn(text="Hello through agentguard.")))
    result = through(claude_code, fake, repo, cc_home, home, "say hello")
    doc = succeeded(result)
    assert doc["result"] == "Hello through agentguard."
    (call,) = fake.requests  # the proxy sent the one model call and nothing else
    assert (call.path, call.query, call.reply) == ("/v1/messages", "beta=true", "ok")
    assert call.headers["x-claude-code-session-id"] == doc["session_id"]
    (step,) = steps(home)
    assert (step["status"], step["requested_model"], step["substituted"]) == (
        "ok",
        call.model,
        0,
    )
    assert result.stderr == ""


def test_a_write_tool_call_creates_the_file_and_its_result_goes_back_in_the_same_run(
    claude_code: ClaudeCode, fake: FakeProvider, repo: Path, cc_home: Path, home: Path
) -> None:
    target = repo / "hello.txt"
    write = ToolCall("Write", {"file_path": str(target), "content": "hi through agentguard\n"})
    fake.script(ok(Turn(text="Creating it.", tool_calls=[write])), ok(Turn(text="Done.")))
    result = through(
        claude_code, fake, repo, cc_home, home, "create hello.txt", "--allowedTools", "Write"
    )
    doc = succeeded(result)
    assert doc["result"] == "Done." and doc["num_turns"] == 2
    assert target.read_text() == "hi through agentguard\n"
    assert git(repo, "status", "--porcelain") == "?? hello.txt\n"
    _, second = model_calls(fake)
    (sent,) = second.messages[-2]["content"][-1:]
    assert (sent["type"], sent["name"], sent["input"]) == ("tool_use", "Write", write.input)
    (answer,) = tool_results(second)
    assert answer["tool_use_id"] == sent["id"] and not answer.get("is_error")
    assert str(target) in text_of(answer)
    recorded = steps(home)
    assert [s["status"] for s in recorded] == ["ok", "ok"]
    assert len({s["run_id"] for s in recorded}) == 1  # one session, one run


def test_a_bash_tool_call_runs_in_the_project_through_agentguard_run(
    claude_code: ClaudeCode, fake: FakeProvider, repo: Path, cc_home: Path, home: Path
) -> None:
    bash = ToolCall("Bash", {"command": "echo bash-$((6*7)) > out.log; cat out.log"})
    fake.script(ok(Turn(text="", tool_calls=[bash])), ok(Turn(text="It said 42.")))
    result = through(claude_code, fake, repo, cc_home, home, "run it", "--allowedTools", "Bash")
    assert succeeded(result)["result"] == "It said 42."
    _, second = model_calls(fake)
    (answer,) = tool_results(second)
    assert answer.get("is_error") is False and text_of(answer).strip() == "bash-42"
    assert (repo / "out.log").read_text() == "bash-42\n"
    assert [s["status"] for s in steps(home)] == ["ok", "ok"]


# -- faults -----------------------------------------------------------------------------------


def test_a_529_storm_is_absorbed_by_the_proxy_and_claude_code_never_retries(
    claude_code: ClaudeCode, fake: FakeProvider, repo: Path, cc_home: Path, home: Path
) -> None:
    fake.script(overloaded(), overloaded(), overloaded(), ok(Turn(text="Survived.")))
    result = through(claude_code, fake, repo, cc_home, home, "hello", *stream_json())
    assert succeeded(result)["result"] == "Survived."
    assert retries_seen_by_claude_code(result) == []
    assert [r.reply for r in model_calls(fake)] == ["error:529"] * 3 + ["ok"]
    (step,) = steps(home)
    assert step["status"] == "ok"
    assert [(a["status_code"], a["outcome"]) for a in attempts(home)] == [
        (529, "retry"),
        (529, "retry"),
        (529, "retry"),
        (200, "ok"),
    ]


def test_an_overload_before_the_first_content_is_invisible_to_claude_code(
    claude_code: ClaudeCode, fake: FakeProvider, repo: Path, cc_home: Path, home: Path
) -> None:
    fake.script(midstream_error(after_events=1), ok(Turn(text="Clean answer.")))
    result = through(claude_code, fake, repo, cc_home, home, "hello", *stream_json())
    assert succeeded(result)["result"] == "Clean answer."
    assert retries_seen_by_claude_code(result) == []
    calls = model_calls(fake)
    assert [(r.reply, r.stream) for r in calls] == [("midstream_error", True), ("ok", True)]
    (step,) = steps(home)
    assert step["status"] == "ok"
    assert [a["error_type"] for a in attempts(home)] == ["overloaded_error", None]


def test_an_overload_after_content_is_claude_codes_to_recover_and_it_resends_unstreamed(
    claude_code: ClaudeCode, fake: FakeProvider, repo: Path, cc_home: Path, home: Path
) -> None:
    fake.script(midstream_error(after_events=4), ok(Turn(text="Recovered.")))
    result = through(claude_code, fake, repo, cc_home, home, "hello", *stream_json())
    assert succeeded(result)["result"] == "Recovered."
    # No retry announced, and the half-streamed first answer was dropped, not shown.
    assert retries_seen_by_claude_code(result) == []
    texts = [[b.get("text") for b in m["content"]] for m in assistant_messages(result)]
    assert texts == [["Recovered."]]
    calls = model_calls(fake)
    # The proxy passed the error event on (it had already sent content) and did not retry;
    # Claude Code sent the same conversation again, this time without `stream`.
    assert [(r.reply, r.stream) for r in calls] == [("midstream_error", True), ("ok", False)]
    assert calls[1].messages == calls[0].messages
    first, second = steps(home)
    assert first["status"] == "failed" and "overloaded_error" in first["error"]
    assert second["status"] == "ok" and second["run_id"] == first["run_id"]


def test_a_tier_fallback_is_a_substitution_shown_by_the_statusline(
    claude_code: ClaudeCode, fake: FakeProvider, repo: Path, cc_home: Path, home: Path
) -> None:
    fake.script(*storm(), model=OPUS)
    fake.script(ok(Turn(text="Sonnet here.")), model=SONNET)
    result = through(
        claude_code,
        fake,
        repo,
        cc_home,
        home,
        "hello",
        *stream_json("--model", OPUS),
        chain=(f"anthropic:{OPUS}", f"anthropic:{SONNET}"),
    )
    doc = succeeded(result)
    assert doc["result"] == "Sonnet here."
    assert retries_seen_by_claude_code(result) == []
    assert [m["model"] for m in assistant_messages(result)] == [SONNET]  # as the proxy said
    assert [r.model for r in model_calls(fake)] == [OPUS] * ATTEMPTS + [SONNET]
    (step,) = steps(home)
    assert (step["requested_model"], step["served_model"], step["substituted"]) == (
        OPUS,
        SONNET,
        1,
    )
    # What Claude Code's status bar would show: it runs the command with the session on stdin.
    session = {"session_id": doc["session_id"], "workspace": {"current_dir": str(repo)}}
    shown = subprocess.run(
        [sys.executable, "-m", "agentguard.commands.statusline", "--home", str(home)],
        input=json.dumps(session),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shown.stdout == f"agentguard ⚠ sonnet-4-6 serving — opus-4-7 529 ×{ATTEMPTS}\n"


def test_a_400_reaches_claude_code_unchanged_and_it_shows_the_providers_words(
    claude_code: ClaudeCode, fake: FakeProvider, repo: Path, cc_home: Path, home: Path
) -> None:
    words = "max_tokens: 999999 > 128000, which is the maximum (the provider's own words)"
    fake.script(*[error(400, message=words) for _ in range(10)])
    result = through(claude_code, fake, repo, cc_home, home, "hello")
    assert result.returncode == 1
    doc = result.json()
    assert doc["is_error"] is True and doc["api_error_status"] == 400
    assert doc["result"] == f"API Error: 400 {words}"
    calls = model_calls(fake)
    # Each of Claude Code's own tries (it drops anthropic-beta entries between them) went
    # upstream exactly once: the proxy does not retry a 400.
    assert [r.reply for r in calls] == ["error:400"] * 6
    assert len({r.headers["anthropic-beta"] for r in calls}) > 1
    recorded = steps(home)
    assert len(recorded) == len(calls) and {s["status"] for s in recorded} == {"failed"}
    assert len(attempts(home)) == len(calls)


# -- probes -----------------------------------------------------------------------------------

PROBE = """\
import os, urllib.request
for path in ("/api/hello", "/"):
    request = urllib.request.Request(os.environ["ANTHROPIC_BASE_URL"] + path, method="HEAD")
    with urllib.request.urlopen(request, timeout=10) as answer:
        print(path, answer.status)
"""


def test_claude_codes_reachability_probes_are_answered_without_upstream_traffic(
    fake: FakeProvider, repo: Path, home: Path
) -> None:
    """Claude Code sends `HEAD /api/hello` when nonessential traffic is on — but then it also
    looks up its host name with the machine's DNS resolver, so it is not run that way here;
    the probe is sent as it sends it."""
    command = [sys.executable, "-m", "agentguard.cli", "run", "--project", str(repo)]
    command += ["--upstream", fake.base_url, "--", sys.executable, "-c", PROBE]
    env = {"PATH": "/usr/bin:/bin", "AGENTGUARD_HOME": str(home)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "/api/hello 200\n/ 200\n"), done.stderr
    assert fake.requests == []
