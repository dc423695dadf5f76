"""A bad agentguard.toml is refused before the run starts, naming the file, every field that is
wrong and what each allows, in one sentence without pydantic's internals."""

from __future__ import annotations

from pathlib import Path

import anthropic
import pytest

import agentguard
from agentguard.config import load_config
from agentguard.errors import ConfigError
from agentguard.policy import resolve_policy
from tests.conftest import API_KEY

PYDANTIC_INTERNALS = (
    "policy.str",
    "dict[",
    "function-",
    "pydantic",
    "Input should",
    "[type=",
    "more problem(s)",
    "For further information",
)


def refusal(folder: Path, toml: str, name: str = "agentguard.toml") -> str:
    (folder / name).write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_config(folder)
    message = str(caught.value)
    assert message.count("\n") == 0, message
    for internal in PYDANTIC_INTERNALS:
        assert internal not in message, message
    assert str(folder / name) in message, message
    return message


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('snapshots = "yes"', 'snapshots must be true or false (got "yes")'),
        ("snapshots = 1", "snapshots must be true or false (got 1)"),
        (
            "policy = 5",
            "policy must be a preset name (internal_script, public_chat, coding_agent, batch, "
            "support_bot or high_stakes) or a table",
        ),
        ('policy = "fast"', "policy must be one of internal_script, "),
        ('policy = { preset = "fast" }', "policy.preset must be one of internal_script, "),
        ('policy = { max_attempts = "3" }', 'policy.max_attempts must be a whole number (got "3")'),
        (
            "policy = { max_attempts = true }",
            "policy.max_attempts must be a whole number (got true)",
        ),
        ('policy = { base_delay = "0.5" }', 'policy.base_delay must be a number (got "0.5")'),
        ('policy = { substitution = "maybe" }', "policy.substitution must be one of 'allow', "),
        ("policy = { retries = 3 }", "unknown field 'policy.retries' (allowed fields are "),
        ("policy = { base_delay = 5, max_delay = 1 }", "policy: max_delay must be at least"),
        ("max_file_bytes = true", "max_file_bytes must be a whole number (got true)"),
        ("max_file_bytes = 0", "max_file_bytes must be greater than 0 (got 0)"),
        ('chain = "anthropic:claude-opus-4-7"', "chain must be a list of routes such as"),
        ('chain = ["sonnet"]', "chain[0]: Route 'sonnet' is not of the form 'provider:model'"),
        ('chain = ["mystery:x"]', "chain[0]: Unknown provider 'mystery'"),
        ('providers = { gw = { kind = "grpc" } }', "providers.gw.kind must be one of 'anthropic'"),
        ("bogus = 1", "unknown field 'bogus' (allowed fields are chain, max_file_bytes, policy"),
    ],
)
def test_a_bad_value_is_refused_naming_file_field_and_what_is_allowed(
    tmp_path: Path, toml: str, expected: str
) -> None:
    assert expected in refusal(tmp_path, toml)


def test_every_problem_is_listed(tmp_path: Path) -> None:
    message = refusal(
        tmp_path,
        'snapshots = "yes"\nmax_file_bytes = -1\nbogus = 1\n'
        'policy = { max_attempts = "x" }\nchain = ["sonnet"]\n'
        'providers = { gw = { kind = "openai" } }\n',
    )
    assert message.startswith(f"Invalid config in {tmp_path / 'agentguard.toml'}: 6 problems: ")
    for part in (
        'snapshots must be true or false (got "yes")',
        "max_file_bytes must be greater than 0 (got -1)",
        "unknown field 'bogus'",
        'policy.max_attempts must be a whole number (got "x")',
        "chain[0]: Route 'sonnet'",
        "providers.gw.api_key_env is required",
    ):
        assert part in message, part


def test_pyproject_section_is_named(tmp_path: Path) -> None:
    message = refusal(tmp_path, "[tool.agentguard]\nsnapshots = 'no'\n", "pyproject.toml")
    assert "pyproject.toml [tool.agentguard]: snapshots must be true or false" in message


def test_good_values_still_load(tmp_path: Path) -> None:
    (tmp_path / "agentguard.toml").write_text(
        'policy = { preset = "batch", base_delay = 1, max_attempts = 3 }\n'
        'chain = ["anthropic:claude-opus-4-7", "gw:deepseek-v4-pro"]\n'
        "snapshots = false\nmax_file_bytes = 1048576\n"
        '[providers.gw]\nkind = "openai"\nbase_url = "http://127.0.0.1:4000/v1"\n'
        'api_key_env = "GW_KEY"\n'
    )
    config, path = load_config(tmp_path)
    assert path == tmp_path / "agentguard.toml"
    assert (config.snapshots, config.max_file_bytes) == (False, 1048576)
    assert resolve_policy(config.policy).base_delay == 1.0


def test_wrap_refuses_a_lax_boolean_before_the_run_starts(fake, project) -> None:
    (project / "agentguard.toml").write_text('snapshots = "yes"\n')
    client = anthropic.Anthropic(base_url=fake.base_url, api_key=API_KEY)
    with pytest.raises(ConfigError, match=r"agentguard.toml: snapshots must be true or false"):
        agentguard.wrap(client, project=project)


def test_policies_given_in_python_are_strict_too() -> None:
    with pytest.raises(ConfigError, match=r"max_attempts must be a whole number \(got \"3\"\)"):
        resolve_policy("coding_agent", max_attempts="3")
    with pytest.raises(ConfigError, match=r"2 problems: .*base_delay.*step_deadline"):
        resolve_policy("coding_agent", base_delay=True, step_deadline="soon")
