"""A request served by a route of the other wire format (cross-provider fallback).

Anthropic front, OpenAI-format route: the client's Messages request is translated with the
library's own translation (system, text, images, tools, tool calls and results, stop
sequences, `tool_choice`), fitted to what the route accepts (`providers.limits`: max_tokens
clamped to the model's maximum, Gemini's schema subset, DeepSeek's thinking mode, parameters
OpenAI's reasoning models refuse), sent to the route's Chat Completions endpoint WITHOUT
streaming and with the route's own key from the proxy's environment (only the request's body
crosses: no client header does), and the answer is translated back into an Anthropic message
(stop reason, usage with cached tokens). The client receives Anthropic output either way: the
message as JSON, or for a streamed request the SSE events the Messages API would have sent
for it (`message_start` … `message_stop`). The other direction (OpenAI front, Anthropic
route) is `translated_openai`.

What has no meaning on the other side is not sent and is named in the step's
`translation_dropped` event: thinking blocks (and their signatures), the `thinking`
configuration, `context_management`, `output_config`, `metadata`, server tools, `cache_control`,
tools' `defer_loading` / `strict`, the `anthropic-beta` header, any field the proxy does not
know — and every change `limits.fit` made. A `reasoning_content` in the answer (DeepSeek's,
Moonshot's chain of thought) is not handed over: an Anthropic thinking block needs a signature
only Anthropic can make, and Claude rejects one without; it is named too.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx2

from agentguard.classify import UpstreamError
from agentguard.providers import limits, synthesize, translate
from agentguard.proxy.http_client import HttpClient
from agentguard.proxy.upstream import Incoming
from agentguard.routes import Route
from agentguard.step_types import Served
from agentguard.store import dumps

# Top-level fields of a Messages request the translation carries over (or that need no note).
_CARRIED = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "stop_sequences",
        "tools",
        "tool_choice",
        "temperature",
        "top_p",
        "stream",
    }
)
# Tool fields that only an Anthropic API understands (the function keeps name, description,
# parameters).
_TOOL_ONLY = ("defer_loading", "strict", "cache_control", "input_examples", "allowed_callers")


class CrossedError(UpstreamError):
    """A failure of an OpenAI-format route serving an Anthropic request: classified on the
    provider's own body; the client gets it in Anthropic's shape (`anthropic_error`)."""


class Translated:
    """What the client gets from a translated step: an Anthropic message (JSON)."""

    request_id_header = "request-id"  # where the client's SDK looks for it

    def __init__(self, message: dict[str, Any], request_id: str | None) -> None:
        self.message = message
        self.request_id = request_id

    def json_body(self) -> bytes:
        return json.dumps(self.message, ensure_ascii=False, separators=(",", ":")).encode()

    def sse_body(self) -> bytes:
        """The message as the Messages API's event stream."""
        frames = []
        for event in synthesize.anthropic_events(self.message):
            data = json.dumps(
                event.model_dump(mode="json", exclude_unset=True),
                ensure_ascii=False,
                separators=(",", ":"),
            )
            frames.append(f"event: {event.type}\ndata: {data}\n\n")
        return "".join(frames).encode()


def crosses(route: Route, incoming: Incoming) -> bool:
    """Does this attempt go to a route of the other wire format?"""
    return incoming.kind != route.kind


def openai_request(route: Route, incoming: Incoming) -> tuple[dict[str, Any], list[str]]:
    """The Chat Completions body for `route`, and the names of what could not cross."""
    params = json.loads(incoming.body)
    done = translate.anthropic_to_openai_request(  # a tool_choice goes only with tools
        {k: v for k, v in params.items() if k in _CARRIED or k == "thinking"},
        model=route.model,
        max_tokens_field=translate.max_tokens_field(route.provider),
    )
    body, fitted = limits.fit(route, done.body)
    dropped = list(done.dropped)
    dropped += [f"parameter {name}" for name in params if name not in _CARRIED | {"thinking"}]
    for tool in params.get("tools") or []:
        if isinstance(tool, dict):
            dropped += [f"tool {name}" for name in _TOOL_ONLY if name in tool]
    if _has_key(params, "cache_control"):
        dropped.append("cache_control")
    if _has_key(params.get("messages"), "signature"):
        dropped.append("thinking signature")
    if any(name.lower() == "anthropic-beta" for name, _ in incoming.headers):
        dropped.append("header anthropic-beta")
    return body, list(dict.fromkeys([*dropped, *fitted]))


def _has_key(value: Any, key: str) -> bool:
    if isinstance(value, dict):
        return key in value or any(_has_key(v, key) for v in value.values())
    if isinstance(value, list):
        return any(_has_key(v, key) for v in value)
    return False


def url_of(route: Route) -> str:
    """The route's Chat Completions endpoint (OpenAI-format base URLs end in /v1 or the like)."""
    return f"{(route.base_url or '').rstrip('/')}/chat/completions"


async def attempt(client: HttpClient, route: Route, incoming: Incoming) -> Served:
    """One attempt on a route of the other wire format: a Served whose value is a `Translated`
    answer in the client's format, or the provider's failure raised (its own error, for the
    classifier)."""
    if incoming.kind == "openai":
        from agentguard.proxy import translated_openai

        return await translated_openai.attempt(client, route, incoming)
    body, dropped = openai_request(route, incoming)
    key = os.environ.get(route.api_key_env or "", "")
    headers = {
        "content-type": "application/json",
        "accept": "application/json",
        "authorization": f"Bearer {key}",
    }
    response = await client.post(
        url_of(route),
        content=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(),
        headers=headers,
    )
    if response.status_code >= 400:
        raise CrossedError(response.status_code, response.headers, response.content)
    try:
        completion = json.loads(response.content)
        if not isinstance(completion, dict) or not completion.get("choices"):
            raise ValueError("no choices")
    except (UnicodeDecodeError, ValueError) as exc:
        raise httpx2.RemoteProtocolError(
            f"{route.key} answered 200 without a chat completion ({exc})"
        ) from None
    served_model = completion.get("model") if isinstance(completion.get("model"), str) else None
    message = translate.openai_to_anthropic_response(completion, model=served_model or route.model)
    if _reasoning_of(completion):
        dropped.append("reasoning_content in the answer")
    usage = message["usage"]
    request_id = response.headers.get("x-request-id") or response.headers.get("request-id")
    return Served(
        value=Translated(message, request_id),
        request_id=request_id,
        model=message["model"],
        input_tokens=usage.get("input_tokens"),
        output_tokens=usage.get("output_tokens"),
        stop_reason=message.get("stop_reason"),
        response_json=dumps(message),
        notes=dropped,
    )


def _reasoning_of(completion: dict[str, Any]) -> str:
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") if isinstance(choice, dict) else None
    reasoning = message.get("reasoning_content") if isinstance(message, dict) else None
    return reasoning if isinstance(reasoning, str) else ""


def anthropic_error(body: bytes) -> bytes | None:
    """An OpenAI-shaped error body in Anthropic's shape (None when it is not one), so an
    Anthropic client reads the other provider's failure as it reads its own."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("type") == "error":
        return None
    error = data.get("error")
    if not isinstance(error, dict):
        return None
    out = {
        "type": "error",
        "error": {"type": str(error.get("type") or "api_error"), "message": error.get("message")},
    }
    return json.dumps(out, ensure_ascii=False).encode()
