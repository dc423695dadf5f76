"""What each provider accepts, so that a translated request is never one it rejects.

A fallback that sends another provider a request it refuses gets a 400 — which agentguard never
hides behind a further fallback (the request is wrong, not the route) — so the step fails
where it should have been served. The two APIs look alike, but each provider refuses something
the other side sends as a matter of course: Claude Code asks for 128000 output tokens, more
than Gemini's OpenAI-compatible endpoint allows; its tool schemas carry `$schema` and
`additionalProperties`, which Gemini's function declarations reject; OpenAI's GPT-5 models
refuse `stop` and `temperature`; Claude from Opus 4.7 on refuses `temperature`. `fit` makes a
translated request acceptable to its route and names every change, for the step's
`translation_dropped` event (`Served.notes`).

A route is identified by its provider name or by its base URL's host (`deepseek:…`, or a
gateway route pointed at api.deepseek.com); figures come from the providers' own docs, cited
where they are used. A model this module does not know is sent as it is.
"""

from __future__ import annotations

import copy
import re
from typing import Any
from urllib.parse import urlparse

from agentguard.model_ids import canonical
from agentguard.providers import gemini_schema
from agentguard.routes import Route

_MAX_FIELDS = ("max_completion_tokens", "max_tokens")
_SAMPLING = ("temperature", "top_p", "top_k")

# -- who is who ---------------------------------------------------------------------------------


def family(route: Route) -> str:
    """'anthropic', 'openai', 'deepseek', 'gemini', or '' for a provider without known limits."""
    host = (urlparse(route.base_url or "").hostname or "").lower()
    if route.kind == "anthropic":
        return "anthropic"
    if route.provider == "deepseek" or host == "deepseek.com" or host.endswith(".deepseek.com"):
        return "deepseek"
    if route.provider == "gemini" or host == "generativelanguage.googleapis.com":
        return "gemini"
    if route.provider == "openai" or host == "api.openai.com":
        return "openai"
    return ""


_CLAUDE = re.compile(r"^claude-([a-z]+)-(\d+)(?:-(\d{1,2}))?$")  # claude-opus-4-7, claude-sonnet-5
_CLAUDE_OLD = re.compile(r"^claude-(\d+)(?:-(\d))?-([a-z]+)$")  # claude-3-7-sonnet, claude-3-haiku


def claude_version(model: str) -> tuple[str, int, int] | None:
    """('opus', 4, 7) for claude-opus-4-7 (and its dated, Bedrock or Vertex spellings)."""
    name = canonical(model)
    if match := _CLAUDE.match(name):
        return match[1], int(match[2]), int(match[3] or 0)
    if match := _CLAUDE_OLD.match(name):
        return match[3], int(match[1]), int(match[2] or 0)
    return None


# -- output tokens ------------------------------------------------------------------------------


def max_output(route: Route) -> int | None:
    """The most output tokens the route's model may be asked for (None: not known here)."""
    name = canonical(route.model)
    kind = family(route)
    if kind == "anthropic":
        return _claude_max(claude_version(route.model))
    if kind == "deepseek":
        # https://api-docs.deepseek.com/quick_start/pricing — deepseek-v4-flash and -pro: "MAX
        # OUTPUT: MAXIMUM: 384K". The legacy names (retired 2026-07-24) had their V3.2 limits:
        # deepseek-chat "maximum 8K", deepseek-reasoner (thinking mode, guides/thinking_mode)
        # "max_tokens … Default to 32K, maximum to 64K".
        return {"deepseek-chat": 8_192, "deepseek-reasoner": 65_536}.get(name, 384_000)
    if kind == "gemini":
        # https://ai.google.dev/gemini-api/docs/models — "Output token limit 65,536" for 2.5
        # and later (Pro, Flash, Flash-Lite); 8,192 for 2.0 Flash and older.
        return 8_192 if name.startswith(("gemini-1", "gemini-2.0")) else 65_536
    if kind == "openai":
        return _openai_max(name)
    return None


def _claude_max(version: tuple[str, int, int] | None) -> int | None:
    # https://platform.claude.com/docs/en/about-claude/models/overview and each model's page:
    # Opus 4.6 and later, Sonnet 4.6 and later, the 5 family: "Max output: 128K tokens";
    # Sonnet 4.5, Haiku 4.5, Opus 4.5, Sonnet 4, Sonnet 3.7: 64K; Opus 4 and 4.1: 32K;
    # Haiku 3.5: 8,192; Haiku 3: 4,096.
    if version is None:
        return None
    tier, major, minor = version
    if (major, minor) >= (4, 6):
        return 128_000
    if major == 4:
        return 32_000 if tier == "opus" and minor < 5 else 64_000
    if (major, minor) == (3, 7):
        return 64_000
    if major == 3:
        return 8_192 if minor == 5 else 4_096
    return None


