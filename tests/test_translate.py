"""Anthropic Messages ⇄ OpenAI Chat Completions, on realistic Claude Code transcripts.

A fallback must let a tool loop go on when one step is served by the other kind of provider:
every tool call has to stay paired with its result, images and schemas have to cross, and
the caller has to get back the SDK type (and the stream) it asked for. The requests are sent
through the real `anthropic` and `openai` SDK clients to the fake provider, and the streams
synthesized from final answers are checked with the SDKs' own accumulators.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from anthropic import not_given
from anthropic.lib.streaming import AsyncMessageStream, MessageStream
from openai.lib.streaming.chat import ChatCompletionStreamState

from agentguard.providers import synthesize
from agentguard.providers.anthropic import AsyncReplayStream, ReplayStream
from agentguard.providers.openai import final_completion
from agentguard.providers.translate import (
    anthropic_to_openai_request,
    anthropic_to_openai_response,
    openai_to_anthropic_request,
    openai_to_anthropic_response,
)
from agentguard.testing import FakeProvider, ToolCall, Turn, ok

KEY = "sk-test-translate-0b8e2c"
CLAUDE = "claude-opus-4-7"
GPT = "gpt-5.1"
# A 1×1 PNG, as Claude Code attaches a pasted screenshot.
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5Er"
    "kJggg=="
)

# -- a Claude Code-style transcript ---------------------------------------------------------------

SYSTEM_TEXT = "You are Claude Code, Anthropic's official CLI for Claude."
SYSTEM_BLOCKS = [
    {"type": "text", "text": SYSTEM_TEXT},
    {
        "type": "text",
        "text": "Working directory: /home/dev/calc\nIs a git repository: true",
        "cache_control": {"type": "ephemeral"},
    },
]

READ_FILE = {
    "name": "read_file",
    "description": "Read a file from the local filesystem.",
    "input_schema": {
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": "Absolute or relative path"},
            "offset": {"type": "integer", "minimum": 0},
            "limit": {"type": "integer", "minimum": 1},
        },
        "required": ["path"],
        "additionalProperties": False,
    },
}
EDIT_FILE = {
    "name": "edit_file",
    "description": "Replace an exact string in a file.",
    "input_schema": {
        "type": "object",
        "properties": {
            "path": {"type": "string"},
            "old_string": {"type": "string"},
            "new_string": {"type": "string"},
            "replace_all": {"type": "boolean", "default": False},
        },
        "required": ["path", "old_string", "new_string"],
    },
}
RUN_COMMAND = {
    "name": "run_command",
    "description": "Run a shell command and return its output.",
    "input_schema": {
        "type": "object",
        "properties": {
            "command": {"type": "string"},
            "timeout_ms": {"type": "integer", "maximum": 600000},
        },
        "required": ["command"],
    },
}
TOOLS = [READ_FILE, EDIT_FILE, RUN_COMMAND]
WEB_SEARCH = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}

APP_PY = "def add(a, b):\n    return a - b\n"
TEST_PY = "from app import add\n\ndef test_add():\n    assert add(2, 2) == 4\n"
PYTEST_OUT = "F\nFAILED test_app.py::test_add - assert 0 == 4\n1 failed in 0.02s"


def image(data: str = PNG) -> dict[str, Any]:
    return {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}


def tool_use(id: str, name: str, **tool_input: Any) -> dict[str, Any]:
    return {"type": "tool_use", "id": id, "name": name, "input": tool_input}


def tool_result(id: str, content: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": id, "content": content, **extra}


def transcript(system: Any = SYSTEM_BLOCKS, **params: Any) -> dict[str, Any]:
    """Three steps of a coding agent fixing a bug, as Claude Code would send the fourth."""
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "The test fails, see the screenshot. Fix app.py."},
                image(),
            ],
        },
        {
            "role": "assistant",
            "content": [
                {
                    "type": "thinking",
                    "thinking": "Read both files and run the tests first.",
                    "signature": "EqQBCkYIBxgCKkBsig==",
                },
                {"type": "text", "text": "I'll read both files and run the tests."},
                tool_use("toolu_01A", "read_file", path="app.py"),
                tool_use("toolu_01B", "read_file", path="test_app.py", limit=200),
                tool_use("toolu_01C", "run_command", command="pytest -q"),
            ],
        },
        {
            "role": "user",
            "content": [
                tool_result("toolu_01A", APP_PY),
                tool_result("toolu_01B", [{"type": "text", "text": TEST_PY}]),
                tool_result("toolu_01C", PYTEST_OUT, is_error=True),
                {"type": "text", "text": "<system-reminder>Todo list is empty.</system-reminder>"},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "add() subtracts. Fixing it."},
                tool_use(
                    "toolu_02A",
                    "edit_file",
                    path="app.py",
                    old_string="return a - b",
                    new_string="return a + b",
                ),
            ],
        },
        {
            "role": "user",
            "content": [
                tool_result(
                    "toolu_02A",
                    [{"type": "text", "text": "The file app.py has been updated."}],
                )
            ],
        },
    ]
    body: dict[str, Any] = {
        "model": CLAUDE,
        "max_tokens": 8192,
        "system": system,
        "messages": messages,
        "tools": TOOLS,
        "tool_choice": {"type": "auto"},
        "stop_sequences": ["\n\nHuman:"],
        "temperature": 0.2,
    }
    if system is None:
        del body["system"]
    return {**body, **params}


def tool_use_ids(messages: list[dict[str, Any]]) -> list[str]:
    return [
        block["id"]
        for m in messages
        if m["role"] == "assistant" and isinstance(m["content"], list)
        for block in m["content"]
        if block["type"] == "tool_use"
    ]


# -- well-formedness, as each API checks it -------------------------------------------------------


def assert_openai_conversation(messages: list[dict[str, Any]]) -> None:
    """Chat Completions' rules: every assistant tool call is answered by `tool` messages that
    come right after it, before anything else; no `tool` message answers nothing; an assistant
    message has content or tool calls."""
    pending: list[str] = []
    for message in messages:
        role = message["role"]
        assert role in ("system", "developer", "user", "assistant", "tool"), message
        if role == "tool":
            assert pending, f"tool message answers nothing: {message}"
            assert message["tool_call_id"] == pending.pop(0), "tool results out of order"
            assert isinstance(message["content"], str)
            continue
        assert not pending, f"tool calls {pending} unanswered before a {role} message"
        if role == "assistant":
            calls = message.get("tool_calls") or []
            assert message.get("content") or calls, f"empty assistant message: {message}"
            for call in calls:
                assert call["type"] == "function" and call["id"]
                json.loads(call["function"]["arguments"])
            pending = [call["id"] for call in calls]
    assert not pending


def assert_anthropic_conversation(messages: list[dict[str, Any]]) -> None:
    """The Messages API's rules: user first, roles alternate, no empty content or text, and the
    message after an assistant's tool_use blocks starts with a tool_result for each of them."""
    assert messages and messages[0]["role"] == "user"
    for before, after in itertools.pairwise(messages):
        assert before["role"] != after["role"], "roles must alternate"
    asked: list[str] = []
    for message in messages:
        content = message["content"]
        assert content, f"empty content: {message}"
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for block in blocks:
            if block["type"] == "text":
                assert block["text"], "empty text block"
        if message["role"] == "assistant":
            asked = [b["id"] for b in blocks if b["type"] == "tool_use"]
            continue
        results = [b for b in blocks if b["type"] == "tool_result"]
        assert [b["tool_use_id"] for b in results] == asked, "tool_result ids must answer"
        assert blocks[: len(results)] == results, "tool_result blocks must come first"
        asked = []


