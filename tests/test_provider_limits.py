"""providers.limits and providers.gemini_schema: a translated request fitted to its route, every
change named — so a fallback never sends a provider what it answers with a 400."""

from __future__ import annotations

from typing import Any

import pytest

from agentguard.providers import gemini_schema, limits
from agentguard.providers.translate import openai_to_anthropic_request
from agentguard.routes import parse_route


def route(entry: Any) -> Any:
    return parse_route(entry)


@pytest.mark.parametrize(
    ("entry", "family"),
    [
        ("deepseek:deepseek-v4-pro", "deepseek"),
        (
            {"provider": "gw", "model": "deepseek-v4-pro", "base_url": "https://api.deepseek.com"},
            "deepseek",
        ),
        ("gemini:gemini-2.5-pro", "gemini"),
        (
            {
                "provider": "google",
                "model": "gemini-3.5-flash",
                "base_url": "https://generativelanguage.googleapis.com/v1beta/openai/",
            },
            "gemini",
        ),
        ("openai:gpt-5.5", "openai"),
        ("anthropic:claude-sonnet-4-6", "anthropic"),
        ("openrouter:deepseek/deepseek-v4-pro", ""),  # an aggregator: its own rules
        ("moonshot:kimi-k2", ""),
    ],
)
def test_a_route_is_known_by_its_provider_or_its_host(entry: Any, family: str) -> None:
    assert limits.family(route(entry)) == family


@pytest.mark.parametrize(
    ("entry", "most"),
    [
        ("deepseek:deepseek-v4-pro", 384_000),
        ("deepseek:deepseek-v4-flash", 384_000),
        ("deepseek:deepseek-chat", 8_192),
        ("deepseek:deepseek-reasoner", 65_536),
        ("gemini:gemini-2.5-pro", 65_536),
        ("gemini:gemini-3.8-flash", 65_536),
        ("gemini:gemini-2.0-flash", 8_192),
        ("openai:gpt-5.5", 128_000),
        ("openai:o3", 100_000),
        ("openai:gpt-4.1-mini", 32_768),
        ("openai:gpt-4o-2024-08-06", 16_384),
        ("openai:some-fine-tune", None),
        ("anthropic:claude-opus-4-7", 128_000),
        ("anthropic:claude-opus-5-5", 128_000),
        ("anthropic:claude-sonnet-4-6", 128_000),
        ("anthropic:claude-sonnet-4-5-20250929", 64_000),
        ("anthropic:claude-haiku-4-5", 64_000),
        ("anthropic:claude-opus-4-1-20250805", 32_000),
        ("anthropic:claude-opus-4-0", 32_000),
        ("anthropic:claude-3-7-sonnet-20250219", 64_000),
        ("anthropic:claude-3-5-haiku-20241022", 8_192),
        ("anthropic:claude-3-haiku-20240307", 4_096),
        ("openrouter:anthropic/claude-opus-4.7", None),
    ],
)
def test_the_most_output_each_model_may_be_asked_for(entry: str, most: int | None) -> None:
    assert limits.max_output(route(entry)) == most


def test_max_tokens_above_the_maximum_is_clamped_and_named() -> None:
    body, notes = limits.fit(route("gemini:gemini-2.5-pro"), {"model": "x", "max_tokens": 128000})
    assert body["max_tokens"] == 65_536
    assert notes == ["max_tokens 128000 → 65536 (gemini-2.5-pro's maximum output)"]
    body, notes = limits.fit(route("gemini:gemini-2.5-pro"), {"model": "x", "max_tokens": 1024})
    assert body["max_tokens"] == 1024 and notes == []


def test_fit_leaves_the_body_it_was_given_alone() -> None:
    given = {"model": "x", "max_tokens": 128000, "messages": [{"role": "user", "content": "hi"}]}
    limits.fit(route("deepseek:deepseek-chat"), given)
    assert given == {
        "model": "x",
        "max_tokens": 128000,
        "messages": [{"role": "user", "content": "hi"}],
    }


def test_openai_reasoning_models_get_no_stop_or_sampling() -> None:
    body = {"model": "gpt-5.5", "stop": ["END"], "temperature": 0.2, "top_p": 0.9}
    fitted, notes = limits.fit(route("openai:gpt-5.5"), body)
    assert fitted == {"model": "gpt-5.5"}
    assert notes == [
        "parameter stop (gpt-5.5 refuses it)",
        "parameter temperature (gpt-5.5 refuses it)",
        "parameter top_p (gpt-5.5 refuses it)",
    ]
    fitted, notes = limits.fit(route("openai:gpt-4o"), {**body, "stop": list("abcdef")})
    assert fitted["stop"] == list("abcd") and fitted["temperature"] == 0.2
    assert notes == ["stop sequences after the first 4"]


