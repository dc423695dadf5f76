"""One rule for "is the model that answered the one that was asked for?", on real id pairs."""

from __future__ import annotations

import pytest

from agentguard.model_ids import canonical, same_model

SAME = [
    # Anthropic: aliases and their dated snapshots
    ("claude-sonnet-4-5", "claude-sonnet-4-5-20250929"),
    ("claude-opus-4-1", "claude-opus-4-1-20250805"),
    ("claude-haiku-4-5", "claude-haiku-4-5-20251001"),
    ("claude-opus-4-0", "claude-opus-4-20250514"),
    ("claude-3-5-sonnet-latest", "claude-3-5-sonnet-20241022"),
    ("claude-3-7-sonnet-latest", "claude-3-7-sonnet-20250219"),
    ("claude-opus-4-7", "claude-opus-4-7"),
    # OpenRouter (dots for versions, vendor path, variants)
    ("claude-opus-4-7", "anthropic/claude-opus-4.7"),
    ("claude-sonnet-4-5", "anthropic/claude-sonnet-4.5"),
    ("claude-3-5-sonnet-20241022", "anthropic/claude-3.5-sonnet:beta"),
    ("gpt-4o", "openai/gpt-4o"),
    ("deepseek-chat", "deepseek/deepseek-chat"),
    ("meta-llama/llama-3.1-70b-instruct", "meta-llama/llama-3.1-70b-instruct:free"),
    # AWS Bedrock and Google Vertex spellings of Claude
    ("claude-sonnet-4-5", "us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
    ("claude-3-5-sonnet-20240620", "anthropic.claude-3-5-sonnet-20240620-v1:0"),
    ("claude-opus-4-1", "claude-opus-4-1@20250805"),
    # OpenAI: aliases and dated snapshots
    ("gpt-4o", "gpt-4o-2024-08-06"),
    ("gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
    ("gpt-4.1", "gpt-4.1-2025-04-14"),
    ("o3", "o3-2025-04-16"),
    ("gpt-5", "gpt-5-2025-08-07"),
    ("chatgpt-4o-latest", "chatgpt-4o"),
    # the answer named no model at all
    ("claude-opus-4-7", ""),
    ("claude-opus-4-7", None),
]

DIFFERENT = [
    # another tier of the same family
    ("claude-opus-4-7", "claude-haiku-4-5"),
    ("claude-opus-4-7", "claude-sonnet-4-6"),
    ("claude-sonnet-4-5", "claude-haiku-4-5-20251001"),
    ("gpt-4o", "gpt-4o-mini"),
    ("gpt-4o", "gpt-4o-mini-2024-07-18"),
    ("gpt-5", "gpt-5-mini"),
    ("gpt-5", "gpt-5-nano-2025-08-07"),
    ("o3", "o3-mini"),
    # another version of the same tier
    ("claude-opus-4-7", "claude-opus-4-1"),
    ("claude-opus-4-1", "claude-opus-4-20250514"),
    ("claude-sonnet-4-5", "claude-sonnet-4-20250514"),
    ("claude-3-5-sonnet-20241022", "claude-3-7-sonnet-20250219"),
    ("gpt-4.1", "gpt-4o"),
    ("gpt-5.5", "gpt-5"),
    # another family or provider
    ("claude-opus-4-7", "anthropic/claude-haiku-4.5"),
    ("claude-opus-4-7", "gpt-5.5"),
    ("gpt-4o", "anthropic/claude-sonnet-4.5"),
    ("claude-sonnet-4-5", "us.anthropic.claude-3-7-sonnet-20250219-v1:0"),
    ("deepseek-chat", "deepseek-reasoner"),
]


@pytest.mark.parametrize(("requested", "served"), SAME)
def test_the_same_model_under_another_name_is_not_a_substitution(requested, served):
    assert same_model(requested, served)


@pytest.mark.parametrize(("requested", "served"), DIFFERENT)
def test_another_family_tier_or_version_is_a_substitution(requested, served):
    assert not same_model(requested, served)
    assert not same_model(served, requested)


def test_canonical_names():
    assert canonical("US.Anthropic.Claude-Sonnet-4-5-20250929-v1:0") == "claude-sonnet-4-5"
    assert canonical("anthropic/claude-opus-4.7") == "claude-opus-4-7"
    assert canonical("gpt-4.1-2025-04-14") == "gpt-4.1"
