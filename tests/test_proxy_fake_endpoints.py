"""The fake provider's endpoints the proxy forwards untouched: count_tokens and models."""

from __future__ import annotations

import anthropic
import pytest

from agentguard.testing import FakeProvider
from tests.conftest import API_KEY


def test_count_tokens_answers_what_the_usage_of_the_same_request_would_say(
    fake: FakeProvider,
) -> None:
    client = anthropic.Anthropic(base_url=fake.base_url, api_key=API_KEY, max_retries=0)
    messages = [{"role": "user", "content": "how many tokens is this?"}]
    counted = client.messages.count_tokens(model="claude-opus-4-7", messages=messages)
    assert counted.input_tokens > 0
    record = fake.requests[0]
    assert (record.path, record.reply, record.api) == (
        "/v1/messages/count_tokens",
        "ok",
        "anthropic",
    )
    assert API_KEY not in str(record.headers)


def test_models_are_listed_only_when_given() -> None:
    with FakeProvider(models=["claude-opus-4-7", "claude-sonnet-4-6"]) as fake:
        client = anthropic.Anthropic(base_url=fake.base_url, api_key=API_KEY, max_retries=0)
        assert [m.id for m in client.models.list()] == ["claude-opus-4-7", "claude-sonnet-4-6"]
    with FakeProvider() as fake:
        client = anthropic.Anthropic(base_url=fake.base_url, api_key=API_KEY, max_retries=0)
        with pytest.raises(anthropic.NotFoundError):
            client.models.list()
