"""Send one attempt of a step on any route, and hand back what the caller's SDK would have.

A route of the caller's own kind is called natively (same face: message, event stream,
MessageStream, completion, chunk stream). A route of the other kind gets the request
translated, is called without streaming, and its answer is translated back and dressed as the
face the caller asked for — an `anthropic.types.Message` from a wrapped Anthropic client even
when an OpenAI-compatible model served it.
"""

from __future__ import annotations

import os
from enum import StrEnum
from typing import Any

import httpx2
from anthropic import Anthropic, AsyncAnthropic, not_given
from anthropic.lib.streaming import AsyncMessageStream, MessageStream
from openai import AsyncOpenAI, OpenAI

from agentguard.errors import ConfigError
from agentguard.providers import limits, synthesize, translate
from agentguard.providers.anthropic import AnthropicProvider, AsyncReplayStream, ReplayStream
from agentguard.providers.openai import AsyncOpenAIReplayStream, OpenAIProvider, OpenAIReplayStream
from agentguard.routes import Route
from agentguard.step_types import Served
from agentguard.store import dumps


class Face(StrEnum):
    """The shape of what the caller asked for."""

    MESSAGE = "message"  # anthropic messages.create
    EVENTS = "events"  # anthropic messages.create(stream=True)
    MESSAGE_STREAM = "message_stream"  # anthropic messages.stream()
    COMPLETION = "completion"  # openai chat.completions.create
    CHUNKS = "chunks"  # openai chat.completions.create(stream=True)

    @property
    def kind(self) -> str:
        return "openai" if self in (Face.COMPLETION, Face.CHUNKS) else "anthropic"


# Parameters that only make sense to the provider they were written for.
_OPENAI_EXTRA_BODY = frozenset({"thinking"})
_NATIVE_ONLY = ("extra_headers", "extra_query", "extra_body", "metadata", "stream_options")


