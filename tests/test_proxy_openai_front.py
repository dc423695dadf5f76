"""Cross-provider fallback on the proxy's OpenAI front: the real openai SDK, its primary route
overloaded, served by an Anthropic route — and answered as Chat Completions all the same.

Two fake providers: the OpenAI upstream (the client's own provider, answering 529s or 503s)
and the Anthropic upstream, which accepts only the key in $ANTHROPIC_API_KEY — so a request
that reaches it with anything else (the client's own OpenAI key, say) is a 401 the tests see.
The tests look at what the client got (a ChatCompletion, JSON or chunks), what the Anthropic
side received (a Messages request, tool results as `tool_result` blocks) and what the store
recorded (a substitution, a `translation_dropped` event).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from agentguard.proxy import ProxyThread
from agentguard.testing import FakeProvider, ToolCall, Turn, error, ok
from tests.conftest import API_KEY, ATTEMPTS, storm
from tests.test_proxy import steps
from tests.test_proxy_translate import events

GPT, SONNET = "gpt-5.5", "claude-sonnet-4-6"
ANTHROPIC_KEY = "sk-ant-env-key-NEVER-PERSIST-41c2"
READ_FILE = {
    "type": "function",
    "function": {
        "name": "read_file",
        "description": "Read a file of the project",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string"}},
            "required": ["path"],
        },
    },
}


@pytest.fixture
def claude_side() -> Iterator[FakeProvider]:
    """The Anthropic upstream: a fake that accepts only the proxy's $ANTHROPIC_API_KEY."""
    with FakeProvider(api_key=ANTHROPIC_KEY) as server:
        yield server


