"""Conversation checkpoints that cost O(new messages), not O(conversation).

Each step stores only the messages its conversation adds to its parent's, and how many of the
parent's messages it keeps (`base_len`): an agent that edits or compacts its history just keeps
fewer. Messages the caller passes again as the very same objects are not re-hashed; agentguard
assumes a message it has already checkpointed is not mutated in place afterwards (cache_control
markers, which agents move around, are ignored when comparing).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from agentguard.store import dumps

# The request parameters the store keeps: what shapes the model's answer and a resumed run
# must send again (Anthropic Messages and OpenAI Chat Completions names). Anything else is
# dropped by name: credentials ride in extra_body/extra_headers/extra_query, mcp_servers carry
# tokens, metadata, user and user_profile_id identify people, container and workspace_id name
# account resources, and an unknown key may be anything.
_STORED = frozenset(
    {
        # both APIs
        "system",
        "tools",
        "tool_choice",
        "max_tokens",
        "temperature",
        "top_p",
        "service_tier",
        # Anthropic Messages
        "top_k",
        "stop_sequences",
        "thinking",
        "betas",
        "context_management",
        "output_config",
        "output_format",
        "cache_control",
        "inference_geo",
        "speed",
        # OpenAI Chat Completions
        "max_completion_tokens",
        "stop",
        "seed",
        "n",
        "response_format",
        "reasoning_effort",
        "verbosity",
        "parallel_tool_calls",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "modalities",
        "audio",
        "prediction",
        "web_search_options",
        "functions",
        "function_call",
    }
)
# Stored elsewhere (model, messages) or a property of the call, not of the conversation.
_NOT_PARAMS = frozenset({"model", "messages", "stream"})
# Where a request blob lists the parameters it dropped; never sent back to a provider.
DROPPED_KEY = "_dropped"


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
        candidate, known = messages[common], head.objects[common]
        # the same object, or an equal one (a proxy parses every request anew): no re-hash
        if candidate is known or (type(candidate) is dict and candidate == known):
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
    """(sha, json) of what shapes a request besides its messages: system, tools, limits.

    Only allow-listed parameters are kept, so a secret in a parameter agentguard does not know
    is never stored; the names of the others are listed under DROPPED_KEY.

    An agent sends the same tools and system prompt on every turn (Claude Code's are ~40 KB):
    walking and sorting them again costs ~0.4 ms a request, so the blobs of the last few
    shapes are kept, found by orjson's sorted bytes of the same values (1, 1.0 and true
    differ there, as in the stored JSON) and equal values (NaN and None do not, which orjson
    writes alike), ~0.05 ms.
    """
    raw = {k: v for k, v in params.items() if k in _STORED}
    dropped = sorted(str(k) for k in params if k not in _STORED and k not in _NOT_PARAMS)
    try:
        key: bytes | None = orjson.dumps([raw, dropped], option=orjson.OPT_SORT_KEYS)
    except TypeError:  # SDK objects, keys that are not strings, integers past 64 bits
        key = None
    if key is not None and (known := _RECENT_BLOBS.get(key)) is not None and known[0] == raw:
        return known[1]
    kept: dict[str, Any] = {k: to_jsonable(v) for k, v in raw.items()}
    if dropped:
        kept[DROPPED_KEY] = dropped
    text = dumps(kept)
    blob = hashlib.sha256(text.encode()).hexdigest(), text
    if key is not None:
        _RECENT_BLOBS.put(key, (raw, blob))
    return blob


class _Recent:
    """The last few request shapes' blobs, oldest dropped first; shared by threads."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._blobs: dict[bytes, tuple[dict[str, Any], tuple[str, str]]] = {}
        self._lock = threading.Lock()

    def get(self, key: bytes) -> tuple[dict[str, Any], tuple[str, str]] | None:
        return self._blobs.get(key)

    def put(self, key: bytes, entry: tuple[dict[str, Any], tuple[str, str]]) -> None:
        with self._lock:
            self._blobs[key] = entry
            while len(self._blobs) > self._size:
                del self._blobs[next(iter(self._blobs))]


# a proxy interleaves a few agents (the main one, sub-agents, side requests): a few shapes
_RECENT_BLOBS = _Recent(8)


def stored_params(blob: Mapping[str, Any] | None) -> dict[str, Any]:
    """A stored request blob as keyword arguments for the SDK again (without DROPPED_KEY)."""
    return {k: v for k, v in (blob or {}).items() if k != DROPPED_KEY}
