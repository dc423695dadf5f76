"""Routes and chains: where a step may be served, validated before the run starts.

A route is a provider, a model, the base URL and the *name* of the environment variable that
holds its key — never the key itself. Known providers work by name alone, so
`deepseek:deepseek-v4-pro` is a complete route; any of them can be overridden in config.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from agentguard.errors import ConfigError
from agentguard.policy import validate_model

Kind = Literal["anthropic", "openai"]


class ProviderSpec(BaseModel):
    """How to reach a provider: the wire format it speaks, where, and which variable has the key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind
    base_url: str | None = None  # None: the SDK's own default
    api_key_env: str


KNOWN_PROVIDERS: dict[str, ProviderSpec] = {
    "anthropic": ProviderSpec(kind="anthropic", api_key_env="ANTHROPIC_API_KEY"),
    "openai": ProviderSpec(kind="openai", api_key_env="OPENAI_API_KEY"),
    "deepseek": ProviderSpec(
        kind="openai", base_url="https://api.deepseek.com", api_key_env="DEEPSEEK_API_KEY"
    ),
    "moonshot": ProviderSpec(
        kind="openai", base_url="https://api.moonshot.ai/v1", api_key_env="MOONSHOT_API_KEY"
    ),
    "gemini": ProviderSpec(
        kind="openai",
        base_url="https://generativelanguage.googleapis.com/v1beta/openai/",
        api_key_env="GEMINI_API_KEY",
    ),
    "openrouter": ProviderSpec(
        kind="openai", base_url="https://openrouter.ai/api/v1", api_key_env="OPENROUTER_API_KEY"
    ),
    "tokenmix": ProviderSpec(
        kind="openai", base_url="https://api.tokenmix.ai/v1", api_key_env="TOKENMIX_API_KEY"
    ),
}


class Route(BaseModel):
    """One place a step can be served."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str
    model: str
    kind: Kind = "anthropic"
    base_url: str | None = None
    api_key_env: str | None = None

    @field_validator("provider", "model")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @property
    def key(self) -> str:
        """'anthropic:claude-opus-4-7' — how routes are written in chains and shown to people."""
        return f"{self.provider}:{self.model}"

    @property
    def account(self) -> tuple[str, str | None, str | None]:
        """Routes with the same account share a rate-limit quota."""
        return (self.provider, self.base_url, self.api_key_env)

    def __str__(self) -> str:
        return self.key


def parse_route(
    entry: str | Mapping[str, Any] | Route,
    providers: Mapping[str, ProviderSpec] | None = None,
) -> Route:
    """'provider:model' or a table {provider, model, base_url?, api_key_env?, kind?} → Route."""
    if isinstance(entry, Route):
        return entry
    table = _provider_table(providers)
    if isinstance(entry, str):
        provider, sep, model = entry.partition(":")
        if not sep or not provider or not model:
            raise ConfigError(
                f"Route {entry!r} is not of the form 'provider:model' "
                "(e.g. 'anthropic:claude-sonnet-4-6')."
            )
        data: dict[str, Any] = {"provider": provider, "model": model}
    elif isinstance(entry, Mapping):
        data = dict(entry)
    else:
        raise ConfigError(f"A route must be 'provider:model' or a table, not {entry!r}.")
    name = data.get("provider")
    spec = table.get(str(name))
    if spec is None and not data.get("base_url"):
        raise ConfigError(
            f"Unknown provider {name!r} in route {entry!r}; use one of {', '.join(table)} "
            "or give the route a base_url (an OpenAI-compatible gateway)."
        )
    if spec is not None:
        data.setdefault("kind", spec.kind)
        data.setdefault("base_url", spec.base_url)
        data.setdefault("api_key_env", spec.api_key_env)
    else:
        data.setdefault("kind", "openai")
    return validate_model(Route, data, f"route {entry!r}")


def parse_chain(
    entries: Iterable[str | Mapping[str, Any] | Route],
    providers: Mapping[str, ProviderSpec] | None = None,
) -> list[Route]:
    routes = [parse_route(entry, providers) for entry in entries]
    seen: set[str] = set()
    for route in routes:
        if route.key in seen:
            raise ConfigError(
                f"Route {route.key} appears twice in the chain; list each route once."
            )
        seen.add(route.key)
    return routes


def check_keys(routes: Iterable[Route], *, exempt: Iterable[Route] = ()) -> None:
    """Fail at start-up, not mid-run, when a fallback route's key variable is not set."""
    skip = {r.key for r in exempt}
    for route in routes:
        if route.key in skip or route.api_key_env is None:
            continue
        if not os.environ.get(route.api_key_env):
            raise ConfigError(
                f"Route {route.key} needs its API key in ${route.api_key_env}, which is not set; "
                "set it or remove the route from the chain."
            )


def _provider_table(extra: Mapping[str, ProviderSpec] | None) -> dict[str, ProviderSpec]:
    return {**KNOWN_PROVIDERS, **(extra or {})}
