"""`agentguard proxy`: the real anthropic and openai SDKs through the proxy, against the fake.

Each request through the proxy is one guarded step of the same engine as the library: the
tests look at what the client got, what the fake provider received (FakeProvider records
every request) and what the store recorded.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from agentguard.proxy import ProxyThread
from agentguard.store import Store
from agentguard.testing import (
    FakeProvider,
    ToolCall,
    Turn,
    error,
    midstream_error,
    ok,
    overloaded,
    stall,
)
from agentguard.testing.wire import dumps as wire_dumps
from tests.conftest import API_KEY, ATTEMPTS, storm

OPUS, SONNET = "claude-opus-4-7", "claude-sonnet-4-6"
SESSION = "x-claude-code-session-id"
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def start(start_proxy: Callable[..., ProxyThread]) -> Callable[..., ProxyThread]:
    """Factory: a proxy in this process on a free loopback port, upstream the fake provider."""
    return start_proxy


@pytest.fixture
def proxy(start: Callable[..., ProxyThread]) -> ProxyThread:
    return start()


def claude(proxy: ProxyThread, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key=API_KEY, **kw)


def ask(text: str = "hello") -> dict[str, Any]:
    return {"model": OPUS, "max_tokens": 64, "messages": [{"role": "user", "content": text}]}


def steps(home: Path) -> list[dict[str, Any]]:
    store = Store.open(home)
    try:
        return store.query("select * from steps order by id")
    finally:
        store.close()


def attempts(home: Path) -> list[dict[str, Any]]:
    store = Store.open(home)
    try:
        return store.query("select * from attempts order by id")
    finally:
        store.close()


def raw_stream_request() -> bytes:
    """A streamed /v1/messages request as bytes, for a client on a bare socket that can hang
    up at any moment."""
    body = json.dumps({**ask(), "stream": True}).encode()
    head = (
        f"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"x-api-key: {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def until(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Wait for a condition another thread makes true, bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


# -- plain answers -------------------------------------------------------------------------------


def test_a_message_through_the_proxy_is_a_guarded_step(proxy, fake, home) -> None:
    fake.script(ok(Turn(text="hi there")))
    raw = claude(proxy).messages.with_raw_response.create(**ask())
    message = raw.parse()
    assert message.content[0].text == "hi there"
    assert message.model == OPUS
    assert raw.headers["x-agentguard-served-model"] == OPUS
    [step] = steps(home)
    assert (step["status"], step["served_model"], step["substituted"]) == ("ok", OPUS, 0)
    assert (
        json.loads(Store.open(home).get_step(step["id"])["response"])["content"][0]["text"]
        == "hi there"
    )
    assert raw.headers["x-agentguard-run"] == step["run_id"]


def test_a_stream_passes_through_and_its_final_message_is_recorded(proxy, fake, home) -> None:
    fake.script(ok(Turn(text="one two three four")), ok(Turn(text="five six")))
    client = claude(proxy)
    events = list(client.messages.create(**ask(), stream=True))
    assert [e.type for e in events][:2] == ["message_start", "content_block_start"]
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == "one two three four"
    with client.messages.stream(**ask("again")) as stream:
        assert "".join(stream.text_stream) == "five six"
        final = stream.get_final_message()
    assert final.stop_reason == "end_turn"
    first, second = steps(home)
    assert first["run_id"] != second["run_id"]  # two conversations, no session id: two runs
    recorded = json.loads(Store.open(home).get_step(second["id"])["response"])
    assert recorded["content"] == [{"type": "text", "text": "five six"}]
    assert recorded["usage"]["output_tokens"] == final.usage.output_tokens
    assert "cache_read_input_tokens" in recorded["usage"]
    assert (second["stop_reason"], second["output_tokens"]) == ("end_turn", 2)
    assert second["input_tokens"] == final.usage.input_tokens
    served = attempts(home)[-1]  # what cost figures count
    assert (served["input_tokens"], served["output_tokens"]) == (final.usage.input_tokens, 2)


def test_count_tokens_and_models_are_forwarded_untouched(start, home) -> None:
    with FakeProvider(models=[OPUS, SONNET]) as fake:
        proxy = start(upstream=fake.base_url)
        client = claude(proxy)
        counted = client.messages.count_tokens(model=OPUS, messages=ask()["messages"])
        assert counted.input_tokens > 0
        assert [m.id for m in client.models.list()] == [OPUS, SONNET]
        assert [(r.method, r.path) for r in fake.requests] == [
            ("POST", "/v1/messages/count_tokens"),
            ("GET", "/v1/models"),
        ]
    assert steps(home) == []  # not model calls: no steps


def test_a_forwarded_path_and_query_keep_the_clients_escapes(start) -> None:
    """%2F, %25 and %23 reach the provider as the client wrote them: decoded, they would name
    another path, a stray percent, or cut the query at a fragment."""
    with FakeProvider(models=[OPUS]) as fake:
        proxy = start(upstream=fake.base_url)
        httpx2.get(f"{proxy.url}/v1/models/a%2Fb%25c?after_id=x%2Fy%23z&limit=1")
        assert [(r.path, r.query) for r in fake.requests] == [
            ("/v1/models/a%2Fb%25c", "after_id=x%2Fy%23z&limit=1")
        ]


def test_head_requests_are_answered_locally(proxy, fake) -> None:
    for path in ("/", "/api/hello"):
        assert httpx2.head(f"{proxy.url}{path}").status_code == 200
    assert fake.requests == []


def test_an_unknown_path_is_a_404_in_anthropics_shape(proxy, fake) -> None:
    response = httpx2.post(f"{proxy.url}/v1/complete", json={})
    assert response.status_code == 404
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "not_found_error"
    assert fake.requests == []


# -- overload, absorbed --------------------------------------------------------------------------


def test_a_529_storm_is_absorbed_by_the_proxy(proxy, fake, home) -> None:
    fake.script(overloaded(), overloaded(), ok(Turn(text="made it")))
    message = claude(proxy).messages.create(**ask())
    assert message.content[0].text == "made it"
    assert [r.reply for r in fake.requests] == ["error:529", "error:529", "ok"]
    assert all(r.headers.get("x-stainless-retry-count") == "0" for r in fake.requests)
    assert [(a["status_code"], a["outcome"]) for a in attempts(home)] == [
        (529, "retry"),
        (529, "retry"),
        (200, "ok"),
    ]


def test_an_overload_before_the_first_content_is_retried_invisibly(proxy, fake, home) -> None:
    fake.script(midstream_error(after_events=1), ok(Turn(text="clean answer")))
    events = list(claude(proxy).messages.create(**ask(), stream=True))
    assert [e.type for e in events].count("message_start") == 1
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == "clean answer"
    assert [r.reply for r in fake.requests] == ["midstream_error", "ok"]
    assert [a["error_type"] for a in attempts(home)] == ["overloaded_error", None]


def test_an_overload_after_content_reaches_the_client_as_the_providers_error_event(
    proxy, fake, home
) -> None:
    fake.script(midstream_error(after_events=4), ok())
    stream = claude(proxy).messages.create(**ask(), stream=True)
    seen = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        for event in stream:
            seen.append(event.type)
    assert "content_block_start" in seen
    assert caught.value.body["error"]["type"] == "overloaded_error"
    assert len(fake.requests) == 1  # the proxy did not retry what the client already saw
    [step] = until(lambda: [s for s in steps(home) if s["status"] == "failed"])
    assert "overloaded_error" in step["error"]


def test_when_retries_are_spent_the_client_is_told_not_to_retry(proxy, fake, home) -> None:
    fake.script(*storm(), overloaded())
    with pytest.raises(anthropic.APIStatusError) as caught:
        claude(proxy, max_retries=3).messages.create(**ask())
    assert caught.value.status_code == 529
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert caught.value.body["error"]["type"] == "overloaded_error"
    assert len(fake.requests) == ATTEMPTS  # the SDK's own retries did not multiply them
    assert steps(home)[0]["status"] == "failed"


def test_a_tier_fallback_is_recorded_as_a_substitution(start, fake, home) -> None:
    proxy = start(chain=[f"anthropic:{OPUS}", f"anthropic:{SONNET}"])
    fake.script(*storm(), model=OPUS)
    raw = claude(proxy).messages.with_raw_response.create(**ask())
    assert raw.parse().model == SONNET
    assert raw.headers["x-agentguard-served-model"] == SONNET
    assert [r.model for r in fake.requests] == [OPUS] * ATTEMPTS + [SONNET]
    [step] = steps(home)
    assert (step["requested_model"], step["served_model"], step["substituted"]) == (
        OPUS,
        SONNET,
        1,
    )
    assert "529 overloaded_error" in step["reason"]


# -- verbatim ------------------------------------------------------------------------------------


def test_a_400_is_passed_through_byte_for_byte_and_not_retried(proxy, fake, home) -> None:
    fake.script(error(400, message="messages.0: unexpected `tool_use_id` — Claude Code reads this"))
    response = httpx2.post(
        f"{proxy.url}/v1/messages",
        json=ask(),
        headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01"},
    )
    [sent] = fake.requests
    expected = {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "messages.0: unexpected `tool_use_id` — Claude Code reads this",
        },
        "request_id": sent.request_id,
    }
    assert response.status_code == 400
    assert response.content == wire_dumps(expected).encode()
    assert response.headers["request-id"] == sent.request_id
    assert steps(home)[0]["status"] == "failed"


def test_headers_query_and_unknown_body_fields_reach_the_provider_verbatim(proxy, fake) -> None:
    claude(proxy).messages.create(
        **ask(),
        extra_headers={"anthropic-beta": "claude-code-20250219,oauth-2025-04-20", "x-team": "a b"},
        extra_query={"beta": "true"},
        extra_body={"context_management": {"edits": []}, "not_yet_invented": [1, {"x": None}]},
    )
    [sent] = fake.requests
    assert sent.query == "beta=true"
    assert sent.headers["anthropic-beta"] == "claude-code-20250219,oauth-2025-04-20"
    assert sent.headers["x-team"] == "a b"
    assert sent.headers["user-agent"].startswith("Anthropic/Python")
    assert sent.body["not_yet_invented"] == [1, {"x": None}]
    assert sent.body["context_management"] == {"edits": []}


def test_a_real_claude_code_conversation_passes_verbatim_into_one_run(proxy, fake, home) -> None:
    capture = json.loads((FIXTURES / "claude-code-2.1.330-requests.json").read_text())
    first, second = capture["requests"]
    fake.script(
        ok(
            Turn(
                text="", tool_calls=[ToolCall("Write", {"file_path": "hello.txt", "content": "hi"})]
            )
        ),
        ok(Turn(text="Created hello.txt.")),
    )
    answers = []
    for captured in (first, second):
        body = json.dumps(captured["body"]).encode()
        headers = {**captured["headers"], "x-api-key": API_KEY, SESSION: "f00dfeed-0001"}
        with httpx2.stream(
            "POST", f"{proxy.url}{captured['path']}?beta=true", content=body, headers=headers
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            answers.append(b"".join(response.iter_bytes()).decode())
    assert '"type":"tool_use"' in answers[0] and '"name":"Write"' in answers[0]
    assert "Created hello.txt." in "".join(
        json.loads(line[6:])["delta"].get("text", "")
        for line in answers[1].splitlines()
        if line.startswith("data: ") and '"content_block_delta"' in line
    )
    for captured, sent in zip((first, second), fake.requests, strict=True):
        assert sent.body == captured["body"]  # every field, known or not
        assert sent.query == "beta=true"
        assert sent.headers["anthropic-beta"] == captured["headers"]["anthropic-beta"]
        assert sent.headers["x-app"] == "cli"
    one, two = steps(home)
    assert one["run_id"] == two["run_id"]  # one session, one run
    # the second step stored only what the turn added after the messages both turns share
    assert two["base_len"] >= 1 and two["parent_id"] == one["id"]
    store = Store.open(home)
    events = [e["kind"] for e in store.events(one["run_id"])]
    assert "client_session" in events
    blob = store.blob(Store.open(home).get_step(two["id"])["request"])
    assert blob["_dropped"] == ["metadata"]  # stored by allow-list, as the library does
    assert json.loads(store.get_step(one["id"])["response"])["content"][0]["name"] == "Write"


def test_a_body_that_is_not_json_is_refused_in_anthropics_shape(proxy, fake) -> None:
    response = httpx2.post(
        f"{proxy.url}/v1/messages?beta=true", content=b"{nope", headers={"x-api-key": API_KEY}
    )
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert fake.requests == []


def test_a_body_over_32_mb_is_refused_locally_and_never_sent(proxy, fake, home) -> None:
    big = ask("x" * (33 * 1024 * 1024))
    with pytest.raises(anthropic.APIStatusError) as caught:
        claude(proxy, max_retries=0).messages.create(**big)
    assert caught.value.status_code == 413
    assert caught.value.body["error"]["type"] == "request_too_large"
    assert fake.requests == []
    assert steps(home) == []


def test_a_client_that_goes_away_mid_stream_leaves_a_cancelled_step(proxy, fake, home) -> None:
    fake.script(stall(after_events=4))
    with httpx2.stream(
        "POST",
        f"{proxy.url}/v1/messages",
        json={**ask(), "stream": True},
        headers={"x-api-key": API_KEY},
    ) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("event: message_start")
    # the client closed the connection while the provider was still streaming
    [step] = until(lambda: [s for s in steps(home) if s["status"] == "cancelled"])
    assert "went away" in step["error"]
    fake.release_stalls()
    assert until(lambda: fake.requests and len(fake.requests) == 1)


def test_a_client_that_goes_away_while_the_proxy_retries_cancels_the_attempt(
    proxy, fake, home
) -> None:
    fake.script(overloaded(), stall(after_events=1))  # the retry stalls before any content
    with socket.create_connection(("127.0.0.1", proxy.port)) as client:
        client.sendall(raw_stream_request())
        until(lambda: len(fake.requests) == 2)  # the retry is on the wire, held back
    # the client hung up before seeing a byte: the attempt in flight and the step are cancelled

    def cancelled() -> list[dict[str, Any]]:
        return [a for a in attempts(home) if a["outcome"] == "cancelled"]

    [attempt] = until(cancelled)
    assert attempt["number"] == 2
    assert until(lambda: steps(home)[0]["status"] == "cancelled")
    fake.release_stalls()


def test_a_tool_use_round_trip_with_the_anthropic_sdk(proxy, fake, home) -> None:
    call = ToolCall("read_file", {"path": "app.py"}, id="toolu_01")
    fake.script(ok(Turn(text="", tool_calls=[call])), ok(Turn(text="it subtracts")))
    tools = [{"name": "read_file", "description": "read", "input_schema": {"type": "object"}}]
    client = claude(proxy)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "what does app.py do?"}]
    with client.messages.stream(model=OPUS, max_tokens=64, messages=messages, tools=tools) as s:
        first = s.get_final_message()
    [use] = [b for b in first.content if b.type == "tool_use"]
    assert (use.name, use.input) == ("read_file", {"path": "app.py"})
    messages += [
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "x"}],
        },
    ]
    second = client.messages.create(model=OPUS, max_tokens=64, messages=messages, tools=tools)
    assert second.content[0].text == "it subtracts"
    assert fake.requests[1].body["messages"][2]["content"][0]["tool_use_id"] == "toolu_01"
    one, two = steps(home)
    assert one["run_id"] == two["run_id"] and two["parent_id"] == one["id"]
    assert (one["stop_reason"], two["base_len"]) == ("tool_use", 1)
