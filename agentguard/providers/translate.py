"""Anthropic Messages ⇄ OpenAI Chat Completions, as plain JSON values.

A tool loop must keep going when one step is served by the other kind of provider and come
back on the next, so every part that carries meaning crosses over: system prompt, text, images,
tool definitions (`input_schema` ⇄ `parameters`), tool calls (`tool_use` ⇄ `tool_calls`), tool
results (`tool_result` ⇄ role `tool`), stop reasons and usage. What cannot cross (thinking
blocks, server tools, documents) is dropped and reported in `Translation.dropped`, so the caller
can record it as an event instead of losing it silently.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from agentguard.conversation import to_jsonable

STOP_TO_OPENAI = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
    "model_context_window_exceeded": "length",
}
STOP_TO_ANTHROPIC = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
# Sampling parameters Chat Completions takes, and an Anthropic request may still carry (a raw
# HTTP client, an older agent). The Messages API of today's SDK (anthropic 2.16) has none of
# them — `messages.create(temperature=…)` raises TypeError — so towards Anthropic they cross
# only for a caller that sends raw JSON (the proxy: `openai_to_anthropic_request(sampling=True)`,
# and `limits.fit` removes them for the models that refuse them).
_SHARED = ("temperature", "top_p")
# Parameters with a meaning the other side cannot honour: reported when dropped.
_ANTHROPIC_ONLY = ("top_k", "output_format", "output_config", "container", "mcp_servers")
OPENAI_ONLY = (
    *_SHARED,
    "response_format",
    "n",
    "logprobs",
    "top_logprobs",
    "seed",
    "reasoning_effort",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "audio",
    "modalities",
    "prediction",
    "web_search_options",
)
# How a failed tool result travels in an OpenAI `tool` message (which has no error flag).
TOOL_ERROR_PREFIX = "[tool error] "


@dataclass
class Translation:
    body: dict[str, Any]
    dropped: list[str] = field(
        default_factory=list
    )  # e.g. "thinking block", "server tool web_search"


# -- Anthropic request → OpenAI request -----------------------------------------------------------


def max_tokens_field(provider: str) -> str:
    """OpenAI's own API takes `max_completion_tokens` (its `max_tokens` is deprecated, and
    refused by reasoning models); OpenAI-compatible providers (DeepSeek, gateways) take
    `max_tokens`."""
    return "max_completion_tokens" if provider == "openai" else "max_tokens"


def anthropic_to_openai_request(
    params: dict[str, Any], *, model: str, max_tokens_field: str = "max_completion_tokens"
) -> Translation:
    params = to_jsonable(params)
    dropped: list[str] = []
    messages: list[dict[str, Any]] = []
    system = params.get("system")
    if system:
        messages.append({"role": "system", "content": _text_of(system, dropped)})
    for message in params.get("messages", []):
        if message.get("role") == "system":  # Claude Code puts a system entry inside messages
            messages.append(
                {"role": "system", "content": _text_of(message.get("content"), dropped)}
            )
        elif message.get("role") == "assistant":
            reply = _assistant_to_openai(message.get("content"), dropped)
            if reply is not None:
                messages.append(reply)
        else:
            messages.extend(_user_to_openai(message.get("content"), dropped))
    body: dict[str, Any] = {"model": model, "messages": messages}
    if "max_tokens" in params:
        body[max_tokens_field] = params["max_tokens"]
    for name in _SHARED:
        if name in params:
            body[name] = params[name]
    if params.get("stop_sequences"):
        body["stop"] = params["stop_sequences"]
    tools = [_tool_to_openai(t, dropped) for t in params.get("tools") or []]
    tools = [t for t in tools if t is not None]
    if tools:
        body["tools"] = tools
    choice = params.get("tool_choice")
    if choice and tools:
        body.update(_tool_choice_to_openai(choice))
    if params.get("thinking"):
        dropped.append("thinking configuration")
    dropped.extend(_untranslated(params, _ANTHROPIC_ONLY))
    return Translation(body, dropped)


def _untranslated(params: dict[str, Any], names: tuple[str, ...]) -> list[str]:
    """The parameters set to something that changes the answer and has no translation."""

    def inert(name: str, value: Any) -> bool:
        if value is None or value is False or (isinstance(value, dict | list) and not value):
            return True
        return name == "n" and value == 1

    return [f"parameter {name}" for name in names if not inert(name, params.get(name))]


def _text_of(content: Any, dropped: list[str]) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if block.get("type") == "text":
            parts.append(block.get("text", ""))
        else:
            dropped.append(f"{block.get('type')} block in a system prompt")
    return "\n\n".join(parts)


def _image_to_openai(block: dict[str, Any]) -> dict[str, Any]:
    source = block.get("source", {})
    if source.get("type") == "url":
        url = source["url"]
    else:
        url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    return {"type": "image_url", "image_url": {"url": url}}


def _user_to_openai(content: Any, dropped: list[str]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in content or []:
        kind = block.get("type")
        if kind == "tool_result":
            out.append(_tool_result_to_openai(block, parts, dropped))
        elif kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image":
            parts.append(_image_to_openai(block))
        elif kind == "document" and block.get("source", {}).get("type") == "text":
            parts.append({"type": "text", "text": block["source"].get("data", "")})
        else:
            dropped.append(f"{kind} block")
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        joined = "\n\n".join(p["text"] for p in parts) if only_text else parts
        out.append({"role": "user", "content": joined})
    return out


def _tool_result_to_openai(
    block: dict[str, Any], parts: list[dict[str, Any]], dropped: list[str]
) -> dict[str, Any]:
    """A `tool` message. A `tool` message carries text only, so images a tool returned (a
    screenshot, an image file read) go to the user message that follows the tool messages."""
    content = block.get("content") or ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if part.get("type") == "text":
                texts.append(part.get("text", ""))
            elif part.get("type") == "image":
                texts.append("[image attached below]")
                parts.append(
                    {"type": "text", "text": f"[image from tool call {block.get('tool_use_id')}]"}
                )
                parts.append(_image_to_openai(part))
            else:
                dropped.append(f"{part.get('type')} in a tool result")
        content = "\n".join(texts)
    if block.get("is_error"):
        content = f"{TOOL_ERROR_PREFIX}{content}"
    return {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": content}


def _assistant_to_openai(content: Any, dropped: list[str]) -> dict[str, Any] | None:
    """The assistant message, or None when nothing in it can cross (only thinking, say): an
    assistant message with neither content nor tool calls is rejected by Chat Completions."""
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            calls.append(_tool_call(block))
        elif kind in ("thinking", "redacted_thinking"):
            dropped.append("thinking block")
        else:
            dropped.append(f"{kind} block")
    text = "".join(texts)
    if not text and not calls:
        return None
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _tool_call(block: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic `tool_use` block as an OpenAI `tool_calls` entry."""
    return {
        "id": block.get("id"),
        "type": "function",
        "function": {"name": block.get("name"), "arguments": _arguments(block.get("input"))},
    }


