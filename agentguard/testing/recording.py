"""What the fake provider saw: one RecordedRequest per HTTP request, credentials masked.

Tests assert on what really went over the wire (how many attempts, which model, which
request id came back), so every request is recorded, including ones answered with a fault.
Keys never survive into a record: credential headers become "***", and the key's bytes are
scrubbed from every other header, the query string and the body, so a test can assert the
key appears nowhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

MASK = "***"
_SECRET_NAME = re.compile(r"key|auth|token|secret|cookie|password|credential|signature", re.I)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake provider received it."""

    api: str  # "anthropic" | "openai"
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-cased names; credentials masked as "***"
    body: dict
    model: str | None
    stream: bool
    reply: str  # "ok", "error:529", "midstream_error", "drop", "stall"
    request_id: str  # the request id the server sent back
    received_at: float  # time.monotonic()

    @property
    def messages(self) -> list[Any]:
        messages = self.body.get("messages")
        return messages if isinstance(messages, list) else []

    @property
    def last_user_text(self) -> str:
        """The text of the last user (or tool) message, for scripted models that echo."""
        for message in reversed(self.messages):
            if isinstance(message, dict) and message.get("role") in ("user", "tool"):
                return _text_of(message.get("content"))
        return ""


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts: list[str] = []
    for block in content:
        if isinstance(block, dict):
            if isinstance(block.get("text"), str):
                parts.append(block["text"])
            elif block.get("type") == "tool_result":
                parts.append(_text_of(block.get("content")))
    return "\n".join(parts)


def secrets_in(headers: Mapping[str, str]) -> list[str]:
    """The credential values in these headers (a bearer token without its scheme too)."""
    found: list[str] = []
    for name, value in headers.items():
        if _SECRET_NAME.search(name) and value:
            found.append(value)
            scheme, _, token = value.partition(" ")
            if token and scheme.lower() in ("bearer", "basic", "token"):
                found.append(token.strip())
    return sorted({s for s in found if len(s) >= 4}, key=len, reverse=True)


def _scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def mask_headers(headers: Iterable[tuple[str, str]], secrets: list[str]) -> dict[str, str]:
    masked: dict[str, str] = {}
    for raw_name, value in headers:
        name = raw_name.lower()
        value = MASK if _SECRET_NAME.search(name) else _scrub(value, secrets)
        masked[name] = f"{masked[name]}, {value}" if name in masked else value
    return masked


def mask_query(query: str, secrets: list[str]) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(_SECRET_NAME.search(name) for name, _ in pairs):
        query = urlencode([(n, MASK if _SECRET_NAME.search(n) else v) for n, v in pairs], safe="*")
    return _scrub(query, secrets)


def mask_body(value: Any, secrets: list[str]) -> Any:
    """Replace credential bytes inside a parsed JSON body (only if a prompt carried a key)."""
    if not secrets:
        return value
    if isinstance(value, str):
        return _scrub(value, secrets)
    if isinstance(value, list):
        return [mask_body(item, secrets) for item in value]
    if isinstance(value, dict):
        return {_scrub(k, secrets): mask_body(v, secrets) for k, v in value.items()}
    return value