class Dispatcher:
    """SDK clients per route: the caller's own client for its routes, new ones for fallbacks."""

    def __init__(self, client: Any) -> None:
        self.is_async = isinstance(client, AsyncAnthropic | AsyncOpenAI)
        self.kind = "anthropic" if isinstance(client, Anthropic | AsyncAnthropic) else "openai"
        own: Any = AnthropicProvider(client) if self.kind == "anthropic" else OpenAIProvider(client)
        self.own = own
        self._timeout = client.timeout
        self._providers: dict[tuple[str, str | None, str | None], Any] = {}

    @property
    def base_url(self) -> str:
        return self.own.base_url

    def owns(self, route: Route) -> bool:
        """Whether the route is served by the client the caller wrapped."""
        return route.kind == self.kind and route.base_url == self.base_url

    def provider_for(self, route: Route) -> Any:
        if self.owns(route):
            return self.own
        key = (route.kind, route.base_url, route.api_key_env)
        if key not in self._providers:
            self._providers[key] = self._build(route)
        return self._providers[key]

    def _build(self, route: Route) -> Any:
        api_key = os.environ.get(route.api_key_env or "")
        if not api_key:
            raise ConfigError(
                f"Route {route.key} needs its API key in ${route.api_key_env}, which is not set; "
                "set it or remove the route from the chain."
            )
        options: dict[str, Any] = {"api_key": api_key, "max_retries": 0, "timeout": self._timeout}
        if route.base_url:
            options["base_url"] = route.base_url
        if route.kind == "anthropic":
            client: Any = (AsyncAnthropic if self.is_async else Anthropic)(**options)
            return AnthropicProvider(client)
        client = (AsyncOpenAI if self.is_async else OpenAI)(**options)
        return OpenAIProvider(client)

    # -- sending -------------------------------------------------------------------------------

    def send(self, route: Route, face: Face, params: dict[str, Any], output_format: Any) -> Served:
        provider = self.provider_for(route)
        if route.kind == face.kind:
            native = {**params, "model": route.model}
            if face is Face.MESSAGE_STREAM:
                return provider.message_stream(native, output_format)
            if face in (Face.EVENTS, Face.CHUNKS):
                return provider.create_stream(native)
            return provider.create({k: v for k, v in native.items() if k != "stream"})
        body, dropped = self._translate(route, face, params)
        return self._dress(face, provider.create(body), dropped, output_format)

    async def asend(
        self, route: Route, face: Face, params: dict[str, Any], output_format: Any
    ) -> Served:
        provider = self.provider_for(route)
        if route.kind == face.kind:
            native = {**params, "model": route.model}
            if face is Face.MESSAGE_STREAM:
                return await provider.amessage_stream(native, output_format)
            if face in (Face.EVENTS, Face.CHUNKS):
                return await provider.acreate_stream(native)
            return await provider.acreate({k: v for k, v in native.items() if k != "stream"})
        body, dropped = self._translate(route, face, params)
        return self._dress(face, await provider.acreate(body), dropped, output_format)

    def _translate(
        self, route: Route, face: Face, params: dict[str, Any]
    ) -> tuple[dict[str, Any], list[str]]:
        portable = {k: v for k, v in params.items() if k not in (*_NATIVE_ONLY, "stream")}
        if face.kind == "anthropic":
            done = translate.anthropic_to_openai_request(
                portable,
                model=route.model,
                max_tokens_field=translate.max_tokens_field(route.provider),
            )
        else:
            done = translate.openai_to_anthropic_request(portable, model=route.model)
        body, fitted = limits.fit(route, done.body)  # never a request the route will reject
        if route.kind == "openai":
            # fields the openai SDK has no keyword for (DeepSeek's `thinking`) go as extra_body
            extra = {k: body.pop(k) for k in [k for k in body if k in _OPENAI_EXTRA_BODY]}
            if extra:
                body["extra_body"] = extra
        if "timeout" in params:
            body["timeout"] = params["timeout"]
        return body, [*done.dropped, *fitted]

    def _dress(self, face: Face, served: Served, dropped: list[str], output_format: Any) -> Served:
        """Turn another provider's answer into the caller's own SDK type."""
        assert served.native is not None
        if face.kind == "anthropic":
            data = translate.openai_to_anthropic_response(served.native, model=served.model)
            value = self._anthropic_face(face, data, served.request_id, output_format)
        else:
            data = translate.anthropic_to_openai_response(served.native, model=served.model)
            value = self._openai_face(face, data, served.request_id)
        return Served(
            value=value,
            request_id=served.request_id,
            model=served.model,
            input_tokens=served.input_tokens,
            output_tokens=served.output_tokens,
            stop_reason=served.stop_reason,
            response_json=dumps(data),
            native=data,
            notes=[*served.notes, *dropped],
        )

    def _anthropic_face(
        self, face: Face, data: dict[str, Any], request_id: str | None, output_format: Any
    ) -> Any:
        if face is Face.MESSAGE:
            return synthesize.anthropic_message(data)
        events = synthesize.anthropic_events(data)
        response = _response(request_id, "request-id")
        client = self.own.client
        if self.is_async:
            replay: Any = AsyncReplayStream(events, response, client)
            if face is Face.EVENTS:
                return replay
            return AsyncMessageStream(replay, output_format=output_format or not_given)
        replay = ReplayStream(events, response, client)
        if face is Face.EVENTS:
            return replay
        return MessageStream(replay, output_format=output_format or not_given)

    def _openai_face(self, face: Face, data: dict[str, Any], request_id: str | None) -> Any:
        if face is Face.COMPLETION:
            return synthesize.openai_completion(data)
        chunks = [c for c in synthesize.openai_chunks(data) if c.choices]
        replay = AsyncOpenAIReplayStream if self.is_async else OpenAIReplayStream
        return replay(chunks, _response(request_id, "x-request-id"), self.own.client)


def _response(request_id: str | None, header: str) -> httpx2.Response:
    """A stand-in HTTP response for a stream dressed from a non-streaming answer."""
    headers = {header: request_id} if request_id else {}
    return httpx2.Response(
        200, headers=headers, request=httpx2.Request("POST", "http://agentguard")
    )