def claude(fake: FakeProvider) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fake.base_url, api_key=KEY, max_retries=0)


def gpt(fake: FakeProvider) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.openai_base_url, api_key=KEY, max_retries=0)


def plain(value: Any) -> Any:
    """SDK objects → JSON values, as an agent's history holds them after a round trip."""
    return json.loads(json.dumps(value, default=lambda o: o.model_dump(mode="json")))


# -- Anthropic request → OpenAI request -----------------------------------------------------------


def test_transcript_becomes_a_well_formed_openai_conversation() -> None:
    done = anthropic_to_openai_request(transcript(), model=GPT)
    body, messages = done.body, done.body["messages"]
    assert_openai_conversation(messages)
    assert [m["role"] for m in messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "tool",
        "tool",
        "user",
        "assistant",
        "tool",
    ]
    system, ask, first, *_ = messages
    assert system["content"] == f"{SYSTEM_TEXT}\n\nWorking directory: /home/dev/calc\n" + (
        "Is a git repository: true"
    )
    assert ask["content"] == [
        {"type": "text", "text": "The test fails, see the screenshot. Fix app.py."},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]
    # parallel tool calls: one assistant message, its tool messages right after, in order
    assert first["content"] == "I'll read both files and run the tests."
    calls = first["tool_calls"]
    assert [c["id"] for c in calls] == ["toolu_01A", "toolu_01B", "toolu_01C"]
    assert [c["function"]["name"] for c in calls] == ["read_file", "read_file", "run_command"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [
        {"path": "app.py"},
        {"path": "test_app.py", "limit": 200},
        {"command": "pytest -q"},
    ]
    tools = [m for m in messages if m["role"] == "tool"]
    assert [t["tool_call_id"] for t in tools] == tool_use_ids(transcript()["messages"])
    assert tools[0]["content"] == APP_PY
    assert tools[1]["content"] == TEST_PY  # list content flattened to text
    assert tools[2]["content"] == f"[tool error] {PYTEST_OUT}"  # is_error survives as a marker
    # the user text that rode along with the tool results comes after the tool messages
    assert messages[6] == {
        "role": "user",
        "content": "<system-reminder>Todo list is empty.</system-reminder>",
    }
    # tool definitions keep their schemas verbatim; sampling parameters cross
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": t["name"],
                "parameters": t["input_schema"],
                "description": t["description"],
            },
        }
        for t in TOOLS
    ]
    assert body["tool_choice"] == "auto"
    assert (body["model"], body["max_completion_tokens"]) == (GPT, 8192)
    assert (body["stop"], body["temperature"]) == (["\n\nHuman:"], 0.2)
    assert "max_tokens" not in body and "system" not in body
    assert done.dropped == ["thinking block"]


