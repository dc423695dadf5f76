"""Cross-provider fallback in the proxy: an Anthropic client (the real anthropic SDK, Claude
Code's real request bodies) served by an OpenAI-format route when its own provider is down.

The fake provider serves both wires: its Anthropic side answers 529s (a storm), its Chat
Completions side serves the translated request. The tests look at what the client got
(Anthropic output, JSON or SSE), what the OpenAI side received (nothing Anthropic-only) and
what the store recorded (a substitution, a `translation_dropped` event).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from agentguard.proxy import ProxyOptions, ProxyThread, translated
from agentguard.proxy.upstream import Incoming
from agentguard.store import Store
from agentguard.testing import FakeProvider, ToolCall, Turn, error, ok
from tests.conftest import API_KEY, storm
from tests.test_proxy import FIXTURES, OPUS, SESSION, ask, claude, steps

GPT = "gpt-5.5"
OPENAI_KEY = "sk-openai-env-key-NEVER-PERSIST-0c1d"
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
    "cache_control": {"type": "ephemeral"},
    "strict": True,
}
ANTHROPIC_ONLY = ("thinking", "context_management", "output_config", "metadata", "cache_control")


@pytest.fixture
def crossing(
    start_proxy: Callable[..., ProxyThread], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., ProxyThread]:
    """Factory: a proxy whose chain falls back from opus to an OpenAI route keyed from the
    environment ($OPENAI_API_KEY), accepting the client's key; both upstreams the fake."""
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)

    def make(**options: Any) -> ProxyThread:
        options.setdefault("chain", [f"anthropic:{OPUS}", f"openai:{GPT}"])
        options.setdefault("accepted_keys", [API_KEY])
        return start_proxy(**options)

    return make


def claude_code_like(text: str = "What is the weather in Paris?") -> dict[str, Any]:
    """A request with what Claude Code sends: thinking, context management, cache_control,
    a thinking block with its signature in the history, a server tool, tool_choice."""
    return {
        "model": OPUS,
        "max_tokens": 128000,
        "system": [
            {"type": "text", "text": "You are terse."},
            {"type": "text", "text": "Use tools.", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "greet", "signature": "c2lnbmF0dXJl"},
                    {"type": "text", "text": "Hello."},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}],
            },
        ],
        "tools": [WEATHER, {"type": "web_search_20250305", "name": "web_search"}],
        "tool_choice": {"type": "auto"},
        "stop_sequences": ["\n\nHuman:"],
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "medium"},
        "metadata": {"user_id": "someone"},
    }


def client(proxy: ProxyThread, **kw: Any) -> anthropic.Anthropic:
    """Claude Code's max_tokens (128000) without a stream needs an explicit timeout."""
    return claude(proxy, timeout=60.0, **kw)


def sdk(body: dict[str, Any]) -> dict[str, Any]:
    """The body as the anthropic SDK's keyword arguments: what it has no parameter for goes in
    `extra_body`, as a raw client (Claude Code's SDK build) would send it."""
    core = ("model", "max_tokens", "messages")
    return {
        **{k: body[k] for k in core},
        "extra_body": {k: v for k, v in body.items() if k not in core},
    }


def openai_requests(fake: FakeProvider) -> list[Any]:
    return [r for r in fake.requests if r.path == "/v1/chat/completions"]


def events(home: Path, kind: str) -> list[dict[str, Any]]:
    store = Store.open(home)
    try:
        rows = store.query("select * from events where kind = ? order by id", [kind])
    finally:
        store.close()
    return [json.loads(r["detail"]) for r in rows]


