"""`agentguard.wrap(client)`: the SDK's own surface, with every model call a guarded step."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from anthropic import Anthropic, AsyncAnthropic
from openai import AsyncOpenAI, OpenAI

from agentguard.breaker import BreakerSettings
from agentguard.budget import BudgetSettings
from agentguard.clock import Clock
from agentguard.config import load_config
from agentguard.config import snapshot_remote as config_snapshot_remote
from agentguard.errors import ConfigError, Refuse
from agentguard.guard import Guard, StepRequest, project_folder
from agentguard.plan import adrive, drive
from agentguard.policy import Policy
from agentguard.providers.dispatch import Dispatcher, Face
from agentguard.records import StepInfo
from agentguard.routes import KNOWN_PROVIDERS, Route, check_keys, parse_chain
from agentguard.snapshots import DEFAULT_MAX_FILE_BYTES
from agentguard.store_choice import choose_store

ChainEntry = str | Mapping[str, Any] | Route


def wrap(
    client: Any,
    *,
    project: str | os.PathLike[str] = ".",
    run: str | None = None,
    policy: str | Policy | dict[str, Any] | None = None,
    chain: Iterable[ChainEntry] | None = None,
    on_substitution: Callable[[StepInfo], Refuse | None] | None = None,
    tracer_provider: Any = None,  # OpenTelemetry's; default: the global one (agentguard.otel)
    config: str | os.PathLike[str] | None = None,
    home: str | os.PathLike[str] | None = None,
    clock: Clock | None = None,
    rng: random.Random | None = None,
    snapshots: bool | None = None,
    max_file_bytes: int | None = None,
    breaker: BreakerSettings | None = None,
    budget: BudgetSettings | None = None,
    resume: str | None = None,
    snapshot_remote: str | None = None,
    store_url: str | None = None,
) -> Any:
    """Guard every model call of an Anthropic or OpenAI client (sync or async).

    Returns an object with the client's own surface; each model call checkpoints the
    conversation and working tree, retries overload with bounded jittered backoff (the SDK's
    own retries are switched off), falls back along `chain` as the policy allows, and records
    every attempt in the store. `resume=RUN_ID` records into an existing run instead of a new
    one (see `agentguard.resume`). `snapshot_remote` (else $AGENTGUARD_SNAPSHOT_REMOTE, else the
    config file's): a git remote each checkpoint is pushed to in the background. `store_url`
    (else $AGENTGUARD_STORE, else the config file's `store`): a postgresql:// URL for a fleet's
    shared store, or "sqlite" for the local file under `home`.
    """
    if not isinstance(client, Anthropic | AsyncAnthropic | OpenAI | AsyncOpenAI):
        raise ConfigError(
            "agentguard.wrap() takes an anthropic.Anthropic, anthropic.AsyncAnthropic, "
            f"openai.OpenAI or openai.AsyncOpenAI client, not {type(client).__name__}."
        )
    folder = project_folder(project)
    settings, config_file = load_config(folder, config)
    store_location = choose_store(
        store_url, (settings.store, str(config_file)), given_as="wrap(store_url=)"
    )
    dispatcher = Dispatcher(client)
    routes = parse_chain(chain if chain is not None else settings.chain, settings.providers)
    routes = [_own(route, dispatcher) for route in routes]
    check_keys(routes, exempt=[r for r in routes if dispatcher.owns(r)])
    guard = Guard(
        folder,
        run=run,
        policy=policy if policy is not None else settings.policy,
        chain=routes,
        on_substitution=on_substitution,
        tracer_provider=tracer_provider,
        home=home,
        clock=clock,
        rng=rng,
        snapshots=_first(snapshots, settings.snapshots, True),
        max_file_bytes=_first(max_file_bytes, settings.max_file_bytes, DEFAULT_MAX_FILE_BYTES),
        secret_files=settings.secret_files,
        breaker=breaker,
        budget=budget,
        resume=resume,
        snapshot_remote=config_snapshot_remote(snapshot_remote, settings),
        store_url=store_location,
    )
    if dispatcher.kind == "anthropic":
        cls: type[_GuardedClient] = (
            AsyncGuardedAnthropic if dispatcher.is_async else GuardedAnthropic
        )
    else:
        cls = AsyncGuardedOpenAI if dispatcher.is_async else GuardedOpenAI
    return cls(client, guard, dispatcher)


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def _own(route: Route, dispatcher: Dispatcher) -> Route:
    """A chain route on the wrapped client's own provider uses that client (its URL and key)."""
    spec = KNOWN_PROVIDERS.get(route.provider)
    if (
        route.provider == dispatcher.kind
        and spec is not None
        and route.base_url == spec.base_url
        and route.api_key_env == spec.api_key_env
    ):
        return route.model_copy(update={"base_url": dispatcher.base_url, "api_key_env": None})
    return route


class _GuardedClient:
    def __init__(self, client: Any, guard: Guard, dispatcher: Dispatcher) -> None:
        self._client = client
        self.agentguard = guard
        self._dispatcher = dispatcher

    def __getattr__(self, name: str) -> Any:  # everything not guarded is the client's own
        return getattr(self._client, name)

    @property
    def run_id(self) -> str:
        return self.agentguard.run_id

    def _request(self, face: Face, params: dict[str, Any]) -> StepRequest:
        model = params.get("model")
        messages = params.get("messages")
        if not isinstance(model, str) or messages is None:
            raise TypeError("a model call needs keyword arguments `model` and `messages`.")
        kind = self._dispatcher.kind
        route = Route(provider=kind, model=model, kind=kind, base_url=self._dispatcher.base_url)
        streaming = face not in (Face.MESSAGE, Face.COMPLETION)
        return StepRequest(route=route, messages=list(messages), params=params, stream=streaming)

    def _run(self, face: Face, params: dict[str, Any], output_format: Any = None) -> Any:
        request = self._request(face, params)
        guard = self.agentguard
        return drive(
            guard.step(request),
            lambda call: self._dispatcher.send(call.route, face, params, output_format),
            guard.clock,
        )

    async def _arun(self, face: Face, params: dict[str, Any], output_format: Any = None) -> Any:
        request = self._request(face, params)
        guard = self.agentguard
        return await adrive(
            guard.step(request),
            lambda call: self._dispatcher.asend(call.route, face, params, output_format),
            guard.clock,
        )


class GuardedAnthropic(_GuardedClient):
    """A sync Anthropic client whose model calls are guarded steps."""

    def __init__(self, client: Any, guard: Guard, dispatcher: Dispatcher) -> None:
        super().__init__(client, guard, dispatcher)
        self.messages = _Messages(self)

    def close(self) -> None:
        self.agentguard.close()
        self._client.close()

    def __enter__(self) -> GuardedAnthropic:
        return self

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        self.agentguard.end(exc)
        self._client.close()


class _Messages:
    """`client.messages` with `create` and `stream` guarded; the rest is the SDK's."""

    def __init__(self, owner: GuardedAnthropic) -> None:
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._owner._client.messages, name)

    def create(self, **params: Any) -> Any:
        return self._owner._run(Face.EVENTS if params.get("stream") else Face.MESSAGE, params)

    def stream(self, **params: Any) -> _StreamManager:
        output_format = params.pop("output_format", None)
        return _StreamManager(lambda: self._owner._run(Face.MESSAGE_STREAM, params, output_format))


class _StreamManager:
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


class AsyncGuardedAnthropic(_GuardedClient):
    """An AsyncAnthropic client whose model calls are guarded steps."""

    def __init__(self, client: Any, guard: Guard, dispatcher: Dispatcher) -> None:
        super().__init__(client, guard, dispatcher)
        self.messages = _AsyncMessages(self)

    async def close(self) -> None:
        self.agentguard.close()
        await self._client.close()

    async def __aenter__(self) -> AsyncGuardedAnthropic:
        return self

    async def __aexit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        self.agentguard.end(exc)
        await self._client.close()


class _AsyncMessages:
    def __init__(self, owner: AsyncGuardedAnthropic) -> None:
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._owner._client.messages, name)

    async def create(self, **params: Any) -> Any:
        face = Face.EVENTS if params.get("stream") else Face.MESSAGE
        return await self._owner._arun(face, params)

    def stream(self, **params: Any) -> _AsyncStreamManager:
        output_format = params.pop("output_format", None)
        return _AsyncStreamManager(
            lambda: self._owner._arun(Face.MESSAGE_STREAM, params, output_format)
        )