@pytest.mark.parametrize(
    ("model", "kept"),
    [
        ("claude-opus-4-7", set()),  # "temperature is deprecated for this model"
        ("claude-sonnet-5", set()),
        ("claude-sonnet-4-6", {"temperature"}),  # not both with top_p
        ("claude-3-7-sonnet-20250219", {"temperature", "top_p"}),
    ],
)
def test_claude_gets_only_the_sampling_parameters_it_takes(model: str, kept: set[str]) -> None:
    body = {"model": model, "max_tokens": 10, "temperature": 0.2, "top_p": 0.9}
    fitted, notes = limits.fit(route(f"anthropic:{model}"), body)
    assert {k for k in ("temperature", "top_p") if k in fitted} == kept
    assert len(notes) == 2 - len(kept)


def test_deepseek_asks_for_non_thinking_mode_and_carries_no_reasoning_content() -> None:
    body = {
        "model": "deepseek-v4-pro",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello", "reasoning_content": "greet back"},
        ],
    }
    fitted, notes = limits.fit(route("deepseek:deepseek-v4-pro"), body)
    assert fitted["thinking"] == {"type": "disabled"}
    assert fitted["messages"][1] == {"role": "assistant", "content": "hello"}
    assert notes[0] == "reasoning_content in the history"
    assert notes[1].startswith("thinking mode turned off")
    fitted, _ = limits.fit(route("deepseek:deepseek-reasoner"), body)
    assert "thinking" not in fitted  # its name is its thinking mode


def test_gemini_gets_its_schema_subset_in_every_tool() -> None:
    parameters = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            # property names that are also keywords stay: they are names here
            "pattern": {"type": "string", "description": "a glob"},
            "additionalProperties": {"type": ["integer", "null"], "exclusiveMinimum": 0},
            "mode": {"const": "fast"},
            "target": {"oneOf": [{"type": "string", "format": "uri"}, {"type": "number"}]},
            "tags": {
                "type": "array",
                "items": {"type": "object", "propertyNames": {"pattern": "^[a-z]+$"}},
                "uniqueItems": True,
            },
            "level": {"type": "integer", "enum": [1, 2, 3]},
            "when": {"type": "string", "format": "date-time"},
        },
        "required": ["pattern"],
    }
    body = {"tools": [{"type": "function", "function": {"name": "f", "parameters": parameters}}]}
    fitted, notes = limits.fit(route("gemini:gemini-2.5-flash"), body)
    assert fitted["tools"][0]["function"]["parameters"] == {
        "type": "object",
        "properties": {
            "pattern": {"type": "string", "description": "a glob"},
            "additionalProperties": {"type": "integer", "nullable": True},
            "mode": {"enum": ["fast"]},
            "target": {"anyOf": [{"type": "string"}, {"type": "number"}]},
            "tags": {"type": "array", "items": {"type": "object"}},
            "level": {"type": "integer"},
            "when": {"type": "string", "format": "date-time"},
        },
        "required": ["pattern"],
    }
    assert notes == [
        "tool schema keys Gemini rejects: $schema, additionalProperties, enum (not all strings), "
        "exclusiveMinimum, format uri, propertyNames, uniqueItems"
    ]


def test_a_schema_gemini_already_takes_is_unchanged() -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
        "required": ["city"],
    }
    assert gemini_schema.clean(schema) == (schema, [])


# -- the OpenAI → Anthropic translation the proxy sends as raw JSON ------------------------------


def test_sampling_crosses_to_anthropic_only_when_asked_for() -> None:
    params = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.1, "top_p": 0.5}
    sdk = openai_to_anthropic_request(params, model="claude-sonnet-4-6")
    assert "temperature" not in sdk.body
    assert sdk.dropped == ["parameter temperature", "parameter top_p"]
    raw = openai_to_anthropic_request(params, model="claude-sonnet-4-6", sampling=True)
    assert (raw.body["temperature"], raw.body["top_p"]) == (0.1, 0.5) and raw.dropped == []


def test_a_tool_schema_without_a_type_becomes_an_object_schema() -> None:
    params = {
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [
            {
                "type": "function",
                "function": {"name": "f", "parameters": {"properties": {"x": {"type": "string"}}}},
            }
        ],
    }
    done = openai_to_anthropic_request(params, model="claude-sonnet-4-6")
    assert done.body["tools"][0]["input_schema"] == {
        "type": "object",
        "properties": {"x": {"type": "string"}},
    }