def test_the_max_tokens_field_follows_the_route() -> None:
    body = anthropic_to_openai_request(
        transcript(), model="deepseek-chat", max_tokens_field="max_tokens"
    ).body
    assert body["max_tokens"] == 8192 and "max_completion_tokens" not in body


@pytest.mark.parametrize(
    ("system", "expected"),
    [
        (SYSTEM_TEXT, [{"role": "system", "content": SYSTEM_TEXT}]),
        ([{"type": "text", "text": SYSTEM_TEXT}], [{"role": "system", "content": SYSTEM_TEXT}]),
        (None, []),
    ],
    ids=["string", "blocks", "absent"],
)
def test_system_prompt_comes_first(system: Any, expected: list[dict[str, Any]]) -> None:
    messages = anthropic_to_openai_request(transcript(system), model=GPT).body["messages"]
    assert messages[: len(expected)] == expected
    assert [m["role"] for m in messages[len(expected) :]].count("system") == 0


def test_claude_code_system_entry_inside_messages_stays_a_system_message() -> None:
    params = transcript(system=None)
    params["messages"].insert(0, {"role": "system", "content": SYSTEM_BLOCKS})
    messages = anthropic_to_openai_request(params, model=GPT).body["messages"]
    assert messages[0]["role"] == "system" and messages[0]["content"].startswith(SYSTEM_TEXT)


def test_what_cannot_cross_is_dropped_and_reported() -> None:
    params = transcript(
        tools=[*TOOLS, WEB_SEARCH, {"type": "bash_20250124", "name": "bash"}],
        thinking={"type": "enabled", "budget_tokens": 4096},
        top_k=40,
    )
    params["messages"][1]["content"].insert(
        1, {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT"}
    )
    done = anthropic_to_openai_request(params, model=GPT)
    assert [t["function"]["name"] for t in done.body["tools"]] == [t["name"] for t in TOOLS]
    assert sorted(done.dropped) == sorted(
        [
            "thinking block",
            "thinking block",
            "server tool web_search",
            "server tool bash",
            "thinking configuration",
            "parameter top_k",
        ]
    )
    for message in done.body["messages"]:
        assert "thinking" not in json.dumps(message).lower()


def test_an_assistant_turn_of_only_thinking_is_left_out() -> None:
    thought = {"type": "thinking", "thinking": "hmm", "signature": "c2ln"}
    params = {
        "max_tokens": 100,
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [thought]},
            {"role": "user", "content": "still there?"},
        ],
    }
    done = anthropic_to_openai_request(params, model=GPT)
    assert done.body["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "user", "content": "still there?"},
    ]
    assert done.dropped == ["thinking block"]


def test_empty_tool_results_and_empty_turns_stay_well_formed() -> None:
    params = {
        "max_tokens": 100,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Touch x."}]},
            {
                "role": "assistant",
                "content": [tool_use("toolu_t", "run_command", command="touch x")],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_t"}]},
            {"role": "assistant", "content": []},
        ],
    }
    messages = anthropic_to_openai_request(params, model=GPT).body["messages"]
    assert_openai_conversation(messages)
    assert messages[-1] == {"role": "tool", "tool_call_id": "toolu_t", "content": ""}
    back = openai_to_anthropic_request({"messages": messages}, model=CLAUDE).body["messages"]
    assert back[-1] == {"role": "user", "content": [tool_result("toolu_t", "")]}
    assert_anthropic_conversation(back)