class _AsyncStreamManager:
    def __init__(self, start: Callable[[], Any]) -> None:
        self._start = start
        self._stream: Any = None

    async def __aenter__(self) -> Any:
        self._stream = await self._start()
        return self._stream

    async def __aexit__(self, *exc: object) -> None:
        if self._stream is not None:
            await self._stream.close()


class GuardedOpenAI(_GuardedClient):
    """A sync OpenAI client whose `chat.completions.create` calls are guarded steps."""

    def __init__(self, client: Any, guard: Guard, dispatcher: Dispatcher) -> None:
        super().__init__(client, guard, dispatcher)
        self.chat = _Chat(client.chat, _Completions(self))

    def close(self) -> None:
        self.agentguard.close()
        self._client.close()

    def __enter__(self) -> GuardedOpenAI:
        return self

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        self.agentguard.end(exc)
        self._client.close()


class AsyncGuardedOpenAI(_GuardedClient):
    """An AsyncOpenAI client whose `chat.completions.create` calls are guarded steps."""

    def __init__(self, client: Any, guard: Guard, dispatcher: Dispatcher) -> None:
        super().__init__(client, guard, dispatcher)
        self.chat = _Chat(client.chat, _AsyncCompletions(self))

    async def close(self) -> None:
        self.agentguard.close()
        await self._client.close()

    async def __aenter__(self) -> AsyncGuardedOpenAI:
        return self

    async def __aexit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        self.agentguard.end(exc)
        await self._client.close()


class _Chat:
    def __init__(self, chat: Any, completions: Any) -> None:
        self._chat = chat
        self.completions = completions

    def __getattr__(self, name: str) -> Any:
        return getattr(self._chat, name)


class _Completions:
    def __init__(self, owner: _GuardedClient) -> None:
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._owner._client.chat.completions, name)

    def create(self, **params: Any) -> Any:
        face = Face.CHUNKS if params.get("stream") else Face.COMPLETION
        return self._owner._run(face, params)


class _AsyncCompletions(_Completions):
    async def create(self, **params: Any) -> Any:
        face = Face.CHUNKS if params.get("stream") else Face.COMPLETION
        return await self._owner._arun(face, params)