def _tool_to_openai(tool: dict[str, Any], dropped: list[str]) -> dict[str, Any] | None:
    if "input_schema" not in tool:  # a server tool (web search, code execution …)
        dropped.append(f"server tool {tool.get('name') or tool.get('type')}")
        return None
    function: dict[str, Any] = {"name": tool["name"], "parameters": tool["input_schema"]}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice_to_openai(choice: dict[str, Any]) -> dict[str, Any]:
    kind = choice.get("type")
    out: dict[str, Any] = {}
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool":
        out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    if choice.get("disable_parallel_tool_use"):
        out["parallel_tool_calls"] = False
    return out


# -- OpenAI response → Anthropic response ---------------------------------------------------------


def openai_to_anthropic_response(completion: Any, *, model: str | None = None) -> dict[str, Any]:
    """A ChatCompletion (object or dict) as the JSON of an Anthropic Message."""
    data = to_jsonable(completion)
    choice = (data.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    text = message.get("content")
    if text and not isinstance(text, str):  # some gateways answer with a list of parts
        text = _openai_text(text)
    if text:
        content.append({"type": "text", "text": text, "citations": None})
    elif message.get("refusal"):
        content.append({"type": "text", "text": message["refusal"], "citations": None})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}",
                "name": function.get("name"),
                "input": _parse_arguments(function.get("arguments")),
            }
        )
    finish = choice.get("finish_reason")
    stop_reason = STOP_TO_ANTHROPIC.get(finish or "", "end_turn")
    if message.get("refusal") and not text:
        stop_reason = "refusal"
    elif stop_reason == "end_turn" and any(b["type"] == "tool_use" for b in content):
        # some OpenAI-compatible gateways say "stop" while calling tools; an agent loop that
        # checks `stop_reason == "tool_use"` must still run them
        stop_reason = "tool_use"
    return {
        "id": f"msg_{data.get('id') or uuid.uuid4().hex}",
        "type": "message",
        "role": "assistant",
        "model": model or data.get("model"),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": _usage_to_anthropic(data.get("usage") or {}),
    }