def test_images_returned_by_a_tool_follow_the_tool_messages() -> None:
    params = {
        "max_tokens": 100,
        "messages": [
            {"role": "user", "content": "Take a screenshot."},
            {"role": "assistant", "content": [tool_use("toolu_s", "screenshot")]},
            {
                "role": "user",
                "content": [
                    tool_result("toolu_s", [{"type": "text", "text": "captured"}, image()]),
                    {"type": "text", "text": "What do you see?"},
                ],
            },
        ],
    }
    messages = anthropic_to_openai_request(params, model=GPT).body["messages"]
    assert_openai_conversation(messages)
    tool, after = messages[2:]
    assert tool == {
        "role": "tool",
        "tool_call_id": "toolu_s",
        "content": "captured\n[image attached below]",
    }
    assert after["role"] == "user"
    assert after["content"][1] == {
        "type": "image_url",
        "image_url": {"url": f"data:image/png;base64,{PNG}"},
    }
    assert after["content"][-1] == {"type": "text", "text": "What do you see?"}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        (
            {"type": "tool", "name": "run_command"},
            {"tool_choice": {"type": "function", "function": {"name": "run_command"}}},
        ),
        (
            {"type": "auto", "disable_parallel_tool_use": True},
            {"tool_choice": "auto", "parallel_tool_calls": False},
        ),
    ],
    ids=["auto", "any", "none", "tool", "no-parallel"],
)
def test_tool_choice_crosses_both_ways(choice: dict[str, Any], expected: dict[str, Any]) -> None:
    body = anthropic_to_openai_request(transcript(tool_choice=choice), model=GPT).body
    assert {k: body[k] for k in expected} == expected
    if "parallel_tool_calls" not in expected:
        assert "parallel_tool_calls" not in body
    back = openai_to_anthropic_request(body, model=CLAUDE).body
    assert back["tool_choice"] == choice


def test_translated_request_is_accepted_by_the_openai_sdk_and_the_fake(fake: FakeProvider) -> None:
    body = anthropic_to_openai_request(transcript(), model=GPT).body
    fake.set_model(lambda request: Turn(text="Done: add() now adds."))
    completion = gpt(fake).chat.completions.create(**copy.deepcopy(body))
    assert completion.choices[0].message.content == "Done: add() now adds."
    [seen] = fake.requests
    assert (seen.api, seen.model, seen.reply) == ("openai", GPT, "ok")
    assert seen.body == body  # exactly the translated request went over the wire


def test_anthropic_openai_anthropic_round_trip_keeps_the_conversation(
    fake: FakeProvider,
) -> None:
    original = transcript()
    there = anthropic_to_openai_request(original, model=GPT).body
    back = openai_to_anthropic_request(there, model=CLAUDE)
    # the Messages API has no sampling parameters any more: temperature is reported, not sent
    assert back.dropped == ["parameter temperature"]
    body = back.body
    assert body["system"] == "\n\n".join(b["text"] for b in SYSTEM_BLOCKS)
    assert body["tools"] == TOOLS
    assert body["tool_choice"] == {"type": "auto"}
    assert body["max_tokens"] == 8192 and "temperature" not in body
    assert body["stop_sequences"] == ["\n\nHuman:"]

    def expected(block: dict[str, Any]) -> dict[str, Any] | None:
        """The original block as it should come back: thinking dropped, tool result text
        flattened to a string."""
        if block["type"] == "thinking":
            return None
        if block["type"] == "tool_result" and isinstance(block["content"], list):
            return {**block, "content": "\n".join(p["text"] for p in block["content"])}
        return block

    want = [
        {
            "role": m["role"],
            "content": [b for b in map(expected, m["content"]) if b is not None],
        }
        for m in original["messages"]
    ]
    assert body["messages"] == want
    assert_anthropic_conversation(body["messages"])

    # and the Anthropic SDK sends it as it is
    fake.set_model(lambda request: Turn(text="ok"))
    claude(fake).messages.create(**copy.deepcopy(body))
    assert fake.requests[0].body == body


# -- OpenAI request → Anthropic request -----------------------------------------------------------


def test_openai_agent_conversation_becomes_alternating_anthropic_messages() -> None:
    call = {
        "id": "call_9",
        "type": "function",
        "function": {"name": "run_command", "arguments": '{"command": "ls"}'},
    }
    params = {
        "model": GPT,
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "system", "content": [{"type": "text", "text": "Repo: calc"}]},
            {"role": "user", "content": "List the files."},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_9", "content": "app.py\ntest_app.py"},
            {"role": "user", "content": [{"type": "text", "text": "Now the tests?"}]},
            {"role": "assistant", "content": None},  # an empty turn some agents keep
            {"role": "user", "content": "Please."},
        ],
        "max_completion_tokens": 512,
        "stop": "END",
        "tools": [{"type": "function", "function": {"name": "run_command"}}],
        "parallel_tool_calls": False,
        "response_format": {"type": "json_object"},
        "n": 1,
        "temperature": 0,
        "seed": None,
    }
    done = openai_to_anthropic_request(params, model=CLAUDE)
    body = done.body
    assert body["system"] == "Be brief.\n\nRepo: calc"
    assert body["max_tokens"] == 512 and body["stop_sequences"] == ["END"]
    assert body["tools"] == [
        {"name": "run_command", "input_schema": {"type": "object", "properties": {}}}
    ]
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "List the files."}]},
        {"role": "assistant", "content": [tool_use("call_9", "run_command", command="ls")]},
        {
            "role": "user",
            "content": [
                tool_result("call_9", "app.py\ntest_app.py"),
                {"type": "text", "text": "Now the tests?"},
                {"type": "text", "text": "Please."},
            ],
        },
    ]
    assert_anthropic_conversation(body["messages"])
    assert done.dropped == ["parameter temperature", "parameter response_format"]