def test_a_message_falls_back_to_an_openai_route_and_comes_back_anthropic(
    crossing, fake, home
) -> None:
    proxy = crossing()
    fake.script(*storm(), model=OPUS)
    fake.script(
        ok(Turn(text="Let me look.", tool_calls=[ToolCall("get_weather", {"city": "Paris"})])),
        model=GPT,
    )
    raw = client(proxy).messages.with_raw_response.create(**sdk(claude_code_like()))
    message = raw.parse()
    assert message.model == GPT
    assert raw.headers["x-agentguard-served-model"] == GPT
    assert message.stop_reason == "tool_use"
    text, call = message.content
    assert text.type == "text" and text.text == "Let me look."
    assert (
        call.type == "tool_use" and call.name == "get_weather" and call.input == {"city": "Paris"}
    )
    [sent] = openai_requests(fake)
    assert sent.body["tools"][0]["function"]["name"] == "get_weather"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    [step] = steps(home)
    assert (step["requested_model"], step["served_model"], step["substituted"]) == (OPUS, GPT, 1)
    assert step["served_provider"] == "openai"
    assert (step["input_tokens"], step["output_tokens"]) == (
        message.usage.input_tokens,
        message.usage.output_tokens,
    )
    assert (
        json.loads(Store.open(home).get_step(step["id"])["response"])["stop_reason"] == "tool_use"
    )


def test_the_openai_route_receives_nothing_anthropic_only(crossing, fake, home) -> None:
    proxy = crossing()
    fake.script(*storm(), model=OPUS)
    fake.script(ok(Turn(text="Sunny.")), model=GPT)
    client(proxy).messages.create(
        **sdk(claude_code_like()), extra_headers={"anthropic-beta": "context-management-2025-06-27"}
    )
    [sent] = openai_requests(fake)
    body = sent.body
    assert body["model"] == GPT
    assert "stream" not in body  # always asked for a whole answer
    text = json.dumps(body)
    for name in ANTHROPIC_ONLY:
        assert name not in text
    assert "signature" not in text and "web_search" not in text
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER["input_schema"],
                "description": "The weather in a city",
            },
        }
    ]
    assert body["tool_choice"] == "auto"
    assert "stop" not in body  # GPT-5 models refuse it (400 unsupported_parameter)
    assert body["max_completion_tokens"] == 128000  # gpt-5.5's maximum: not clamped
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert body["messages"][0]["content"] == "You are terse.\n\nUse tools."
    assert body["messages"][2] == {"role": "assistant", "content": "Hello."}
    # the route's own key from the environment; no client header crosses
    assert sent.headers["authorization"] != f"Bearer {API_KEY}"
    assert "anthropic-beta" not in sent.headers and "x-api-key" not in sent.headers
    assert "anthropic-version" not in sent.headers
    [dropped] = events(home, "translation_dropped")
    names = dropped["dropped"]
    assert dropped["route"] == f"openai:{GPT}"
    for expected in (
        "thinking block",
        "thinking configuration",
        "server tool web_search",
        "parameter output_config",
        "parameter context_management",
        "parameter metadata",
        "cache_control",
        "thinking signature",
        "tool strict",
        "header anthropic-beta",
        "parameter stop (gpt-5.5 refuses it)",
    ):
        assert expected in names, (expected, names)


def test_a_stream_is_synthesized_from_the_translated_message(crossing, fake, home) -> None:
    proxy = crossing()
    fake.script(*storm(), model=OPUS)
    fake.script(
        ok(Turn(text="Checking.", tool_calls=[ToolCall("get_weather", {"city": "Oslo"})])),
        ok(Turn(text="It is 3°C in Oslo.")),
        model=GPT,
    )
    client = claude(proxy, timeout=60.0)
    with client.messages.stream(**sdk(claude_code_like())) as stream:
        first = stream.get_final_message()
    assert first.model == GPT and first.stop_reason == "tool_use"
    assert first.content[0].text == "Checking."
    assert first.content[1].type == "tool_use" and first.content[1].input == {"city": "Oslo"}
    assert first.usage.output_tokens > 0
    # the tool result goes back; the breaker still has opus down, so the OpenAI route serves
    fake.script(*storm(), model=OPUS)
    follow = claude_code_like()
    follow["messages"] += [
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": first.content[1].id, "content": "3°C"}
            ],
        },
    ]
    with client.messages.stream(**sdk(follow)) as stream:
        second = stream.get_final_message()
    assert second.stop_reason == "end_turn" and second.content[0].text == "It is 3°C in Oslo."
    sent = openai_requests(fake)[-1].body["messages"]
    assert sent[-2]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "Oslo"}',
    }
    assert sent[-1] == {"role": "tool", "tool_call_id": first.content[1].id, "content": "3°C"}
    assert [s["substituted"] for s in steps(home)] == [1, 1]


