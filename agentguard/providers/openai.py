"""The OpenAI Chat Completions seam (OpenAI and every OpenAI-compatible gateway).

Like the Anthropic seam: one HTTP attempt with the SDK's own retries off; a stream is read to
its end inside the attempt and handed over as a real `openai.Stream` replaying its chunks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
from openai import AsyncOpenAI, AsyncStream, Stream
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from agentguard.step_types import Served


class OpenAIReplayStream(Stream[ChatCompletionChunk]):
    """A real `openai.Stream` over the chunks one successful attempt received."""

    def __init__(self, chunks: list[ChatCompletionChunk], response: httpx2.Response, client: Any):
        super().__init__(cast_to=ChatCompletionChunk, response=response, client=client)
        self._chunks = chunks

    def __stream__(self) -> Iterator[ChatCompletionChunk]:
        yield from self._chunks


class AsyncOpenAIReplayStream(AsyncStream[ChatCompletionChunk]):
    def __init__(self, chunks: list[ChatCompletionChunk], response: httpx2.Response, client: Any):
        super().__init__(cast_to=ChatCompletionChunk, response=response, client=client)
        self._chunks = chunks

    async def __stream__(self) -> AsyncIterator[ChatCompletionChunk]:
        for chunk in self._chunks:
            yield chunk


def served_completion(completion: ChatCompletion, value: Any, request_id: str | None) -> Served:
    usage = completion.usage
    choice = completion.choices[0] if completion.choices else None
    return Served(
        value=value,
        request_id=request_id,
        model=completion.model,
        input_tokens=usage.prompt_tokens if usage else None,
        output_tokens=usage.completion_tokens if usage else None,
        stop_reason=choice.finish_reason if choice else None,
        response_json=completion.to_json(indent=None),
        native=completion.model_dump(mode="json"),
    )


def final_completion(chunks: list[ChatCompletionChunk]) -> ChatCompletion:
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(chunk)
    parsed = state.get_final_completion()
    completion = ChatCompletion.model_validate(parsed.model_dump(mode="json", exclude_none=True))
    usage = next((c.usage for c in reversed(chunks) if c.usage is not None), None)
    if usage is not None and completion.usage is None:
        completion = completion.model_copy(update={"usage": usage})
    return completion


class OpenAIProvider:
    """Sends one Chat Completions attempt with a client whose own retries are off."""

    kind = "openai"

    def __init__(self, client: Any) -> None:
        self.client = client.with_options(max_retries=0)
        self.is_async = isinstance(client, AsyncOpenAI)

    @property
    def base_url(self) -> str:
        return str(self.client.base_url)

    def create(self, params: dict[str, Any]) -> Served:
        completion = self.client.chat.completions.create(**params)
        return served_completion(completion, completion, completion._request_id)

    def create_stream(self, params: dict[str, Any]) -> Served:
        raw = self.client.chat.completions.create(**_streaming(params))
        chunks = list(raw)
        return self._served_stream(params, chunks, raw.response, OpenAIReplayStream)

    async def acreate(self, params: dict[str, Any]) -> Served:
        completion = await self.client.chat.completions.create(**params)
        return served_completion(completion, completion, completion._request_id)

    async def acreate_stream(self, params: dict[str, Any]) -> Served:
        raw = await self.client.chat.completions.create(**_streaming(params))
        chunks = [chunk async for chunk in raw]
        return self._served_stream(params, chunks, raw.response, AsyncOpenAIReplayStream)

    def _served_stream(
        self,
        params: dict[str, Any],
        chunks: list[ChatCompletionChunk],
        response: httpx2.Response,
        replay: type,
    ) -> Served:
        final = final_completion(chunks)
        if not (params.get("stream_options") or {}).get("include_usage"):
            # usage was asked for agentguard's own records: hide the extra chunk from the caller
            chunks = [chunk for chunk in chunks if chunk.choices]
        value = replay(chunks, response, self.client)
        return served_completion(final, value, response.headers.get("x-request-id"))


def _streaming(params: dict[str, Any]) -> dict[str, Any]:
    """Ask for usage in the stream: the store records tokens for every attempt."""
    options = dict(params.get("stream_options") or {})
    options.setdefault("include_usage", True)
    return {**params, "stream": True, "stream_options": options}