# -- responses ------------------------------------------------------------------------------------

COMPLETION = {
    "id": "chatcmpl-AbC123",
    "object": "chat.completion",
    "created": 1_790_000_000,
    "model": GPT,
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Checking both files.",
                "refusal": None,
                "tool_calls": [
                    {
                        "id": "call_A",
                        "type": "function",
                        "function": {"name": "read_file", "arguments": '{"path": "app.py"}'},
                    },
                    {
                        "id": "call_B",
                        "type": "function",
                        "function": {
                            "name": "run_command",
                            "arguments": '{"command": "pytest -q", "timeout_ms": 60000}',
                        },
                    },
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {
        "prompt_tokens": 1200,
        "completion_tokens": 57,
        "total_tokens": 1257,
        "prompt_tokens_details": {"cached_tokens": 1000},
    },
}


def test_openai_tool_calls_become_an_anthropic_tool_use_message_and_back() -> None:
    data = openai_to_anthropic_response(COMPLETION)
    message = synthesize.anthropic_message(data)
    assert isinstance(message, anthropic.types.Message)
    assert message.stop_reason == "tool_use" and message.model == GPT
    text, first, second = message.content
    assert text.type == "text" and text.text == "Checking both files."
    assert (first.type, first.id, first.name, first.input) == (
        "tool_use",
        "call_A",
        "read_file",
        {"path": "app.py"},
    )
    assert (second.id, second.input) == ("call_B", {"command": "pytest -q", "timeout_ms": 60000})
    assert (message.usage.input_tokens, message.usage.output_tokens) == (200, 57)
    assert message.usage.cache_read_input_tokens == 1000

    back = synthesize.openai_completion(anthropic_to_openai_response(message))
    assert isinstance(back, openai.types.chat.ChatCompletion)
    reply, original = back.choices[0].message, COMPLETION["choices"][0]["message"]
    assert back.choices[0].finish_reason == "tool_calls"
    assert reply.content == original["content"]
    assert [
        (c.id, c.function.name, json.loads(c.function.arguments)) for c in reply.tool_calls
    ] == [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in original["tool_calls"]
    ]
    assert back.usage.model_dump(exclude_none=True) == {
        **COMPLETION["usage"],
        "prompt_tokens_details": {"cached_tokens": 1000},
    }


def test_anthropic_usage_counts_the_cache_in_openai_prompt_tokens() -> None:
    message = {
        **ANTHROPIC_CASES["text"],
        "usage": {
            "input_tokens": 50,
            "cache_creation_input_tokens": 300,
            "cache_read_input_tokens": 4000,
            "output_tokens": 9,
        },
    }
    usage = synthesize.openai_completion(anthropic_to_openai_response(message)).usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (4350, 9, 4359)
    assert usage.prompt_tokens_details.cached_tokens == 4000


def test_malformed_tool_arguments_are_kept_not_crashed_on() -> None:
    completion = copy.deepcopy(COMPLETION)
    broken = '{"path": "app.py", "limit": '
    completion["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = broken
    message = synthesize.anthropic_message(openai_to_anthropic_response(completion))
    assert message.content[1].input == {"_unparsed_arguments": broken}
    back = anthropic_to_openai_response(message)
    assert back["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == broken
    # and the same when the history is sent on as a request
    history = {"messages": [{"role": "assistant", "content": plain(message.content)}]}
    sent = anthropic_to_openai_request(history, model=GPT).body["messages"][0]
    assert sent["tool_calls"][0]["function"]["arguments"] == broken


def test_tool_calls_under_a_stop_finish_reason_still_mean_tool_use() -> None:
    completion = copy.deepcopy(COMPLETION)
    completion["choices"][0]["finish_reason"] = "stop"  # what some compatible gateways send
    assert openai_to_anthropic_response(completion)["stop_reason"] == "tool_use"


def test_a_refusal_becomes_refusal_text() -> None:
    completion = copy.deepcopy(COMPLETION)
    completion["choices"][0]["message"] = {
        "role": "assistant",
        "content": None,
        "refusal": "I can't help with that.",
    }
    completion["choices"][0]["finish_reason"] = "stop"
    message = synthesize.anthropic_message(openai_to_anthropic_response(completion))
    assert message.stop_reason == "refusal"
    assert [b.text for b in message.content] == ["I can't help with that."]


def test_real_sdk_answers_convert_to_the_other_sdk_type(fake: FakeProvider) -> None:
    turn = Turn(
        text="Reading.",
        thinking="Two files.",
        tool_calls=[ToolCall("read_file", {"path": "app.py"}), ToolCall("ls", {})],
    )
    fake.set_model(lambda request: turn)
    completion = gpt(fake).chat.completions.create(
        model=GPT, messages=[{"role": "user", "content": "go"}]
    )
    message = synthesize.anthropic_message(openai_to_anthropic_response(completion))
    assert message.stop_reason == "tool_use"
    assert [(b.type, getattr(b, "input", None)) for b in message.content] == [
        ("text", None),
        ("tool_use", {"path": "app.py"}),
        ("tool_use", {}),
    ]
    assert [b.id for b in message.content[1:]] == [
        c.id for c in completion.choices[0].message.tool_calls
    ]

    native = claude(fake).messages.create(
        model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "go"}]
    )
    back = synthesize.openai_completion(anthropic_to_openai_response(native))
    choice = back.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Reading."
    assert [c.id for c in choice.message.tool_calls] == [b.id for b in native.content[2:]]
    assert back.usage.prompt_tokens == native.usage.input_tokens


# -- a tool loop across providers -----------------------------------------------------------------


def run_tool(block: Any) -> dict[str, Any]:
    outputs = {"read_file": APP_PY, "run_command": PYTEST_OUT, "edit_file": "updated"}
    return tool_result(block.id, outputs[block.name])


def test_a_tool_loop_continues_across_providers(fake: FakeProvider) -> None:
    fake.script(
        ok(Turn(text="Reading.", tool_calls=[ToolCall("read_file", {"path": "app.py"})])),
        ok(
            Turn(
                text="",
                tool_calls=[
                    ToolCall("edit_file", {"path": "app.py", "old_string": "-", "new_string": "+"}),
                    ToolCall("run_command", {"command": "pytest -q"}),
                ],
            )
        ),
        ok(Turn(text="Fixed.")),
    )
    params: dict[str, Any] = {
        "model": CLAUDE,
        "max_tokens": 1024,
        "system": SYSTEM_TEXT,
        "tools": TOOLS,
        "messages": [{"role": "user", "content": "Fix the failing test."}],
    }
    # step 1: Anthropic
    first = claude(fake).messages.create(**params)
    assert first.stop_reason == "tool_use"
    params["messages"].append({"role": "assistant", "content": first.content})
    uses = [b for b in first.content if b.type == "tool_use"]
    params["messages"].append({"role": "user", "content": [run_tool(b) for b in uses]})

    # step 2: the Anthropic route is overloaded; the step goes to an OpenAI route
    translated = anthropic_to_openai_request(params, model=GPT)
    assert translated.dropped == []
    assert_openai_conversation(translated.body["messages"])
    completion = gpt(fake).chat.completions.create(**translated.body)
    second = synthesize.anthropic_message(openai_to_anthropic_response(completion))
    assert second.stop_reason == "tool_use"
    assert [b.type for b in second.content] == ["tool_use", "tool_use"]
    params["messages"].append({"role": "assistant", "content": second.content})
    uses = [b for b in second.content if b.type == "tool_use"]
    params["messages"].append({"role": "user", "content": [run_tool(b) for b in uses]})

    # step 3: back on Anthropic, with a conversation it accepts
    third = claude(fake).messages.create(**params)
    assert [b.text for b in third.content] == ["Fixed."]
    assert [r.api for r in fake.requests] == ["anthropic", "openai", "anthropic"]
    sent = fake.requests[2].body["messages"]
    assert_anthropic_conversation(sent)
    assert [m["role"] for m in sent] == ["user", "assistant", "user", "assistant", "user"]
    assert tool_use_ids(sent) == [
        first.content[1].id,
        *(c.id for c in completion.choices[0].message.tool_calls),
    ]
    assert sent[3]["content"][0]["input"] == {
        "path": "app.py",
        "old_string": "-",
        "new_string": "+",
    }


# -- synthesized streams --------------------------------------------------------------------------

ANTHROPIC_CASES = {
    "text": {
        "id": "msg_text",
        "type": "message",
        "role": "assistant",
        "model": GPT,
        "content": [{"type": "text", "text": "All 12 tests pass.", "citations": None}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 900, "output_tokens": 9},
    },
    "tools": {
        "id": "msg_tools",
        "type": "message",
        "role": "assistant",
        "model": GPT,
        "content": [
            {"type": "text", "text": "Reading both.", "citations": None},
            tool_use("toolu_1", "read_file", path="app.py", limit=50),
            tool_use("toolu_2", "run_command", command="grep -n 'a - b' *.py"),
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 900, "output_tokens": 40, "cache_read_input_tokens": 800},
    },
    "thinking": {
        "id": "msg_think",
        "type": "message",
        "role": "assistant",
        "model": CLAUDE,
        "content": [
            {"type": "thinking", "thinking": "6 × 7 — easy.", "signature": "EuYBCkQYAiJA=="},
            {"type": "text", "text": "42", "citations": None},
        ],
        "stop_reason": "stop_sequence",
        "stop_sequence": "\n\nHuman:",
        "usage": {"input_tokens": 12, "output_tokens": 30},
    },
    "server-tools": {
        "id": "msg_search",
        "type": "message",
        "role": "assistant",
        "model": CLAUDE,
        "content": [
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
            {
                "type": "server_tool_use",
                "id": "srvtoolu_1",
                "name": "web_search",
                "input": {"query": "pytest approx"},
            },
            {
                "type": "web_search_tool_result",
                "tool_use_id": "srvtoolu_1",
                "content": [
                    {
                        "type": "web_search_result",
                        "url": "https://docs.pytest.org/en/stable/reference.html",
                        "title": "API Reference",
                        "encrypted_content": "EqgfCioIARgBIiQ3",
                        "page_age": None,
                    }
                ],
            },
            {
                "type": "text",
                "text": "Use pytest.approx.",
                "citations": [
                    {
                        "type": "web_search_result_location",
                        "url": "https://docs.pytest.org/en/stable/reference.html",
                        "title": "API Reference",
                        "encrypted_index": "Eo8BCioIAhgBIiQy",
                        "cited_text": "pytest.approx",
                    }
                ],
            },
        ],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 2100,
            "output_tokens": 90,
            "server_tool_use": {"web_search_requests": 1, "web_fetch_requests": 0},
        },
    },
}


