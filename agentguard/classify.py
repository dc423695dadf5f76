"""What a failed attempt means, and what to do next.

`describe` turns whatever an SDK raised into a `Failure` (status, type, request-id, headers);
`decide` is a pure function of (failure, policy, attempt number, time left) → `Decision`.

    signal                                    kind             action
    529 overloaded_error (also mid-stream)    overloaded       retry, then next route
    500 502 503 504 408 409, network, stall   server/network   retry, then next route
    429 rate_limit_error                      rate_limited     wait retry-after if it fits
    402, 429/403 spend or billing limit       billing          route unusable
    401, 403                                  auth             route unusable
    404                                       not_found        skip route (configuration error)
    400, 413, 422                             invalid_request  raise at once, never hidden

`x-should-retry: false` stops retries on the route (a fallback may still serve);
`x-should-retry: true` makes an otherwise unknown status retryable. Neither changes the
request, account and configuration errors: retrying those with the same body cannot help.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

import httpx2

from agentguard.policy import Policy


class Kind(StrEnum):
    OVERLOADED = "overloaded"
    SERVER = "server"
    NETWORK = "network"
    RATE_LIMITED = "rate_limited"
    BILLING = "billing"
    AUTH = "auth"
    NOT_FOUND = "not_found"
    INVALID_REQUEST = "invalid_request"
    OTHER = "other"


class Action(StrEnum):
    RETRY = "retry"  # same route, after `delay`
    NEXT_ROUTE = "next_route"  # this route has had its chances; another may serve
    SKIP_ROUTE = "skip_route"  # this route is misconfigured (404 model)
    ROUTE_UNUSABLE = "route_unusable"  # key, permission or billing problem on this route
    FATAL = "fatal"  # the request itself is wrong: surface it


RETRYABLE = frozenset({Kind.OVERLOADED, Kind.SERVER, Kind.NETWORK})
_BILLING_CODES = ("spend_limit", "billing", "credit", "quota", "insufficient_funds")


@dataclass(frozen=True)
class Failure:
    kind: Kind
    status_code: int | None
    error_type: str | None
    error_code: str | None
    request_id: str | None
    message: str
    retry_after: float | None = None
    should_retry: bool | None = None

    @property
    def label(self) -> str:
        """Short text for logs and banners: '529 overloaded_error'."""
        status = "" if self.status_code is None else f"{self.status_code} "
        return f"{status}{self.error_type or self.kind.value}"


@dataclass(frozen=True)
class Decision:
    action: Action
    delay: float = 0.0
    reason: str = ""


class UpstreamError(Exception):
    """A provider's error as the proxy received it, verbatim: a non-2xx answer (`status`,
    `headers`, `body` bytes), or an SSE `error` event before any content (`status` None, the
    event's data as `body`). Classified exactly like the SDKs' APIStatusError."""

    def __init__(self, status: int | None, headers: Mapping[str, str], body: bytes) -> None:
        self.status_code = status
        self.headers = {str(k).lower(): str(v) for k, v in headers.items()}
        self.body = body
        error = _error_object(self.json())
        detail = error.get("message") if isinstance(error.get("message"), str) else ""
        super().__init__(f"{status or 'stream'} {error.get('type') or ''}: {detail}".strip())

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None


def describe(exc: BaseException, now: float | None = None) -> Failure | None:
    """Read an exception from the anthropic or openai SDK (or their HTTP layer), or an
    UpstreamError from the proxy; None if foreign."""
    if isinstance(exc, httpx2.TimeoutException):
        return Failure(Kind.NETWORK, None, "timeout", None, None, _first_line(exc) or "timed out")
    if isinstance(exc, httpx2.TransportError):
        return Failure(
            Kind.NETWORK,
            None,
            "connection_error",
            None,
            None,
            _first_line(exc) or type(exc).__name__,
        )
    if isinstance(exc, UpstreamError):
        body = exc.json()
        return _status_failure(
            exc.status_code, body, exc.headers, _body_request_id(body), str(exc), now
        )
    module = type(exc).__module__.split(".")[0]
    if module not in ("anthropic", "openai"):
        return None
    body = getattr(exc, "body", None)
    status = getattr(exc, "status_code", None)
    response = getattr(exc, "response", None)
    headers = response.headers if response is not None else {}
    if status is None:  # connection failure or a mid-stream error without a status
        error = _error_object(body)
        message = error.get("message") if isinstance(error.get("message"), str) else None
        message = message or _first_line(exc)
        if type(exc).__name__ in ("APITimeoutError",):
            return Failure(Kind.NETWORK, None, "timeout", None, None, message)
        if type(exc).__name__ == "APIConnectionError":
            return Failure(Kind.NETWORK, None, "connection_error", None, None, message)
    return _status_failure(
        status, body, headers, getattr(exc, "request_id", None), _first_line(exc), now
    )


def _status_failure(
    status: int | None,
    body: Any,
    headers: Any,
    request_id: str | None,
    fallback_message: str,
    now: float | None,
) -> Failure:
    """A provider's error answer: its status, its body's error object and its headers."""
    error = _error_object(body)
    error_type = error.get("type") if isinstance(error.get("type"), str) else None
    code = _error_code(error)
    request_id = request_id or headers.get("request-id") or headers.get("x-request-id")
    message = error.get("message") if isinstance(error.get("message"), str) else None
    message = message or fallback_message
    kind = _kind(status, error_type, code)
    return Failure(
        kind=kind,
        status_code=status,
        error_type=error_type or _default_type(status),
        error_code=code,
        request_id=request_id,
        message=message,
        retry_after=retry_after_seconds(headers, now),
        should_retry=_should_retry(headers),
    )


def decide(
    failure: Failure,
    policy: Policy,
    *,
    attempt: int,
    time_left: float,
    rng: random.Random,
) -> Decision:
    """What to do after the `attempt`-th failed try on a route, with `time_left` in the step."""
    kind = failure.kind
    if kind is Kind.INVALID_REQUEST:
        return Decision(Action.FATAL, reason=f"{failure.label}: the request itself was rejected")
    if kind in (Kind.AUTH, Kind.BILLING):
        return Decision(Action.ROUTE_UNUSABLE, reason=f"{failure.label}: {failure.message}")
    if kind is Kind.NOT_FOUND:
        return Decision(Action.SKIP_ROUTE, reason=f"{failure.label}: {failure.message}")
    if kind is Kind.OTHER and failure.should_retry is not True:
        return Decision(Action.FATAL, reason=f"{failure.label}: not a retryable error")
    if failure.should_retry is False:
        return Decision(
            Action.NEXT_ROUTE, reason=f"{failure.label}: server said x-should-retry: false"
        )
    if attempt >= policy.max_attempts:
        return Decision(Action.NEXT_ROUTE, reason=f"{failure.label} ×{attempt}")
    if kind is Kind.RATE_LIMITED and failure.retry_after is not None:
        delay = failure.retry_after
        if delay > policy.max_retry_after or delay > time_left:
            return Decision(
                Action.NEXT_ROUTE,
                reason=f"{failure.label}: retry-after {delay:g}s does not fit the step's "
                f"{time_left:.0f}s left",
            )
        return Decision(Action.RETRY, delay, f"{failure.label}: waiting retry-after {delay:g}s")
    delay = policy.backoff(attempt, rng)
    if failure.retry_after is not None and failure.retry_after <= policy.max_retry_after:
        delay = max(delay, failure.retry_after)
    if delay > time_left:
        return Decision(
            Action.NEXT_ROUTE,
            reason=f"{failure.label}: step deadline reached after {attempt} tries",
        )
    return Decision(Action.RETRY, delay, f"{failure.label}: backing off {delay:.2f}s")


def retry_after_seconds(headers: Any, now: float | None = None) -> float | None:
    """retry-after-ms, else retry-after (seconds or an HTTP date), as seconds."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return max(float(raw_ms) / 1000.0, 0.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(float(raw), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw).timestamp()
    except (TypeError, ValueError):
        return None
    import time

    return max(when - (now if now is not None else time.time()), 0.0)


def _kind(status: int | None, error_type: str | None, code: str | None) -> Kind:
    billing = error_type == "billing_error" or any(
        marker in (code or "") for marker in _BILLING_CODES
    )
    if error_type == "overloaded_error" or status == 529:
        return Kind.OVERLOADED
    if status == 402 or (billing and status in (400, 403, 429)):
        return Kind.BILLING
    if status == 429 or error_type == "rate_limit_error":
        return Kind.RATE_LIMITED
    if status in (401, 403) or error_type in ("authentication_error", "permission_error"):
        return Kind.AUTH
    if status == 404 or error_type == "not_found_error":
        return Kind.NOT_FOUND
    if status in (400, 413, 422) or error_type in ("invalid_request_error", "request_too_large"):
        return Kind.INVALID_REQUEST
    if status is not None and (status >= 500 or status in (408, 409)):
        return Kind.SERVER
    if error_type in ("api_error", "timeout_error"):
        return Kind.SERVER
    return Kind.OTHER


def _default_type(status: int | None) -> str | None:
    return {529: "overloaded_error", 429: "rate_limit_error", 500: "api_error"}.get(status or 0)


def _error_object(body: Any) -> dict[str, Any]:
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict):
            return inner
        return body
    return {}


def _body_request_id(body: Any) -> str | None:
    found = body.get("request_id") if isinstance(body, dict) else None
    return found if isinstance(found, str) else None


def _error_code(error: dict[str, Any]) -> str | None:
    details = error.get("details")
    if isinstance(details, dict) and isinstance(details.get("error_code"), str):
        return details["error_code"]
    code = error.get("code")
    return code if isinstance(code, str) else None


def _should_retry(headers: Any) -> bool | None:
    value = headers.get("x-should-retry")
    if value == "true":
        return True
    if value == "false":
        return False
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