@pytest.fixture
def crossing(
    start_proxy: Callable[..., ProxyThread],
    claude_side: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., ProxyThread]:
    """Factory: a proxy whose OpenAI front falls back from gpt-5.5 to Claude Sonnet, keyed
    from the environment, accepting the client's key."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)

    def make(**options: Any) -> ProxyThread:
        options.setdefault("chain", [f"openai:{GPT}", f"anthropic:{SONNET}"])
        options.setdefault("accepted_keys", [API_KEY])
        options.setdefault("upstream", claude_side.base_url)
        return start_proxy(**options)

    return make


def gpt(proxy: ProxyThread, key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)


def conversation(text: str = "What does app.py do?") -> list[dict[str, Any]]:
    return [
        {"role": "developer", "content": "You are a terse coding agent."},
        {"role": "user", "content": text},
    ]


def test_a_completion_falls_back_to_an_anthropic_route_and_comes_back_openai(
    crossing, fake, claude_side, home
) -> None:
    proxy = crossing()
    fake.script(*storm(), model=GPT)
    claude_side.script(ok(Turn(text="It adds two numbers.")), model=SONNET)
    screenshot = [
        {"type": "text", "text": "And these?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/diagram.png"}},
    ]
    raw = gpt(proxy).chat.completions.with_raw_response.create(
        model=GPT,
        messages=[*conversation(), {"role": "user", "content": screenshot}],
        max_completion_tokens=300,
        temperature=0.2,
        stop=["\nUser:"],
        seed=7,
        user="someone",
    )
    completion = raw.parse()
    assert isinstance(completion, openai.types.chat.ChatCompletion)
    assert completion.model == SONNET
    assert raw.headers["x-agentguard-served-model"] == SONNET
    assert completion._request_id == claude_side.requests[-1].request_id  # x-request-id
    assert completion.choices[0].message.content == "It adds two numbers."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    assert [r.reply for r in fake.requests] == ["error:529"] * ATTEMPTS
    [sent] = claude_side.requests
    assert (sent.path, sent.api, sent.reply) == ("/v1/messages", "anthropic", "ok")
    body = sent.body
    assert body["model"] == SONNET and body["stream"] is True
    assert body["system"] == "You are a terse coding agent."
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What does app.py do?"},
                {"type": "text", "text": "And these?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                },
                {
                    "type": "image",
                    "source": {"type": "url", "url": "https://example.com/diagram.png"},
                },
            ],
        }
    ]
    assert body["max_tokens"] == 300 and body["stop_sequences"] == ["\nUser:"]
    assert body["temperature"] == 0.2  # Sonnet 4.6 still takes it
    assert "seed" not in body and "user" not in body
    # the route's own key (the fake refuses any other) and no client header
    assert sent.headers["x-api-key"] == "***" and "authorization" not in sent.headers
    assert sent.headers["anthropic-version"] == "2023-06-01"
    [step] = steps(home)
    assert (step["requested_model"], step["served_model"], step["substituted"]) == (
        GPT,
        SONNET,
        1,
    )
    assert (step["requested_provider"], step["served_provider"]) == ("openai", "anthropic")
    assert step["stop_reason"] == "stop"
    assert (step["input_tokens"], step["output_tokens"]) == (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
    )
    [dropped] = events(home, "translation_dropped")
    assert dropped["route"] == f"anthropic:{SONNET}"
    assert "parameter seed" in dropped["dropped"] and "parameter user" in dropped["dropped"]


def test_a_streamed_tool_call_round_trip_through_an_anthropic_route(
    crossing, fake, claude_side, home
) -> None:
    proxy = crossing()
    client = gpt(proxy)
    fake.script(*[error(503) for _ in range(ATTEMPTS)], model=GPT)
    claude_side.script(
        ok(Turn(text="Reading it.", tool_calls=[ToolCall("read_file", {"path": "app.py"})])),
        ok(Turn(text="It subtracts: a bug.")),
        model=SONNET,
    )
    raw = client.chat.completions.with_raw_response.create(
        model=GPT,
        messages=conversation(),
        tools=[READ_FILE],
        tool_choice="auto",
        stream=True,
        stream_options={"include_usage": True},
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.headers["x-agentguard-served-model"] == SONNET
    chunks = list(raw.parse())
    assert all(c.model == SONNET for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == "Reading it."
    [head] = [call for d in deltas for call in (d.tool_calls or []) if call.id]
    arguments = "".join(
        call.function.arguments or "" for d in deltas for call in (d.tool_calls or [])
    )
    assert head.function.name == "read_file" and json.loads(arguments) == {"path": "app.py"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    [first] = claude_side.requests
    assert first.body["tools"] == [
        {
            "name": "read_file",
            "input_schema": READ_FILE["function"]["parameters"],
            "description": "Read a file of the project",
        }
    ]
    assert first.body["tool_choice"] == {"type": "auto"}

    # the tool's result goes back as an OpenAI tool message; the primary is still down
    fake.script(*[error(503) for _ in range(ATTEMPTS)], model=GPT)
    follow = [
        *conversation(),
        {
            "role": "assistant",
            "content": "Reading it.",
            "tool_calls": [
                {
                    "id": head.id,
                    "type": "function",
                    "function": {"name": "read_file", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": head.id, "content": "def add(a, b): return a - b"},
    ]
    second = client.chat.completions.create(
        model=GPT, messages=follow, tools=[READ_FILE], stream=True
    )
    chunks = list(second)
    assert all(c.choices for c in chunks)  # no usage chunk unless asked for
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "It subtracts: a bug."
    assert chunks[-1].choices[0].finish_reason == "stop"
    sent = claude_side.requests[-1].body["messages"]
    assert sent[-2] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Reading it."},
            {"type": "tool_use", "id": head.id, "name": "read_file", "input": {"path": "app.py"}},
        ],
    }
    assert sent[-1] == {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": head.id,
                "content": "def add(a, b): return a - b",
            }
        ],
    }
    assert [(s["served_model"], s["substituted"], s["status"]) for s in steps(home)] == [
        (SONNET, 1, "ok"),
        (SONNET, 1, "ok"),
    ]


def test_max_tokens_and_sampling_fit_the_claude_model(crossing, fake, claude_side, home) -> None:
    proxy = crossing(chain=[f"openai:{GPT}", "anthropic:claude-opus-4-7"])
    fake.script(*storm(), *storm(), model=GPT)
    # no max_completion_tokens: the model's maximum (the Messages API needs one)
    gpt(proxy).chat.completions.create(model=GPT, messages=conversation(), temperature=0.3)
    # more than the model's maximum: clamped
    gpt(proxy).chat.completions.create(
        model=GPT, messages=conversation(), max_completion_tokens=500_000, top_p=0.5
    )
    first, second = (r.body for r in claude_side.requests)
    assert first["max_tokens"] == second["max_tokens"] == 128_000
    for body in (first, second):
        assert "temperature" not in body and "top_p" not in body  # Opus 4.7 refuses both
    notes = [e["dropped"] for e in events(home, "translation_dropped")]
    assert "parameter temperature (claude-opus-4-7 refuses it)" in notes[0]
    assert "max_tokens 500000 → 128000 (claude-opus-4-7's maximum output)" in notes[1]


def test_the_anthropic_routes_error_reaches_the_client_in_openai_shape(
    crossing, fake, claude_side
) -> None:
    proxy = crossing()
    fake.script(*storm(), model=GPT)
    claude_side.script(error(400, message="messages.0: tool_use ids must be unique"), model=SONNET)
    with pytest.raises(openai.BadRequestError) as caught:
        gpt(proxy).chat.completions.create(model=GPT, messages=conversation())
    assert caught.value.body == {
        "message": "messages.0: tool_use ids must be unique",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


def test_a_request_without_the_accepted_key_never_uses_the_env_keyed_route(
    crossing, fake, claude_side
) -> None:
    proxy = crossing()
    fake.script(*storm(), model=GPT)
    with pytest.raises(openai.APIStatusError) as caught:
        gpt(proxy, key="sk-someone-else").chat.completions.create(
            model=GPT, messages=conversation()
        )
    assert caught.value.status_code == 529
    assert claude_side.requests == []