def replay(events: list[Any]) -> ReplayStream:
    response = httpx2.Response(200, request=httpx2.Request("POST", "http://127.0.0.1/v1/messages"))
    client = anthropic.Anthropic(api_key="x", base_url="http://127.0.0.1:9")
    return ReplayStream(events, response, client)


def dump(message: Any) -> dict[str, Any]:
    data = message.model_dump(mode="json")
    for block in data["content"]:
        block.pop("parsed_output", None)
    return data


@pytest.mark.parametrize("case", list(ANTHROPIC_CASES))
def test_anthropic_events_rebuild_the_message_in_the_sdk(case: str) -> None:
    message = ANTHROPIC_CASES[case]
    events = synthesize.anthropic_events(message)
    assert all(isinstance(e, anthropic.BaseModel) for e in events)
    kinds = [e.type for e in events]
    blocks = len(message["content"])
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == blocks
    start = events[0].message
    assert start.content == [] and start.stop_reason is None
    assert start.usage.input_tokens == message["usage"]["input_tokens"]
    assert start.usage.output_tokens in (0, 1)
    assert events[-2].usage.output_tokens == message["usage"]["output_tokens"]

    final = MessageStream(replay(events), output_format=not_given).get_final_message()
    assert dump(final) == dump(synthesize.anthropic_message(message))