def _usage_to_anthropic(usage: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's prompt_tokens include cached tokens; Anthropic counts cache reads apart."""
    prompt = usage.get("prompt_tokens") or 0
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    out: dict[str, Any] = {
        "input_tokens": max(prompt - cached, 0),
        "output_tokens": usage.get("completion_tokens") or 0,
    }
    if cached:
        out["cache_read_input_tokens"] = cached
    return out


_UNPARSED = "_unparsed_arguments"


def _parse_arguments(arguments: Any) -> Any:
    """A tool call's JSON arguments as a `tool_use` input (always an object). Arguments that
    are not valid JSON — models do emit those — are kept, verbatim, under `_unparsed_arguments`
    so the agent's tool can report the error and the string can go back as it came."""
    if not arguments:
        return {}
    try:
        parsed = json.loads(arguments)
    except (TypeError, ValueError):
        return {_UNPARSED: arguments}
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def _arguments(tool_input: Any) -> str:
    """A `tool_use` input as a tool call's arguments (the original string if it never parsed)."""
    if isinstance(tool_input, dict) and set(tool_input) == {_UNPARSED}:
        return str(tool_input[_UNPARSED])
    return json.dumps(tool_input if tool_input is not None else {}, ensure_ascii=False)


# -- OpenAI request → Anthropic request -----------------------------------------------------------


def openai_to_anthropic_request(
    params: dict[str, Any], *, model: str, sampling: bool = False
) -> Translation:
    """A Chat Completions request as a Messages request. `sampling`: carry temperature and
    top_p (for a raw HTTP call; the anthropic SDK has no parameter for them)."""
    params = to_jsonable(params)
    dropped: list[str] = []
    system: list[str] = []
    messages: list[dict[str, Any]] = []

    def append(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:  # the Messages API rejects a message with empty content
            return
        if messages and messages[-1]["role"] == role:  # Anthropic wants alternating roles
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})

    for message in params.get("messages", []):
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.append(content if isinstance(content, str) else _openai_text(content))
        elif role == "tool":
            text = content if isinstance(content, str) else _openai_text(content)
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": message.get("tool_call_id"),
                "content": text,
            }
            if text.startswith(TOOL_ERROR_PREFIX):  # how an Anthropic is_error crossed over
                result.update(content=text[len(TOOL_ERROR_PREFIX) :], is_error=True)
            append("user", [result])
        elif role == "assistant":
            blocks: list[dict[str, Any]] = []
            text = content if isinstance(content, str) else _openai_text(content)
            if text:
                blocks.append({"type": "text", "text": text})
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.get("id"),
                        "name": function.get("name"),
                        "input": _parse_arguments(function.get("arguments")),
                    }
                )
            append("assistant", blocks)
        else:
            append("user", _openai_user_blocks(content, dropped))
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": params.get("max_completion_tokens") or params.get("max_tokens") or 4096,
    }
    if system:
        body["system"] = "\n\n".join(system)
    stop = params.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    tools = []
    for tool in params.get("tools") or []:
        function = tool.get("function")
        if tool.get("type") != "function" or not function:
            dropped.append(f"{tool.get('type')} tool")
            continue
        schema = function.get("parameters") or {"type": "object", "properties": {}}
        # the Messages API requires input_schema.type ("object"); Chat Completions does not
        converted = {"name": function["name"], "input_schema": {"type": "object", **schema}}
        if function.get("description"):
            converted["description"] = function["description"]
        tools.append(converted)
    if tools:
        body["tools"] = tools
        choice = _tool_choice_to_anthropic(params.get("tool_choice"), params)
        if choice:
            body["tool_choice"] = choice
    if sampling:
        body.update({name: params[name] for name in _SHARED if params.get(name) is not None})
    carried = _SHARED if sampling else ()
    dropped.extend(_untranslated(params, tuple(n for n in OPENAI_ONLY if n not in carried)))
    return Translation(body, dropped)


def _openai_text(content: Any) -> str:
    if not content:
        return ""
    return "\n\n".join(p.get("text", "") for p in content if p.get("type") == "text")


def _openai_user_blocks(content: Any, dropped: list[str]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content or []:
        if part.get("type") == "text":
            if part.get("text"):  # the Messages API rejects empty text blocks
                blocks.append({"type": "text", "text": part["text"]})
        elif part.get("type") == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            if url.startswith("data:") and ";base64," in url:
                media_type, data = url[5:].split(";base64,", 1)
                source = {"type": "base64", "media_type": media_type, "data": data}
            else:
                source = {"type": "url", "url": url}
            blocks.append({"type": "image", "source": source})
        else:
            dropped.append(f"{part.get('type')} part")
    return blocks


def _tool_choice_to_anthropic(choice: Any, params: dict[str, Any]) -> dict[str, Any] | None:
    out: dict[str, Any] | None = None
    if choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        out = {"type": "none"}
    elif isinstance(choice, dict) and choice.get("function"):
        out = {"type": "tool", "name": choice["function"].get("name")}
    if params.get("parallel_tool_calls") is False:
        out = {**(out or {"type": "auto"}), "disable_parallel_tool_use": True}
    return out


# -- Anthropic response → OpenAI response ---------------------------------------------------------


def anthropic_to_openai_response(message: Any, *, model: str | None = None) -> dict[str, Any]:
    """An Anthropic Message (object or dict) as the JSON of a ChatCompletion."""
    data = to_jsonable(message)
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in data.get("content") or []:
        if block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            calls.append(_tool_call(block))
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        reply["tool_calls"] = calls
    return {
        "id": f"chatcmpl-{data.get('id') or uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model or data.get("model"),
        "choices": [
            {
                "index": 0,
                "message": reply,
                "finish_reason": STOP_TO_OPENAI.get(data.get("stop_reason") or "", "stop"),
                "logprobs": None,
            }
        ],
        "usage": _usage_to_openai(data.get("usage") or {}),
    }


def _usage_to_openai(usage: dict[str, Any]) -> dict[str, Any]:
    """Anthropic's input_tokens exclude the cache; OpenAI's prompt_tokens include it."""
    cached = usage.get("cache_read_input_tokens") or 0
    written = usage.get("cache_creation_input_tokens") or 0
    prompt = (usage.get("input_tokens") or 0) + cached + written
    completion = usage.get("output_tokens") or 0
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out
