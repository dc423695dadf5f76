"""The Anthropic seam: one HTTP attempt through the real SDK, with its own retries off.

Streams are buffered: an attempt reads its stream to `message_stop` before the caller sees an
event, so a 529 that arrives mid-stream is retried without the caller ever receiving half an
answer followed by a second whole one. The caller then gets a real `anthropic.Stream` (or
`MessageStream`) that replays the events of the attempt that succeeded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
from anthropic import AsyncAnthropic, AsyncStream, Stream, not_given
from anthropic.lib.streaming import AsyncMessageStream, MessageStream
from anthropic.types import Message, RawMessageStreamEvent

from agentguard.step_types import Served


class ReplayStream(Stream[RawMessageStreamEvent]):
    """A real `anthropic.Stream` over the events one successful attempt received."""

    def __init__(self, events: list[RawMessageStreamEvent], response: httpx2.Response, client: Any):
        super().__init__(cast_to=RawMessageStreamEvent, response=response, client=client)
        self._events = events

    def __stream__(self) -> Iterator[RawMessageStreamEvent]:
        yield from self._events


class AsyncReplayStream(AsyncStream[RawMessageStreamEvent]):
    """The async twin of ReplayStream."""

    def __init__(self, events: list[RawMessageStreamEvent], response: httpx2.Response, client: Any):
        super().__init__(cast_to=RawMessageStreamEvent, response=response, client=client)
        self._events = events

    async def __stream__(self) -> AsyncIterator[RawMessageStreamEvent]:
        for event in self._events:
            yield event


def served_message(message: Message, value: Any, request_id: str | None) -> Served:
    usage = message.usage
    return Served(
        value=value,
        request_id=request_id,
        model=message.model,
        input_tokens=getattr(usage, "input_tokens", None),
        output_tokens=getattr(usage, "output_tokens", None),
        stop_reason=message.stop_reason,
        response_json=message.to_json(indent=None),
        native=message.model_dump(mode="json", exclude_none=True),
    )


def _final_message(events: list[RawMessageStreamEvent], response: httpx2.Response, client: Any):
    stream = MessageStream(ReplayStream(events, response, client), output_format=not_given)
    return stream.get_final_message()


class AnthropicProvider:
    """Sends one attempt with a client whose own retry loop is switched off."""

    name = "anthropic"

    def __init__(self, client: Any) -> None:
        self.client = client.with_options(max_retries=0)
        self.is_async = isinstance(client, AsyncAnthropic)

    @property
    def base_url(self) -> str:
        return str(self.client.base_url)

    # -- sync --------------------------------------------------------------------------------

    def create(self, params: dict[str, Any]) -> Served:
        message = self.client.messages.create(**params)
        return served_message(message, message, message._request_id)

    def create_stream(self, params: dict[str, Any]) -> Served:
        raw = self.client.messages.create(**{**params, "stream": True})
        events = list(raw)
        return self._served_stream(
            events, raw.response, ReplayStream(events, raw.response, self.client)
        )

    def message_stream(self, params: dict[str, Any], output_format: Any) -> Served:
        stream_params = dict(params)
        if output_format is not None:
            stream_params["output_format"] = output_format
        with self.client.messages.stream(**stream_params) as live:
            raw = live._raw_stream  # the SDK's raw event stream under its helper
            events = list(raw)
        replay = ReplayStream(events, raw.response, self.client)
        value = MessageStream(replay, output_format=output_format or not_given)
        return self._served_stream(events, raw.response, value)

    def _served_stream(self, events: list[Any], response: httpx2.Response, value: Any) -> Served:
        final = _final_message(events, response, self.client)
        return served_message(final, value, response.headers.get("request-id"))

    # -- async -------------------------------------------------------------------------------

    async def acreate(self, params: dict[str, Any]) -> Served:
        message = await self.client.messages.create(**params)
        return served_message(message, message, message._request_id)

    async def acreate_stream(self, params: dict[str, Any]) -> Served:
        raw = await self.client.messages.create(**{**params, "stream": True})
        events = [event async for event in raw]
        value = AsyncReplayStream(events, raw.response, self.client)
        return self._served_stream(events, raw.response, value)

    async def amessage_stream(self, params: dict[str, Any], output_format: Any) -> Served:
        stream_params = dict(params)
        if output_format is not None:
            stream_params["output_format"] = output_format
        async with self.client.messages.stream(**stream_params) as live:
            raw = live._raw_stream
            events = [event async for event in raw]
        replay = AsyncReplayStream(events, raw.response, self.client)
        value = AsyncMessageStream(replay, output_format=output_format or not_given)
        return self._served_stream(events, raw.response, value)
