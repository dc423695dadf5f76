"""Credentials: which one a request presented, and which routes it may therefore use.

The proxy listens on loopback, but any process on the machine can reach it. A fallback route
whose key comes from the proxy's own environment is used only for a request that presented a
credential the proxy was started to accept (the key `agentguard run` gave its child, or one
named with `--accept-key-env`). Every other request is served by its own provider with its own
credential only. Credentials are compared in constant time and never stored or logged.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable, Mapping

from agentguard.routes import Route

CREDENTIAL_HEADERS = ("x-api-key", "authorization", "api-key")


def presented(headers: Mapping[str, str]) -> list[str]:
    """The credentials a request carries (a bearer token without its scheme)."""
    found = []
    for name in CREDENTIAL_HEADERS:
        value = headers.get(name)
        if not value:
            continue
        scheme, _, token = value.partition(" ")
        found.append(token.strip() if token and scheme.lower() == "bearer" else value.strip())
    return found


def trusted(headers: Mapping[str, str], accepted: Iterable[str]) -> bool:
    """Did the request present a credential the proxy accepts?"""
    keys = [k.encode() for k in accepted if k]
    return any(
        hmac.compare_digest(given.encode(), key) for given in presented(headers) for key in keys
    )


def needs_env_key(route: Route) -> bool:
    """A route served with a key from the proxy's environment, not the client's own."""
    return route.api_key_env is not None


def usable(routes: Iterable[Route], *, trusted_request: bool) -> list[Route]:
    return [r for r in routes if trusted_request or not needs_env_key(r)]


def with_env_key(headers: list[tuple[str, str]], route: Route) -> list[tuple[str, str]]:
    """The client's headers with its credential replaced by the route's key from the
    environment (for a trusted request on a route of another account)."""
    key = os.environ.get(route.api_key_env or "", "")
    kept = [(n, v) for n, v in headers if n.lower() not in CREDENTIAL_HEADERS]
    if route.kind == "anthropic":
        return [*kept, ("x-api-key", key)]
    return [*kept, ("authorization", f"Bearer {key}")]
