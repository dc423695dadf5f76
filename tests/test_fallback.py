"""Fallback across tiers and providers, through the real SDKs against the fake provider."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import anthropic
import openai
import pytest
from anthropic.types import Message
from openai.types.chat import ChatCompletion

import agentguard
from agentguard.breaker import BreakerSettings
from agentguard.clock import FakeClock
from agentguard.store import Store
from agentguard.testing import ToolCall, Turn, error, overloaded
from tests.conftest import API_KEY, ATTEMPTS, storm, user

OPUS, SONNET, GPT = "claude-opus-4-7", "claude-sonnet-4-6", "gpt-5.5"


@pytest.fixture
def openai_route(fake, monkeypatch) -> dict:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-test-key")
    return {"provider": "openai", "model": GPT, "base_url": fake.openai_base_url}


@pytest.fixture
def chain(openai_route) -> list:
    return [f"anthropic:{OPUS}", f"anthropic:{SONNET}", openai_route]


def ask(client, messages=None, **kw):
    return client.messages.create(
        model=OPUS, max_tokens=256, messages=messages or [user("fix the bug")], **kw
    )


def models_asked(fake) -> list[str]:
    return [r.model for r in fake.requests]


def events(home: Path, kind: str) -> list[dict]:
    rows = Store.open(home).query("select * from events where kind = ? order by id", [kind])
    return [json.loads(r["detail"]) | {"step_id": r["step_id"]} for r in rows]


def test_opus_overloaded_sonnet_serves_recorded_and_announced(fake, guarded, chain, home):
    fake.script(*storm(), model=OPUS)
    announced = []
    client = guarded(chain=chain, on_substitution=announced.append)
    msg = ask(client)
    assert isinstance(msg, Message)
    info = agentguard.info(msg)
    assert (info.requested_model, info.served_model, info.substituted) == (OPUS, SONNET, True)
    assert info.reason == f"{OPUS}: 529 overloaded_error ×{ATTEMPTS}"
    assert [a.model for a in info.attempts] == [OPUS] * ATTEMPTS + [SONNET]
    assert announced == [info]
    step = Store.open(home).get_step(info.step_id)
    assert (step["substituted"], step["served_model"], step["reason"]) == (1, SONNET, info.reason)
    [event] = events(home, "substitution")
    assert event["requested"] == f"anthropic:{OPUS}" and event["served"] == f"anthropic:{SONNET}"


def test_allow_records_the_substitution_without_calling_back(fake, guarded, chain, home):
    fake.script(*storm(), model=OPUS)
    announced = []
    client = guarded(chain=chain, policy="support_bot", on_substitution=announced.append)
    assert agentguard.info(ask(client)).substituted
    assert announced == [] and len(events(home, "substitution")) == 1


def tool_loop_model(request):
    """A scripted model: ask for a tool until a tool result is in the conversation."""
    if "tool result" in json.dumps(request.body):
        return Turn(text="done")
    return Turn(text="reading", tool_calls=[ToolCall("read_file", {"path": "app.py"})])


def test_all_claude_routes_down_openai_serves_a_tool_step_and_claude_comes_back(
    fake, guarded, chain, clock, home
):
    fake.set_model(tool_loop_model)
    for model in (OPUS, SONNET):
        fake.script(*storm(), model=model)
    client = guarded(chain=chain)
    tools = [{"name": "read_file", "description": "read", "input_schema": {"type": "object"}}]
    conversation = [user("fix the bug")]
    first = ask(client, conversation, tools=tools)
    info = agentguard.info(first)
    assert isinstance(first, Message) and info.served_provider == "openai"
    assert info.served_model == GPT and first.stop_reason == "tool_use"
    call = first.content[-1]
    assert (call.type, call.name, call.input) == ("tool_use", "read_file", {"path": "app.py"})
    openai_request = fake.requests[-1]
    assert openai_request.api == "openai" and openai_request.body["tools"][0]["type"] == "function"

    conversation += [
        {"role": "assistant", "content": first.content},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "tool result"}],
        },
    ]
    clock.advance(60)  # Claude recovered meanwhile; any open breaker is due for a probe
    second = ask(client, conversation, tools=tools)
    info2 = agentguard.info(second)
    assert (info2.served_model, info2.substituted) == (OPUS, False)
    assert second.content[0].text == "done"
    sent = fake.requests[-1]
    assert sent.api == "anthropic" and sent.model == OPUS
    tool_use = sent.body["messages"][1]["content"][-1]
    tool_result = sent.body["messages"][2]["content"][0]
    assert tool_use["type"] == "tool_use" and tool_result["tool_use_id"] == tool_use["id"]


def test_forbid_never_changes_route_and_queues_the_run(fake, guarded, chain, home, clock):
    fake.script(*[overloaded() for _ in range(10)], model=OPUS)
    client = guarded(chain=chain, policy="high_stakes")
    with pytest.raises(agentguard.RunQueued, match=r"forbids substitution; resume it with") as e:
        ask(client)
    assert set(models_asked(fake)) == {OPUS}
    run = Store.open(home).get_run(client.run_id)
    assert run["status"] == "waiting" and e.value.run_id == client.run_id
    assert run["next_attempt_at"] == pytest.approx(
        clock.now() + client.agentguard.policy.queue_delay
    )


def test_a_400_on_the_primary_is_not_hidden_by_a_fallback(fake, guarded, chain):
    fake.script(error(400, message="messages: roles must alternate"), model=OPUS)
    with pytest.raises(anthropic.BadRequestError, match="roles must alternate") as caught:
        ask(guarded(chain=chain))
    assert models_asked(fake) == [OPUS]
    assert "request itself was rejected" in " ".join(caught.value.__notes__)


def test_a_long_429_moves_to_another_provider_instead_of_sleeping(fake, guarded, chain, clock):
    fake.script(error(429, retry_after=900), model=OPUS)
    msg = ask(guarded(chain=chain))
    info = agentguard.info(msg)
    assert info.served_provider == "openai" and clock.sleeps == []
    assert models_asked(fake) == [OPUS, GPT]  # Sonnet shares Opus's account quota: skipped
    assert "retry-after 900s does not fit" in info.reason
    assert "shares the rate-limited quota" in info.reason


def test_an_unusable_primary_key_falls_back_and_says_so(fake, guarded, chain):
    fake.script(error(401), model=OPUS)
    info = agentguard.info(ask(guarded(chain=chain)))
    assert info.served_model == SONNET and "401 authentication_error" in info.reason


def test_the_breaker_skips_an_overloaded_route_then_probes_it_once(fake, guarded, chain, clock):
    fake.script(*storm(3), model=OPUS)
    client = guarded(chain=chain, breaker=BreakerSettings(open_after=0.1, cooldown=5.0))
    ask(client)  # three 529s over > 0.1 s of backoff: the breaker opens
    assert client.agentguard.breaker.health(f"anthropic:{OPUS}").state == "open"
    before = len(fake.requests)
    assert agentguard.info(ask(client)).served_model == SONNET
    assert models_asked(fake)[before:] == [SONNET]  # skipped: not one request to Opus

    clock.advance(5.0)
    fake.script(overloaded(), model=OPUS)
    before = len(fake.requests)
    info = agentguard.info(ask(client))
    assert models_asked(fake)[before:] == [OPUS, SONNET]  # one probe, no retries
    assert "probe failed" in info.reason

    clock.advance(5.0)
    before = len(fake.requests)
    info = agentguard.info(ask(client))  # the probe succeeds: closed again
    assert (info.served_model, models_asked(fake)[before:]) == (OPUS, [OPUS])
    assert client.agentguard.breaker.health(f"anthropic:{OPUS}").state == "closed"


class DriftingClock(FakeClock):
    """While the step backs off, someone else edits the project (a concurrent writer)."""

    def __init__(self, target: Path) -> None:
        super().__init__()
        self.target = target

    def advance(self, seconds: float) -> None:
        super().advance(seconds)
        self.target.write_text("edited while the model call was retrying\n")
        (self.target.parent / "stray.txt").write_text("created mid-step\n")


def test_drift_is_kept_then_the_checkpoint_restored_before_a_route_change(
    fake, project, chain, home
):
    original = (project / "app.py").read_text()
    fake.script(*storm(), model=OPUS)
    client = agentguard.wrap(
        anthropic.Anthropic(base_url=fake.base_url, api_key=API_KEY),
        project=project,
        chain=chain,
        clock=DriftingClock(project / "app.py"),
        rng=random.Random(3),
    )
    info = agentguard.info(ask(client))
    assert info.served_model == SONNET
    assert (project / "app.py").read_text() == original
    assert not (project / "stray.txt").exists()
    [drift] = events(home, "drift_restored")
    assert drift["checkpoint"] == info.checkpoint and drift["route"] == f"anthropic:{SONNET}"
    shadow = client.agentguard.shadow
    kept = shadow.read_file(drift["drift_snapshot"], "app.py").decode()
    assert kept == "edited while the model call was retrying\n"
    assert shadow.read_file(drift["drift_snapshot"], "stray.txt") == b"created mid-step\n"
    client.agentguard.close()


def test_thinking_is_kept_for_claude_and_dropped_with_an_event_elsewhere(
    fake, guarded, chain, home
):
    history = [
        user("hi"),
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "let me think", "signature": "sig"},
                {"type": "text", "text": "hello"},
            ],
        },
        user("go on"),
    ]
    fake.script(*storm(), model=OPUS)
    client = guarded(chain=chain)
    ask(client, history)
    assert fake.requests[-1].body["messages"][1]["content"][0]["type"] == "thinking"
    for model in (OPUS, SONNET):
        fake.script(*storm(), model=model)
    info = agentguard.info(ask(client, history))
    assert info.served_provider == "openai"
    [dropped] = events(home, "translation_dropped")
    assert "thinking block" in dropped["dropped"]


def test_a_wrapped_openai_client_falls_back_to_claude_and_gets_a_chat_completion(
    fake, home, project, clock, monkeypatch
):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-fallback")
    fake.set_model(lambda r: Turn(text="", tool_calls=[ToolCall("run", {"cmd": "pytest"})]))
    fake.script(*storm(), model=GPT)
    client = agentguard.wrap(
        openai.OpenAI(base_url=fake.openai_base_url, api_key="sk-openai"),
        project=project,
        clock=clock,
        chain=[{"provider": "anthropic", "model": SONNET, "base_url": fake.base_url}],
    )
    tools = [{"type": "function", "function": {"name": "run", "parameters": {"type": "object"}}}]
    completion = client.chat.completions.create(
        model=GPT, messages=[{"role": "user", "content": "test it"}], tools=tools
    )
    assert isinstance(completion, ChatCompletion)
    call = completion.choices[0].message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == ("run", {"cmd": "pytest"})
    assert completion.choices[0].finish_reason == "tool_calls"
    info = agentguard.info(completion)
    assert (info.served_provider, info.served_model, info.substituted) == (
        "anthropic",
        SONNET,
        True,
    )
    stream = client.chat.completions.create(
        model=GPT, messages=[{"role": "user", "content": "again"}], stream=True
    )
    chunks = list(stream)
    assert isinstance(stream, openai.Stream) and chunks[-1].choices[0].finish_reason
    client.agentguard.close()


def test_async_fallback(fake, guarded, chain):
    fake.script(*storm(), model=OPUS)

    async def main():
        client = guarded(asynchronous=True, chain=chain)
        return await client.messages.create(model=OPUS, max_tokens=9, messages=[user("x")])

    info = agentguard.info(asyncio.run(main()))
    assert info.served_model == SONNET and info.substituted


def test_a_streamed_step_served_by_openai_is_one_clean_anthropic_stream(fake, guarded, chain):
    for model in (OPUS, SONNET):
        fake.script(*storm(), model=model)
    fake.set_model(lambda r: Turn(text="translated answer"))
    with guarded(chain=chain).messages.stream(
        model=OPUS, max_tokens=9, messages=[user("x")]
    ) as stream:
        text = "".join(stream.text_stream)
    assert text == "translated answer"
    assert agentguard.info(stream).served_model == GPT


# -- routes and config ---------------------------------------------------------------------------


def anthropic_client(fake):
    return anthropic.Anthropic(base_url=fake.base_url, api_key=API_KEY)


@pytest.mark.parametrize(
    ("chain_", "message"),
    [
        (["mystery:model-x"], r"Unknown provider 'mystery'.*give the route a base_url"),
        ([f"anthropic:{OPUS}", f"anthropic:{OPUS}"], "appears twice in the chain"),
        (["deepseek:deepseek-v4-pro"], r"needs its API key in \$DEEPSEEK_API_KEY"),
        (["sonnet"], r"not of the form 'provider:model'"),
    ],
)
def test_bad_chains_fail_at_start_up(fake, project, chain_, message, monkeypatch):
    monkeypatch.delenv("DEEPSEEK_API_KEY", raising=False)
    with pytest.raises(agentguard.ConfigError, match=message):
        agentguard.wrap(anthropic_client(fake), project=project, chain=chain_)


def test_known_providers_work_by_name(fake, project, monkeypatch):
    monkeypatch.setenv("OPENROUTER_API_KEY", "x")
    client = agentguard.wrap(
        anthropic_client(fake), project=project, chain=["openrouter:deepseek/deepseek-v4-pro"]
    )
    [route] = client.agentguard.chain
    assert (route.kind, route.base_url, route.api_key_env) == (
        "openai",
        "https://openrouter.ai/api/v1",
        "OPENROUTER_API_KEY",
    )
    client.agentguard.close()


def test_the_chain_and_policy_come_from_pyproject(fake, project, monkeypatch):
    monkeypatch.setenv("GATEWAY_KEY", "x")
    (project / "pyproject.toml").write_text(
        "[tool.agentguard]\n"
        'policy = { preset = "public_chat", max_attempts = 2 }\n'
        f'chain = ["anthropic:{OPUS}", "anthropic:{SONNET}", "gateway:deepseek-v4-pro"]\n'
        "[tool.agentguard.providers.gateway]\n"
        'kind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\napi_key_env = "GATEWAY_KEY"\n'
    )
    client = agentguard.wrap(anthropic_client(fake), project=project)
    guard = client.agentguard
    assert (guard.policy.name, guard.policy.max_attempts) == ("public_chat", 2)
    assert [r.key for r in guard.chain] == [
        f"anthropic:{OPUS}",
        f"anthropic:{SONNET}",
        "gateway:deepseek-v4-pro",
    ]
    guard.close()


def test_an_invalid_config_file_names_the_field(fake, project):
    (project / "agentguard.toml").write_text('policy = "coding_agent"\nretries = 3\n')
    with pytest.raises(agentguard.ConfigError, match=r"unknown field 'retries'.*chain"):
        agentguard.wrap(anthropic_client(fake), project=project)
    (project / "agentguard.toml").write_text("chain = [\n")
    with pytest.raises(agentguard.ConfigError, match=r"agentguard.toml is not valid TOML"):
        agentguard.wrap(anthropic_client(fake), project=project)


def test_a_library_step_that_crosses_providers_is_fitted_to_the_route(
    fake, guarded, home, monkeypatch
):
    """The library's fallback sends another provider only what it accepts, like the proxy:
    max_tokens clamped to the model's output limit, DeepSeek's thinking mode turned off
    (through the SDK's extra_body), each change named in the step's translation_dropped."""
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-deepseek-test-key")
    monkeypatch.setenv("GEMINI_API_KEY", "gemini-test-key")
    gemini = {"provider": "gemini", "model": "gemini-2.5-pro", "base_url": fake.openai_base_url}
    deepseek = {
        "provider": "deepseek",
        "model": "deepseek-v4-pro",
        "base_url": fake.openai_base_url,
    }
    tools = [
        {
            "name": "read_file",
            "description": "read",
            "input_schema": {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "object",
                "properties": {"path": {"type": "string"}},
                "additionalProperties": False,
            },
        }
    ]
    fake.script(*storm(), model=OPUS)
    client = guarded(chain=[f"anthropic:{OPUS}", gemini])
    answer = client.messages.create(
        model=OPUS, max_tokens=128000, messages=[user("fix the bug")], tools=tools
    )
    assert agentguard.info(answer).served_model == "gemini-2.5-pro"
    sent = fake.requests[-1].body
    assert sent["max_tokens"] == 65536
    schema = sent["tools"][0]["function"]["parameters"]
    assert "$schema" not in schema and "additionalProperties" not in schema
    [dropped] = events(home, "translation_dropped")
    assert any("65536" in note for note in dropped["dropped"])

    fake.script(*storm(), model=OPUS)
    client = guarded(chain=[f"anthropic:{OPUS}", deepseek])
    client.messages.create(model=OPUS, max_tokens=1024, messages=[user("again")])
    sent = fake.requests[-1].body
    assert sent["thinking"] == {"type": "disabled"} and sent["model"] == "deepseek-v4-pro"