def _openai_max(name: str) -> int | None:
    # https://platform.openai.com/docs/models — gpt-5 and later (gpt-5.5 included): "128,000 max
    # output tokens"; o3 / o4-mini: 100,000; gpt-4.1: 32,768; gpt-4o: 16,384.
    if name.startswith("gpt-5"):
        return 128_000
    if re.match(r"^o\d", name):
        return 100_000
    if name.startswith("gpt-4.1"):
        return 32_768
    if name.startswith("gpt-4o"):
        return 16_384
    return None


def _reasoning_openai(name: str) -> bool:
    """GPT-5 and the o-series: reasoning models, which refuse `stop`, `temperature` and `top_p`
    ("Unsupported parameter: 'stop' is not supported with this model.") at their default
    reasoning effort."""
    return name.startswith("gpt-5") or bool(re.match(r"^o\d", name))


# -- fitting a request --------------------------------------------------------------------------


def fit(route: Route, body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The request body as `route` accepts it, and what was changed or left out (one note
    each). `body` is a translated request in the route's own wire format; it is not changed."""
    body = copy.deepcopy(body)
    notes: list[str] = []
    kind = family(route)
    _clamp(route, body, notes)
    if kind == "anthropic":
        _claude_sampling(route, body, notes)
    elif kind == "openai" and _reasoning_openai(canonical(route.model)):
        for name in ("stop", "temperature", "top_p"):
            if body.pop(name, None) is not None:
                notes.append(f"parameter {name} ({route.model} refuses it)")
    elif kind == "deepseek":
        _deepseek(route, body, notes)
    elif kind == "gemini":
        _gemini(body, notes)
    _few_stops(kind, body, notes)
    return body, notes


def _clamp(route: Route, body: dict[str, Any], notes: list[str]) -> None:
    limit = max_output(route)
    for field in _MAX_FIELDS:
        asked = body.get(field)
        if limit is not None and isinstance(asked, int) and asked > limit:
            body[field] = limit
            notes.append(f"{field} {asked} → {limit} ({route.model}'s maximum output)")


def _claude_sampling(route: Route, body: dict[str, Any], notes: list[str]) -> None:
    """From Opus 4.7 on, Claude refuses sampling parameters ("`temperature` is deprecated for
    this model", 400; https://platform.claude.com/docs/en/about-claude/models/whats-new-claude-4-7);
    Claude 4 models before it refuse temperature and top_p together ("temperature and top_p
    cannot both be specified for this model") — temperature is kept."""
    version = claude_version(route.model)
    if version is None:
        return
    _, major, minor = version
    if (major, minor) >= (4, 7):
        refused = _SAMPLING
    elif major == 4 and "temperature" in body:
        refused = ("top_p",)
    else:
        return
    for name in refused:
        if body.pop(name, None) is not None:
            notes.append(f"parameter {name} ({route.model} refuses it)")


def _deepseek(route: Route, body: dict[str, Any], notes: list[str]) -> None:
    """DeepSeek's thinking mode (on by default for deepseek-v4-*) answers with its chain of
    thought in `reasoning_content`, and then requires it back: "for turns that do perform tool
    calls, the reasoning_content must be fully passed back to the API in all subsequent
    requests … the API will return a 400 error" (https://api-docs.deepseek.com/guides/
    thinking_mode). A conversation another model held has no such content to give back, so the
    request asks for non-thinking mode (`thinking: {"type": "disabled"}`) — except from the
    legacy deepseek-reasoner, whose name is its thinking mode — and never carries a
    `reasoning_content` of its own (the legacy reasoner answered one with a 400 too)."""
    for message in body.get("messages") or []:
        if isinstance(message, dict) and message.pop("reasoning_content", None) is not None:
            notes.append("reasoning_content in the history")
    if canonical(route.model) != "deepseek-reasoner" and "thinking" not in body:
        body["thinking"] = {"type": "disabled"}
        notes.append(
            "thinking mode turned off (DeepSeek needs its own reasoning_content back after "
            "a tool call, which another model's conversation does not have)"
        )


def _gemini(body: dict[str, Any], notes: list[str]) -> None:
    removed: set[str] = set()
    for tool in body.get("tools") or []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and "parameters" in function:
            function["parameters"], gone = gemini_schema.clean(function["parameters"])
            removed.update(gone)
    if removed:
        notes.append(f"tool schema keys Gemini rejects: {', '.join(sorted(removed))}")


# At most this many stop sequences: https://platform.openai.com/docs/api-reference/chat/create
# ("Up to 4 sequences"); Gemini's stopSequences, "up to 5"
# (https://ai.google.dev/api/generate-content#generationconfig). Claude takes more.
_STOPS = {"openai": 4, "gemini": 5}


def _few_stops(kind: str, body: dict[str, Any], notes: list[str]) -> None:
    most = _STOPS.get(kind)
    stop = body.get("stop")
    if most is not None and isinstance(stop, list) and len(stop) > most:
        body["stop"] = stop[:most]
        notes.append(f"stop sequences after the first {most}")
