"""A request of the OpenAI front served by an Anthropic route (cross-provider fallback).

An OpenAI-speaking agent whose chain goes on to `anthropic:…` gets that route when its own
provider is down. The Chat Completions request is translated with the library's own
translation — system and developer messages, text, images (data URLs and URLs), tools and
`tool_choice` (`parallel_tool_calls: false` included), tool calls and `tool` results, `stop`,
`max_completion_tokens` / `max_tokens` (the model's maximum output when the request has
neither: Chat Completions needs none, the Messages API does), temperature and top_p — and
fitted to the model (`providers.limits`: output clamped, sampling parameters the model refuses
left out). It goes to the route's Messages endpoint with the route's key from the proxy's
environment ($ANTHROPIC_API_KEY; no client header crosses), streamed, so a long answer keeps
the connection busy instead of idle; the attempt reads it to its end, and a stream that fails
on the way is this attempt's failure, retried like any other. The client gets a Chat
Completion: as JSON, or for a streamed request as the chunks the API would have sent
(`data: {chunk}` … `data: [DONE]`, the usage chunk when `stream_options.include_usage` asks
for it). Finish reasons map back (`tool_use` → `tool_calls`, `end_turn` → `stop`,
`max_tokens` → `length`, `refusal` → `content_filter`); usage counts cache reads in
`prompt_tokens` as OpenAI does.

What has no meaning there is not sent and is named in the step's `translation_dropped` event:
`n`, `logprobs`, `response_format`, `seed`, `reasoning_effort`, penalties, any field the proxy
does not know; thinking blocks in the answer are not handed over (Chat Completions has no
place for them). A failure of the route reaches the client in OpenAI's error shape.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx2

from agentguard.providers import limits, synthesize, translate
from agentguard.proxy import sse
from agentguard.proxy.http_client import HttpClient, Response
from agentguard.proxy.options import ANTHROPIC_URL
from agentguard.proxy.stream import close_quietly
from agentguard.proxy.translated import CrossedError, Translated
from agentguard.proxy.upstream import Incoming
from agentguard.routes import Route
from agentguard.step_types import Served
from agentguard.store import dumps

ANTHROPIC_VERSION = "2023-06-01"
# Top-level fields of a Chat Completions request the translation carries over (or needs no note).
_CARRIED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "temperature",
        "top_p",
        "stream",
        "stream_options",
    }
)
_ANSWERED = ("text", "tool_use")  # the content blocks a Chat Completion can carry


class TranslatedCompletion(Translated):
    """What an OpenAI client gets from a translated step: a Chat Completion."""

    request_id_header = "x-request-id"

    def __init__(
        self, completion: dict[str, Any], request_id: str | None, *, include_usage: bool
    ) -> None:
        super().__init__(completion, request_id)
        self.include_usage = include_usage

    def sse_body(self) -> bytes:
        """The completion as Chat Completions' stream: chunks, then `data: [DONE]`."""
        data = self.message
        if not self.include_usage:  # a usage chunk (empty `choices`) only when asked for
            data = {k: v for k, v in data.items() if k != "usage"}
        frames = []
        for chunk in synthesize.openai_chunks(data):
            payload = json.dumps(
                chunk.model_dump(mode="json", exclude_unset=True),
                ensure_ascii=False,
                separators=(",", ":"),
            )
            frames.append(f"data: {payload}\n\n")
        frames.append("data: [DONE]\n\n")
        return "".join(frames).encode()


def anthropic_request(route: Route, incoming: Incoming) -> tuple[dict[str, Any], list[str]]:
    """The Messages body for `route` (streamed), and the names of what could not cross."""
    params = json.loads(incoming.body)
    done = translate.openai_to_anthropic_request(params, model=route.model, sampling=True)
    body = done.body
    if not (params.get("max_completion_tokens") or params.get("max_tokens")):
        body["max_tokens"] = limits.max_output(route) or body["max_tokens"]
    body, fitted = limits.fit(route, body)
    body["stream"] = True
    dropped = list(done.dropped)
    dropped += [
        f"parameter {name}"
        for name, value in params.items()
        if name not in _CARRIED and name not in translate.OPENAI_ONLY and value not in (None, False)
    ]
    return body, list(dict.fromkeys([*dropped, *fitted]))


def url_of(route: Route) -> str:
    """The route's Messages endpoint (Anthropic base URLs come without /v1)."""
    return f"{(route.base_url or ANTHROPIC_URL).rstrip('/')}/v1/messages"


async def attempt(client: HttpClient, route: Route, incoming: Incoming) -> Served:
    """One attempt on an Anthropic route for an OpenAI request: a Served whose value is a
    `TranslatedCompletion`, or the provider's failure raised (in OpenAI's shape, for the
    classifier and the client)."""
    body, dropped = anthropic_request(route, incoming)
    options = json.loads(incoming.body).get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    headers = {
        "content-type": "application/json",
        "accept": "text/event-stream",
        "anthropic-version": ANTHROPIC_VERSION,
        "x-api-key": os.environ.get(route.api_key_env or "", ""),
    }
    request = client.build_request(
        "POST",
        url_of(route),
        headers=headers,
        content=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(),
    )
    response = await client.send(request, stream=True)
    try:
        if response.status_code >= 400:
            failure = await response.aread()
            raise CrossedError(
                response.status_code, response.headers, openai_error(failure) or failure
            )
        message = await _message(route, response)
    finally:
        await close_quietly(response)
    completion = translate.anthropic_to_openai_response(
        message, model=message.get("model") or route.model
    )
    dropped += [
        f"{block.get('type')} block in the answer"
        for block in message.get("content") or []
        if isinstance(block, dict) and block.get("type") not in _ANSWERED
    ]
    usage = completion["usage"]
    request_id = response.headers.get("request-id") or response.headers.get("x-request-id")
    return Served(
        value=TranslatedCompletion(completion, request_id, include_usage=include_usage),
        request_id=request_id,
        model=completion["model"],
        input_tokens=usage.get("prompt_tokens"),
        output_tokens=usage.get("completion_tokens"),
        stop_reason=completion["choices"][0]["finish_reason"],
        response_json=dumps(completion),
        notes=list(dict.fromkeys(dropped)),
    )


async def _message(route: Route, response: Response) -> dict[str, Any]:
    """The Anthropic message the answer carries: a stream read to its `message_stop` (an
    `error` event on the way is this attempt's failure), or a JSON body from a server that
    did not stream."""
    if "text/event-stream" not in response.headers.get("content-type", ""):
        try:
            data = json.loads(await response.aread())
        except (UnicodeDecodeError, ValueError):
            data = None
        if not isinstance(data, dict) or data.get("type") != "message":
            raise httpx2.RemoteProtocolError(f"{route.key} answered 200 without a message")
        return data
    assembler = sse.AnthropicAssembler()
    async for event in sse.events(response.aiter_bytes()):
        if sse.is_error("anthropic", event):
            raw = event.data.encode()
            raise CrossedError(None, response.headers, openai_error(raw) or raw)
        assembler.feed(event)
    final = assembler.final()
    if final.message is None or not final.complete:
        raise httpx2.RemoteProtocolError(f"{route.key}'s stream ended before message_stop")
    return final.message


def openai_error(body: bytes) -> bytes | None:
    """An Anthropic error body in OpenAI's shape (None when it is not one), so an OpenAI client
    reads the other provider's failure as it reads its own."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or data.get("type") != "error":
        return None
    out = {
        "error": {
            "message": error.get("message"),
            "type": str(error.get("type") or "api_error"),
            "param": None,
            "code": None,
        }
    }
    return json.dumps(out, ensure_ascii=False).encode()
