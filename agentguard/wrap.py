"""`agentguard.wrap(client)`: the SDK's own surface, with every model call a guarded step."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

from anthropic import Anthropic, AsyncAnthropic

from agentguard.clock import Clock
from agentguard.errors import ConfigError
from agentguard.guard import Call, Guard, Served, StepRequest, adrive, drive
from agentguard.policy import Policy
from agentguard.providers.anthropic import AnthropicProvider
from agentguard.routes import Route
from agentguard.snapshots import DEFAULT_MAX_FILE_BYTES


def wrap(
    client: Any,
    *,
    project: str | os.PathLike[str] = ".",
    run: str | None = None,
    policy: str | Policy | dict[str, Any] | None = None,
    home: str | os.PathLike[str] | None = None,
    clock: Clock | None = None,
    rng: random.Random | None = None,
    snapshots: bool = True,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> Any:
    """Guard every `messages.create` / `messages.stream` call of an Anthropic client.

    Returns an object with the client's own surface; each model call checkpoints the
    conversation and working tree, retries overload with bounded jittered backoff (the SDK's
    own retries are switched off) and records every attempt in the store.
    """
    if not isinstance(client, Anthropic | AsyncAnthropic):
        raise ConfigError(
            f"agentguard.wrap() takes an anthropic.Anthropic or AsyncAnthropic client, "
            f"not {type(client).__name__}."
        )
    guard = Guard(
        project,
        run=run,
        policy=policy,
        home=home,
        clock=clock,
        rng=rng,
        snapshots=snapshots,
        max_file_bytes=max_file_bytes,
    )
    provider = AnthropicProvider(client)
    if provider.is_async:
        return AsyncGuardedAnthropic(client, guard, provider)
    return GuardedAnthropic(client, guard, provider)


class _GuardedClientBase:
    def __init__(self, client: Any, guard: Guard, provider: AnthropicProvider) -> None:
        self._client = client
        self.agentguard = guard
        self._provider = provider

    def __getattr__(self, name: str) -> Any:  # everything not guarded is the client's own
        return getattr(self._client, name)

    @property
    def run_id(self) -> str:
        return self.agentguard.run_id

    def _request(self, params: dict[str, Any], *, stream: bool) -> StepRequest:
        model = params.get("model")
        messages = params.get("messages")
        if not isinstance(model, str) or messages is None:
            raise TypeError("messages.create() needs keyword arguments `model` and `messages`.")
        route = Route("anthropic", model, self._provider.base_url, "ANTHROPIC_API_KEY")
        return StepRequest(route=route, messages=list(messages), params=params, stream=stream)


def _for_route(params: dict[str, Any], call: Call) -> dict[str, Any]:
    return {**params, "model": call.route.model}


class GuardedAnthropic(_GuardedClientBase):
    """A sync Anthropic client whose model calls are guarded steps."""

    def __init__(self, client: Anthropic, guard: Guard, provider: AnthropicProvider) -> None:
        super().__init__(client, guard, provider)
        self.messages = GuardedMessages(self)

    def close(self) -> None:
        self.agentguard.close()
        self._client.close()

    def __enter__(self) -> GuardedAnthropic:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GuardedMessages:
    """`client.messages` with `create` and `stream` guarded; the rest is the SDK's."""

    def __init__(self, owner: GuardedAnthropic) -> None:
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._owner._client.messages, name)

    def _run(self, request: StepRequest, send: Callable[[dict[str, Any]], Served]) -> Any:
        guard = self._owner.agentguard
        plan = guard.step(request)
        return drive(plan, lambda call: send(_for_route(request.params, call)), guard.clock)

    def create(self, **params: Any) -> Any:
        provider = self._owner._provider
        stream = bool(params.get("stream"))
        request = self._owner._request(params, stream=stream)
        send = provider.create_stream if stream else provider.create
        return self._run(request, send)

    def stream(self, **params: Any) -> GuardedStreamManager:
        output_format = params.pop("output_format", None)
        request = self._owner._request(params, stream=True)
        provider = self._owner._provider
        return GuardedStreamManager(
            lambda: self._run(request, lambda p: provider.message_stream(p, output_format))
        )


class GuardedStreamManager:
    """Like the SDK's MessageStreamManager: the guarded step runs on `__enter__`."""

    def __init__(self, start: Callable[[], Any]) -> None:
        self._start = start
        self._stream: Any = None

    def __enter__(self) -> Any:
        self._stream = self._start()
        return self._stream

    def __exit__(self, *exc: object) -> None:
        if self._stream is not None:
            self._stream.close()


class AsyncGuardedAnthropic(_GuardedClientBase):
    """An AsyncAnthropic client whose model calls are guarded steps."""

    def __init__(self, client: AsyncAnthropic, guard: Guard, provider: AnthropicProvider) -> None:
        super().__init__(client, guard, provider)
        self.messages = AsyncGuardedMessages(self)

    async def close(self) -> None:
        self.agentguard.close()
        await self._client.close()

    async def __aenter__(self) -> AsyncGuardedAnthropic:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncGuardedMessages:
    def __init__(self, owner: AsyncGuardedAnthropic) -> None:
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._owner._client.messages, name)

    async def _run(self, request: StepRequest, send: Callable[[dict[str, Any]], Any]) -> Any:
        guard = self._owner.agentguard
        plan = guard.step(request)
        return await adrive(plan, lambda call: send(_for_route(request.params, call)), guard.clock)

    async def create(self, **params: Any) -> Any:
        provider = self._owner._provider
        stream = bool(params.get("stream"))
        request = self._owner._request(params, stream=stream)
        send = provider.acreate_stream if stream else provider.acreate
        return await self._run(request, send)

    def stream(self, **params: Any) -> AsyncGuardedStreamManager:
        output_format = params.pop("output_format", None)
        request = self._owner._request(params, stream=True)
        provider = self._owner._provider
        return AsyncGuardedStreamManager(
            lambda: self._run(request, lambda p: provider.amessage_stream(p, output_format))
        )


class AsyncGuardedStreamManager:
    def __init__(self, start: Callable[[], Any]) -> None:
        self._start = start
        self._stream: Any = None

    async def __aenter__(self) -> Any:
        self._stream = await self._start()
        return self._stream

    async def __aexit__(self, *exc: object) -> None:
        if self._stream is not None:
            await self._stream.close()
