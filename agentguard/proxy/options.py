"""What a proxy is started with: the project, the store, the policy and the routes per front.

Routes are validated before the proxy listens (an unknown provider, a route listed twice or a
fallback whose key variable is not set is one sentence at start-up, as with `wrap()`). A chain
route on a front's own provider (`anthropic:claude-sonnet-4-6` for the Anthropic front) goes to
that front's upstream with the client's own credential; any other route needs its key variable,
and only a request that presented an accepted credential may use it (see `credentials`).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from agentguard.clock import Clock, SystemClock
from agentguard.config import load_config
from agentguard.config import snapshot_remote as config_snapshot_remote
from agentguard.guard import project_folder
from agentguard.policy import Policy, resolve_policy
from agentguard.routes import KNOWN_PROVIDERS, Route, check_keys, parse_chain
from agentguard.snapshots import DEFAULT_MAX_FILE_BYTES
from agentguard.store_choice import choose_store

ANTHROPIC_URL = "https://api.anthropic.com"
OPENAI_URL = "https://api.openai.com/v1"
FRONTS = ("anthropic", "openai")
PING_INTERVAL = 10.0  # seconds between keep-alive pings to a held streaming client
# A request without a stream can be sent nothing before its answer: it is held at most this
# long (from its arrival), well inside the SDKs' default 10-minute timeout (Claude Code's too).
HOLD_NON_STREAMING = 300.0
# A client session without a request this long has its run closed (`completed`); a later
# request of the same session reopens that run. Claude Code's sessions end without a word.
SESSION_IDLE = 1800.0


@dataclass
class ProxyOptions:
    project: Path
    upstreams: dict[str, str]  # front kind → the base URL of its own provider
    chain: list[Route] = field(default_factory=list)
    policy: str | Policy | dict[str, Any] | None = None
    home: str | os.PathLike[str] | None = None
    accepted_keys: frozenset[str] = frozenset()
    snapshots: bool = True
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    secret_files: Sequence[str] | None = None
    clock: Clock | None = None
    rng: random.Random | None = None
    tracer_provider: Any = None  # OpenTelemetry's, for every run's steps; None: the global one
    hold: float | None = None  # seconds a request may be held; None: the policy's (hold_for)
    hold_non_streaming: float = HOLD_NON_STREAMING
    ping_interval: float = PING_INTERVAL
    session_idle: float = SESSION_IDLE  # 0: a session's run stays open while the proxy runs
    snapshot_remote: str | None = None  # a git remote each run's checkpoints are pushed to
    # The store the runs go to: "" the local SQLite file under `home`, else a postgresql:// URL
    # (build() chooses: its `store`, else $AGENTGUARD_STORE, else the config file's); None asks
    # $AGENTGUARD_STORE alone.
    store: str | None = None

    def monotonic(self) -> float:
        """Seconds on the proxy's clock (the tests' clock in tests)."""
        return (self.clock or SystemClock()).monotonic()

    @classmethod
    def build(
        cls,
        project: str | os.PathLike[str] = ".",
        *,
        chain: Iterable[str | Mapping[str, Any] | Route] | None = None,
        policy: str | Policy | dict[str, Any] | None = None,
        policy_overrides: Mapping[str, Any] | None = None,
        upstream: str | None = None,
        openai_upstream: str | None = None,
        home: str | os.PathLike[str] | None = None,
        accept_key_envs: Sequence[str] = (),
        accepted_keys: Iterable[str] = (),
        config: str | os.PathLike[str] | None = None,
        snapshots: bool | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        tracer_provider: Any = None,
        hold: float | None = None,
        hold_non_streaming: float = HOLD_NON_STREAMING,
        ping_interval: float = PING_INTERVAL,
        session_idle: float = SESSION_IDLE,
        snapshot_remote: str | None = None,
        store: str | None = None,
    ) -> ProxyOptions:
        """Validate everything before the proxy listens; a problem is one ConfigError."""
        folder = project_folder(project)
        settings, config_file = load_config(folder, config)
        location = choose_store(store, (settings.store, str(config_file)))
        upstreams = {
            "anthropic": (upstream or ANTHROPIC_URL).rstrip("/"),
            "openai": (openai_upstream or OPENAI_URL).rstrip("/"),
        }
        routes = parse_chain(chain if chain is not None else settings.chain, settings.providers)
        routes = [own_route(route, upstreams) for route in routes]
        check_keys(routes)
        policy = policy if policy is not None else settings.policy
        if policy_overrides:  # fields over the preset (or the config file's policy)
            policy = resolve_policy(policy, **policy_overrides)
        resolve_policy(policy)  # a bad preset or field is refused now, not at the first request
        keys = set(accepted_keys)
        for name in accept_key_envs:
            value = os.environ.get(name)
            if not value:
                from agentguard.errors import ConfigError

                raise ConfigError(
                    f"--accept-key-env {name}: ${name} is not set; set it to the key your "
                    "agent presents, or leave the option out."
                )
            keys.add(value)
        return cls(
            project=folder,
            upstreams=upstreams,
            chain=routes,
            policy=policy,
            home=home,
            accepted_keys=frozenset(keys),
            snapshots=next(v for v in (snapshots, settings.snapshots, True) if v is not None),
            max_file_bytes=settings.max_file_bytes or DEFAULT_MAX_FILE_BYTES,
            secret_files=settings.secret_files,
            clock=clock,
            rng=rng,
            tracer_provider=tracer_provider,
            hold=hold,
            hold_non_streaming=hold_non_streaming,
            ping_interval=ping_interval,
            session_idle=session_idle,
            snapshot_remote=config_snapshot_remote(snapshot_remote, settings),
            store=location,
        )

    def hold_for(self, policy: Policy, *, stream: bool) -> float:
        """How long (seconds from its arrival) a request may be held while its routes are down:
        the policy's queue deadline — its step deadline, then as long as a queued run waits
        before its next try (`step_deadline + queue_delay`) — unless `hold` says otherwise;
        a request without a stream at most `hold_non_streaming`."""
        full = self.hold if self.hold is not None else policy.step_deadline + policy.queue_delay
        return full if stream else min(full, self.hold_non_streaming)

    def primary(self, kind: str, model: str) -> Route:
        """The route a request asked for: its front's own provider, with its own credential."""
        return _route(kind, model, self.upstreams[kind])

    def chain_for(self, kind: str) -> list[Route]:
        """The fallback routes a front may use: those speaking its wire format, and those of
        the other one (the request is translated, see `translated`). A route of the other
        format is always keyed from the proxy's environment — `openai:…` with
        $OPENAI_API_KEY, `deepseek:…` with $DEEPSEEK_API_KEY, `anthropic:…` with
        $ANTHROPIC_API_KEY — and left out while that variable is not set (the client's own
        credential means nothing there)."""
        routes = []
        for route in self.chain:
            if route.kind == kind:
                routes.append(route)
            else:
                crossing = env_keyed(route)
                if crossing.api_key_env and os.environ.get(crossing.api_key_env):
                    routes.append(crossing)
        return routes


@lru_cache(maxsize=64)  # every request builds one; a pydantic model is worth keeping (frozen)
def _route(kind: str, model: str, base_url: str) -> Route:
    return Route(provider=kind, model=model, kind=kind, base_url=base_url)  # type: ignore[arg-type]


def env_keyed(route: Route) -> Route:
    """A route as the other front uses it: `own_route` gave `openai:…` (`anthropic:…`) the
    OpenAI (Anthropic) front's credential rule, the client's own key; across fronts it takes
    its provider's key variable again."""
    if route.api_key_env is not None:
        return route
    spec = KNOWN_PROVIDERS.get(route.provider)
    return route.model_copy(update={"api_key_env": spec.api_key_env if spec else None})


def own_route(route: Route, upstreams: Mapping[str, str]) -> Route:
    """A chain route on a front's own provider goes where that front's requests go, with the
    client's own credential (api_key_env None)."""
    spec = KNOWN_PROVIDERS.get(route.provider)
    if (
        route.provider in upstreams
        and route.provider == route.kind
        and spec is not None
        and route.base_url == spec.base_url
        and route.api_key_env == spec.api_key_env
    ):
        return route.model_copy(update={"base_url": upstreams[route.kind], "api_key_env": None})
    return route