def test_a_real_claude_code_request_falls_back_and_streams_anthropic_events(
    crossing, fake, home
) -> None:
    capture = json.loads((FIXTURES / "claude-code-2.1.330-requests.json").read_text())
    proxy = crossing(chain=[f"anthropic:{OPUS}", "anthropic:claude-opus-5-5", f"openai:{GPT}"])
    fake.script(*storm(), model="claude-opus-5-5")
    fake.script(ok(Turn(text="Done: hello.txt says hi.")), model=GPT)
    captured = capture["requests"][1]  # carries a tool_use and its tool_result
    headers = {**captured["headers"], "x-api-key": API_KEY, SESSION: "f00dfeed-0002"}
    with httpx2.stream(
        "POST",
        f"{proxy.url}{captured['path']}?beta=true",
        content=json.dumps(captured["body"]).encode(),
        headers=headers,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-agentguard-served-model"] == GPT
        text = b"".join(response.iter_bytes()).decode()
    kinds = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "Done: hello.txt says hi." in text
    [sent] = openai_requests(fake)
    roles = [m["role"] for m in sent.body["messages"]]
    assert roles[-2:] == ["assistant", "tool"]
    assert "system" in roles
    assert all(t["type"] == "function" for t in sent.body["tools"])
    assert len(sent.body["tools"]) == len(captured["body"]["tools"])
    for name in ANTHROPIC_ONLY:
        assert name not in json.dumps(sent.body)
    [step] = steps(home)
    assert (step["served_model"], step["substituted"], step["status"]) == (GPT, 1, "ok")
    [dropped] = events(home, "translation_dropped")
    names = dropped["dropped"]
    for expected in ("parameter context_management", "thinking configuration", "cache_control"):
        assert expected in names


def test_a_request_without_the_accepted_key_never_uses_the_env_keyed_route(
    crossing, fake, home
) -> None:
    proxy = crossing()
    fake.script(*storm(), model=OPUS)
    client = anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant-someone-else", max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(**ask())
    assert caught.value.status_code == 529
    assert openai_requests(fake) == []


def test_only_tools_that_cross_are_sent_and_no_empty_tools_or_choice(crossing, fake) -> None:
    proxy = crossing()
    fake.script(*storm(), model=OPUS)
    fake.script(ok(Turn(text="No search here.")), model=GPT)
    request = {
        **ask("search the web"),
        "tools": [{"type": "web_search_20250305", "name": "web_search"}],
        "tool_choice": {"type": "any"},
    }
    assert client(proxy).messages.create(**sdk(request)).content[0].text == "No search here."
    [sent] = openai_requests(fake)
    assert "tools" not in sent.body and "tool_choice" not in sent.body


def test_the_openai_routes_error_reaches_the_client_in_anthropic_shape(crossing, fake) -> None:
    proxy = crossing()
    fake.script(*storm(), model=OPUS)
    fake.script(error(400, message="Invalid schema for function 'get_weather'"), model=GPT)
    with pytest.raises(anthropic.BadRequestError) as caught:
        client(proxy, max_retries=0).messages.create(**sdk(claude_code_like()))
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["message"] == "Invalid schema for function 'get_weather'"


def test_a_deepseek_route_gets_max_tokens_and_its_own_key(
    crossing, fake, home, monkeypatch
) -> None:
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-deepseek-NEVER-PERSIST-9a")
    route = {"provider": "deepseek", "model": "deepseek-chat", "base_url": fake.openai_base_url}
    proxy = crossing(chain=[f"anthropic:{OPUS}", route])
    fake.script(*storm(), model=OPUS)
    fake.script(ok(Turn(text="From DeepSeek.")), model="deepseek-chat")
    raw = client(proxy).messages.with_raw_response.create(**ask())
    assert raw.parse().content[0].text == "From DeepSeek."
    assert raw.headers["x-agentguard-served-model"] == "deepseek-chat"
    [sent] = openai_requests(fake)
    assert sent.body["max_tokens"] == 64 and "max_completion_tokens" not in sent.body
    assert sent.headers["authorization"] != f"Bearer {API_KEY}"
    [step] = steps(home)
    assert (step["served_provider"], step["substituted"]) == ("deepseek", 1)


def test_one_translated_attempt_sends_the_routes_key_and_counts_cached_tokens(
    project, monkeypatch
) -> None:
    """The attempt itself, against a recording transport: the route's key from the
    environment (never the client's), and OpenAI's cached prompt tokens as Anthropic's
    cache reads."""
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    seen: list[httpx2.Request] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        completion = {
            "id": "chatcmpl-1",
            "model": "gpt-5.5-2026-01-01",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "length",
                    "message": {"role": "assistant", "content": "Hal"},
                }
            ],
            "usage": {
                "prompt_tokens": 1200,
                "completion_tokens": 7,
                "prompt_tokens_details": {"cached_tokens": 1000},
            },
        }
        return httpx2.Response(200, json=completion, headers={"x-request-id": "req_oa_1"})

    incoming = Incoming(
        kind="anthropic",
        method="POST",
        path="/v1/messages",
        query="beta=true",
        headers=[("x-api-key", API_KEY), ("anthropic-version", "2023-06-01")],
        body=json.dumps(ask()).encode(),
    )
    route = ProxyOptions.build(
        project, chain=[f"openai:{GPT}"], openai_upstream="http://openai.test/v1"
    ).chain_for("anthropic")[0]
    assert route.api_key_env == "OPENAI_API_KEY"

    async def go() -> Any:
        async with httpx2.AsyncClient(transport=httpx2.MockTransport(answer)) as http:
            return await translated.attempt(http, route, incoming)

    served = asyncio.run(go())
    [request] = seen
    assert str(request.url) == "http://openai.test/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert "x-api-key" not in request.headers and "anthropic-version" not in request.headers
    message = served.value.message
    assert message["model"] == served.model == "gpt-5.5-2026-01-01"
    assert message["stop_reason"] == "max_tokens" == served.stop_reason
    assert message["usage"] == {
        "input_tokens": 200,
        "output_tokens": 7,
        "cache_read_input_tokens": 1000,
    }
    assert served.request_id == "req_oa_1"
    sse = served.value.sse_body().decode()
    assert '"cache_read_input_tokens":1000' in sse and sse.endswith(
        'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )


# -- fitted to the route: what each provider would refuse is never sent ----------------------------


def send_claude_code_request(proxy: ProxyThread, index: int = 1) -> httpx2.Response:
    """One of Claude Code's real requests (a tool_use and its tool_result, 12 tools, thinking,
    max_tokens 128000), sent as Claude Code sent it, without a stream."""
    capture = json.loads((FIXTURES / "claude-code-2.1.330-requests.json").read_text())
    captured = capture["requests"][index]
    body = {**captured["body"], "stream": False}
    headers = {**captured["headers"], "x-api-key": API_KEY, SESSION: f"cafe0000-000{index}"}
    return httpx2.post(
        f"{proxy.url}{captured['path']}?beta=true",
        content=json.dumps(body).encode(),
        headers=headers,
        timeout=60.0,
    )


def schema_keys(schema: Any) -> set[str]:
    """The JSON-Schema keywords a schema uses (property names are not keywords)."""
    found: set[str] = set()
    if isinstance(schema, dict):
        for key, value in schema.items():
            found.add(key)
            if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
                for sub in value.values():
                    found |= schema_keys(sub)
            elif key in ("items", "additionalProperties", "not"):
                found |= schema_keys(value)
            elif key in ("anyOf", "oneOf", "allOf") and isinstance(value, list):
                for sub in value:
                    found |= schema_keys(sub)
    return found


@pytest.mark.parametrize(
    ("model", "max_tokens"),
    [("deepseek-v4-pro", 128_000), ("deepseek-chat", 8_192)],  # 384K today; 8K the legacy alias
)
def test_claude_codes_request_fits_a_deepseek_route(
    crossing, fake, home, monkeypatch, model: str, max_tokens: int
) -> None:
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-deepseek-NEVER-PERSIST-9a")
    route = {"provider": "deepseek", "model": model, "base_url": fake.openai_base_url}
    proxy = crossing(chain=["anthropic:claude-opus-5-5", route])
    fake.script(*storm(), model="claude-opus-5-5")
    fake.script(ok(Turn(text="hello.txt says hi.")), model=model)
    response = send_claude_code_request(proxy)
    assert response.status_code == 200, response.text
    assert response.json()["content"][0]["text"] == "hello.txt says hi."
    assert response.headers["x-agentguard-served-model"] == model
    [sent] = openai_requests(fake)
    body = sent.body
    assert body["max_tokens"] == max_tokens and "max_completion_tokens" not in body
    # DeepSeek's thinking mode would demand a reasoning_content for the tool-call turn that
    # Claude made: the request asks for non-thinking mode and carries none
    assert body["thinking"] == {"type": "disabled"}
    assert "reasoning_content" not in json.dumps(body)
    assert [m["role"] for m in body["messages"]][-2:] == ["assistant", "tool"]
    [dropped] = events(home, "translation_dropped")
    names = dropped["dropped"]
    assert any(n.startswith("thinking mode turned off") for n in names)
    clamped = f"max_tokens 128000 → {max_tokens} ({model}'s maximum output)"
    assert (clamped in names) == (max_tokens < 128_000)


def test_claude_codes_request_fits_a_gemini_route(crossing, fake, home, monkeypatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "gemini-key-NEVER-PERSIST-5e")
    route = {"provider": "gemini", "model": "gemini-2.5-pro", "base_url": fake.openai_base_url}
    proxy = crossing(chain=["anthropic:claude-opus-5-5", route])
    fake.script(*storm(), model="claude-opus-5-5")
    fake.script(ok(Turn(text="Done.")), model="gemini-2.5-pro")
    response = send_claude_code_request(proxy)
    assert response.status_code == 200, response.text
    capture = json.loads((FIXTURES / "claude-code-2.1.330-requests.json").read_text())
    tools = capture["requests"][1]["body"]["tools"]
    assert {"$schema", "additionalProperties", "exclusiveMinimum"} <= set().union(
        *(schema_keys(t["input_schema"]) for t in tools)
    )  # what Claude Code sends, and Gemini's function declarations reject
    [sent] = openai_requests(fake)
    body = sent.body
    assert body["max_tokens"] == 65_536
    used = set().union(*(schema_keys(t["function"]["parameters"]) for t in body["tools"]))
    assert not used & {"$schema", "additionalProperties", "exclusiveMinimum", "propertyNames"}
    # every tool and every one of its arguments is still there
    assert [t["function"]["name"] for t in body["tools"]] == [t["name"] for t in tools]
    for tool, original in zip(body["tools"], tools, strict=True):
        assert set(tool["function"]["parameters"].get("properties", {})) == set(
            original["input_schema"].get("properties", {})
        )
    [dropped] = events(home, "translation_dropped")
    names = dropped["dropped"]
    assert "max_tokens 128000 → 65536 (gemini-2.5-pro's maximum output)" in names
    [schema_note] = [n for n in names if n.startswith("tool schema keys Gemini rejects")]
    for key in ("$schema", "additionalProperties", "exclusiveMinimum"):
        assert key in schema_note


def test_reasoning_content_in_an_answer_is_named_not_handed_over(project, monkeypatch) -> None:
    """DeepSeek's (or Moonshot's) chain of thought comes back in `reasoning_content`; an
    Anthropic thinking block would need a signature only Anthropic makes, so it is dropped and
    named."""
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-deepseek-NEVER-PERSIST-9a")

    def answer(request: httpx2.Request) -> httpx2.Response:
        message = {"role": "assistant", "content": "4", "reasoning_content": "2 + 2 is 4."}
        completion = {
            "id": "c1",
            "model": "deepseek-v4-pro",
            "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 5},
        }
        return httpx2.Response(200, json=completion)

    incoming = Incoming(
        kind="anthropic",
        method="POST",
        path="/v1/messages",
        query="",
        headers=[("x-api-key", API_KEY)],
        body=json.dumps(ask("2 + 2?")).encode(),
    )
    route = ProxyOptions.build(project, chain=["deepseek:deepseek-v4-pro"]).chain[0]

    async def go() -> Any:
        async with httpx2.AsyncClient(transport=httpx2.MockTransport(answer)) as http:
            return await translated.attempt(http, route, incoming)

    served = asyncio.run(go())
    assert served.value.message["content"] == [{"type": "text", "text": "4", "citations": None}]
    assert "2 + 2 is 4." not in served.value.json_body().decode()
    assert "reasoning_content in the answer" in served.notes
