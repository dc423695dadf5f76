"""Policies are plain validated values; bad ones are refused with one sentence."""

from __future__ import annotations

import random

import pytest

from agentguard.errors import ConfigError
from agentguard.policy import PRESETS, Policy, resolve_policy

EXPECTED = {"internal_script", "public_chat", "coding_agent", "batch", "support_bot", "high_stakes"}


def test_the_six_presets_exist_and_coding_agent_is_the_default() -> None:
    assert set(PRESETS) == EXPECTED
    assert resolve_policy(None).name == "coding_agent"
    assert resolve_policy(None).substitution == "announce"


def test_presets_follow_the_app_type_table() -> None:
    assert PRESETS["high_stakes"].substitution == "forbid"
    assert PRESETS["batch"].substitution == "forbid"
    assert PRESETS["internal_script"].substitution == "forbid"
    assert PRESETS["support_bot"].substitution == "allow"
    assert 3 <= PRESETS["coding_agent"].max_attempts <= 5  # 2 to 4 retries
    assert 3 <= PRESETS["public_chat"].max_attempts <= 5
    assert 6 <= PRESETS["internal_script"].max_attempts <= 11  # 5 to 10 retries
    assert PRESETS["support_bot"].step_deadline < PRESETS["coding_agent"].step_deadline
    assert PRESETS["high_stakes"].step_deadline < PRESETS["coding_agent"].step_deadline


def test_overrides_and_dicts() -> None:
    policy = resolve_policy("high_stakes", max_attempts=5)
    assert (policy.name, policy.max_attempts, policy.substitution) == ("high_stakes", 5, "forbid")
    from_dict = resolve_policy({"preset": "batch", "base_delay": 0.1})
    assert (from_dict.name, from_dict.base_delay) == ("batch", 0.1)


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"preset .fast.; choose one of: .*high_stakes"):
        resolve_policy("fast")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"base_delay": -1}, r"base_delay must be greater than or equal to 0 \(got -1\)"),
        ({"max_delay": -0.5}, r"max_delay must be greater than or equal to 0"),
        ({"substitution": "maybe"}, r"substitution must be one of 'allow', 'announce' or 'forbid'"),
        ({"max_attempts": 0}, r"max_attempts must be greater than or equal to 1"),
        ({"retries": 3}, r"unknown field 'retries' \(allowed fields are .*max_attempts"),
        ({"base_delay": 5, "max_delay": 1}, r"max_delay must be at least base_delay"),
    ],
)
def test_invalid_values_name_the_field(override: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        resolve_policy("coding_agent", **override)
    assert str(caught.value).count("\n") == 0


def test_backoff_is_full_jitter_capped_and_exponential() -> None:
    policy = Policy(base_delay=0.5, max_delay=4.0)
    rng = random.Random(7)
    for retry, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        delays = [policy.backoff(retry, rng) for _ in range(300)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.9  # the whole range is used, not a fixed delay
        assert min(delays) < ceiling * 0.1
