"""Conversation checkpoints that cost O(new messages), not O(conversation).

Each step stores only the messages its conversation adds to its parent's, and how many of the
parent's messages it keeps (`base_len`): an agent that edits or compacts its history just keeps
fewer. Messages the caller passes again as the very same objects are not re-hashed; agentguard
assumes a message it has already checkpointed is not mutated in place afterwards (cache_control
markers, which agents move around, are ignored when comparing).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentguard.store import dumps

# Parameters that never go into the store: credentials may ride in headers.
_NOT_STORED = frozenset({"extra_headers", "extra_query", "timeout", "messages", "model", "stream"})


def to_jsonable(value: Any) -> Any:
    """SDK objects (pydantic models, e.g. `response.content`) and TypedDicts → plain JSON values."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json", exclude_none=True, exclude_unset=True)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _without_cache_control(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_cache_control(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_without_cache_control(v) for v in value]
    return value


def message_sha(message: Any) -> tuple[str, str]:
    """(sha, json) of one message; the sha ignores cache_control markers."""
    plain = to_jsonable(message)
    text = dumps(plain)
    sha = hashlib.sha256(dumps(_without_cache_control(plain)).encode()).hexdigest()
    return sha, text


@dataclass
class Head:
    """The conversation of a run's latest step, as this process last saw it."""

    step_id: int | None = None
    objects: list[Any] = field(default_factory=list)
    shas: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Delta:
    base_len: int
    new: list[dict[str, Any]]  # rows: position, role, content, sha
    objects: list[Any]
    shas: list[str]


def delta(head: Head, messages: Sequence[Any]) -> Delta:
    """Which of `messages` the store does not have yet, relative to the run's head step."""
    common = 0
    shas: list[str] = []
    limit = min(len(head.objects), len(messages))
    while common < limit:
        candidate = messages[common]
        if candidate is head.objects[common]:
            shas.append(head.shas[common])
        else:
            sha, _ = message_sha(candidate)
            if sha != head.shas[common]:
                break
            shas.append(sha)
        common += 1
    new_rows: list[dict[str, Any]] = []
    for position in range(common, len(messages)):
        sha, text = message_sha(messages[position])
        shas.append(sha)
        role = messages[position].get("role") if isinstance(messages[position], Mapping) else None
        new_rows.append({"position": position, "role": role, "content": text, "sha": sha})
    return Delta(base_len=common, new=new_rows, objects=list(messages), shas=shas)


def request_blob(params: Mapping[str, Any]) -> tuple[str, str]:
    """(sha, json) of everything but the messages that shapes a request: system, tools, limits."""
    kept = {k: to_jsonable(v) for k, v in params.items() if k not in _NOT_STORED}
    text = dumps(kept)
    return hashlib.sha256(text.encode()).hexdigest(), text
