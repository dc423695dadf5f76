"""Is the model that answered the model that was asked for?

Providers and gateways name one model many ways: a dated snapshot (`claude-sonnet-4-5` →
`claude-sonnet-4-5-20250929`, `gpt-4o` → `gpt-4o-2024-08-06`), an alias (`-latest`), an
aggregator's spelling (OpenRouter's `anthropic/claude-opus-4.7`, with `:beta`/`:free` variants),
a cloud's (Bedrock's `us.anthropic.claude-sonnet-4-5-20250929-v1:0`, Vertex's
`claude-opus-4-1@20250805`). Those are the same model. Another family, tier, size or version
is not: `claude-haiku-4-5` for `claude-opus-4-7`, `gpt-4o-mini` for `gpt-4o`, `claude-opus-4-1`
for `claude-opus-4-7`. `same_model` is the one place that rule lives.
"""

from __future__ import annotations

import re
from functools import lru_cache

_REGION = re.compile(r"^(?:us|eu|apac|global|us-gov)\.(?=[a-z]+\.)")  # Bedrock profiles
_PATH = re.compile(r"^.*/")  # OpenRouter / LiteLLM / Together: "anthropic/", "openai/"
_VENDOR = re.compile(r"^(?:anthropic|openai|meta|mistral|cohere|amazon|deepseek)\.")  # Bedrock
_SUFFIXES = (
    re.compile(r":[a-z0-9-]+$"),  # OpenRouter variants (":beta", ":free"), Bedrock ":0"
    re.compile(r"-v\d+$"),  # Bedrock "-v1" (once ":0" is gone)
    re.compile(r"@\d{8}$"),  # Vertex "@20250805"
    re.compile(r"-\d{8}$"),  # Anthropic "-20250929"
    re.compile(r"-\d{4}-\d{2}-\d{2}$"),  # OpenAI "-2024-08-06"
    re.compile(r"-(?:latest)$"),  # a moving alias of the same model
)
_CLAUDE_DOT = re.compile(r"(?<=\d)\.(?=\d)")  # OpenRouter's "claude-opus-4.7"
_CLAUDE_ZERO = re.compile(r"^(claude-(?:opus|sonnet|haiku)-\d+)-0$")  # "claude-opus-4-0"


@lru_cache(maxsize=256)  # asked twice per step, about the same few models all day
def canonical(model: str) -> str:
    """A model id without vendor prefixes, dates, deployment versions or aliases."""
    name = _VENDOR.sub("", _PATH.sub("", _REGION.sub("", model.strip().lower())))
    changed = True
    while changed:
        changed = False
        for suffix in _SUFFIXES:
            shorter = suffix.sub("", name)
            if shorter != name and shorter:
                name, changed = shorter, True
    if name.startswith("claude"):
        name = _CLAUDE_ZERO.sub(r"\1", _CLAUDE_DOT.sub("-", name))
    return name


def same_model(requested: str, served: str | None) -> bool:
    """True when `served` names the model `requested` names (or the answer named none)."""
    if not served:
        return True
    return canonical(requested) == canonical(served)