def test_anthropic_events_announce_blocks_empty_then_fill_them() -> None:
    events = synthesize.anthropic_events(ANTHROPIC_CASES["tools"])
    starts = [e.content_block.model_dump() for e in events if e.type == "content_block_start"]
    assert starts[0] == {"type": "text", "text": "", "citations": None}
    assert starts[1]["input"] == {} and starts[1]["id"] == "toolu_1"
    deltas = [e.delta for e in events if e.type == "content_block_delta"]
    assert [d.type for d in deltas] == ["text_delta", "input_json_delta", "input_json_delta"]
    assert json.loads(deltas[1].partial_json) == {"path": "app.py", "limit": 50}

    thinking = synthesize.anthropic_events(ANTHROPIC_CASES["thinking"])
    kinds = [e.delta.type for e in thinking if e.type == "content_block_delta"]
    assert kinds == ["thinking_delta", "signature_delta", "text_delta"]


def test_message_stream_helpers_work_on_synthesized_events() -> None:
    message = ANTHROPIC_CASES["tools"]
    with MessageStream(replay(synthesize.anthropic_events(message)), output_format=not_given) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "Reading both."
    assert [b.input for b in final.content[1:]] == [b["input"] for b in message["content"][1:]]

    async def consume() -> Any:
        response = httpx2.Response(
            200, request=httpx2.Request("POST", "http://127.0.0.1/v1/messages")
        )
        client = anthropic.AsyncAnthropic(api_key="x", base_url="http://127.0.0.1:9")
        events = synthesize.anthropic_events(message)
        stream = AsyncMessageStream(
            AsyncReplayStream(events, response, client), output_format=not_given
        )
        return await stream.get_final_message()

    assert dump(asyncio.run(consume())) == dump(synthesize.anthropic_message(message))


