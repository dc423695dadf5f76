"""Routes: a provider, a model, where it lives and the *name* of the variable holding its key."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Route:
    provider: str
    model: str
    base_url: str | None = None
    api_key_env: str | None = None

    @property
    def key(self) -> str:
        """'anthropic:claude-opus-4-7' — how routes are written in chains and shown to people."""
        return f"{self.provider}:{self.model}"

    def __str__(self) -> str:
        return self.key