def test_events_from_a_json_answer_match_the_fakes_real_stream(fake: FakeProvider) -> None:
    """The same turn streamed by the (real-API-shaped) fake and synthesized from its JSON."""
    fake.set_model(
        lambda request: Turn(
            text="I will read both files.",
            thinking="The bug is in add().",
            tool_calls=[ToolCall("read_file", {"path": "app.py", "lines": [1, 2]}, id="toolu_X")],
        )
    )
    client, ask = (
        claude(fake),
        {"model": CLAUDE, "max_tokens": 64, "messages": [{"role": "user", "content": "go"}]},
    )
    whole = client.messages.create(**ask)
    with client.messages.stream(**ask) as live:
        streamed = live.get_final_message()
    synthesized = MessageStream(
        replay(synthesize.anthropic_events(whole)), output_format=not_given
    ).get_final_message()
    assert dump(synthesized) == dump(whole)
    assert dump(synthesized)["content"] == dump(streamed)["content"]


def settled(completion: Any) -> dict[str, Any]:
    """A completion's JSON without what the stream accumulator adds (tool call `index`)."""
    data = completion.model_dump(mode="json", exclude_none=True)
    for choice in data["choices"]:
        for call in choice["message"].get("tool_calls") or []:
            call.pop("index", None)
    return data


OPENAI_TEXT = {
    **COMPLETION,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "All 12 tests pass.", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
}


@pytest.mark.parametrize("completion", [OPENAI_TEXT, COMPLETION], ids=["text", "tools"])
def test_openai_chunks_rebuild_the_completion_in_the_sdk(completion: dict[str, Any]) -> None:
    chunks = synthesize.openai_chunks(completion)
    assert all(isinstance(c, openai.types.chat.ChatCompletionChunk) for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    finish, usage = chunks[-2:]
    assert finish.choices[0].finish_reason == completion["choices"][0]["finish_reason"]
    assert usage.choices == [] and usage.usage.model_dump(exclude_none=True) == completion["usage"]
    assert all(c.usage is None for c in chunks[:-1])

    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(chunk)
    rebuilt = state.get_final_completion().choices[0].message
    original = synthesize.openai_completion(completion).choices[0].message
    assert rebuilt.content == original.content
    assert [c.model_dump(include={"id", "type", "function"}) for c in rebuilt.tool_calls or []] == [
        {**c.model_dump(), "function": {**c.function.model_dump(), "parsed_arguments": None}}
        for c in original.tool_calls or []
    ]
    # the seam's own accumulator (usage included) gives back the very completion
    assert settled(final_completion(chunks)) == settled(synthesize.openai_completion(completion))


def test_openai_chunks_stream_tool_calls_like_the_api() -> None:
    chunks = synthesize.openai_chunks(COMPLETION)
    calls = [
        c.choices[0].delta.tool_calls[0]
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
    ]
    heads = [c for c in calls if c.id]
    assert [(h.index, h.id, h.type, h.function.name, h.function.arguments) for h in heads] == [
        (0, "call_A", "function", "read_file", ""),
        (1, "call_B", "function", "run_command", ""),
    ]
    pieces = [c for c in calls if not c.id]
    assert [(p.index, p.function.arguments) for p in pieces] == [
        (0, '{"path": "app.py"}'),
        (1, '{"command": "pytest -q", "timeout_ms": 60000}'),
    ]
    tool_only = copy.deepcopy(COMPLETION)
    tool_only["choices"][0]["message"]["content"] = None
    assert final_completion(synthesize.openai_chunks(tool_only)).choices[0].message.content is None


def test_chunks_from_a_json_answer_match_the_fakes_real_stream(fake: FakeProvider) -> None:
    fake.set_model(
        lambda request: Turn(
            text="Looking.", tool_calls=[ToolCall("read_file", {"path": "a.py"}, id="call_X")]
        )
    )
    client = gpt(fake)
    ask = {"model": GPT, "messages": [{"role": "user", "content": "go"}]}
    whole = client.chat.completions.create(**ask)
    live = list(
        client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True})
    )
    synthesized = settled(final_completion(synthesize.openai_chunks(whole)))
    assert synthesized == settled(whole)
    streamed = settled(final_completion(live))
    assert {**synthesized, "id": None} == {**streamed, "id": None}  # two requests, two ids
