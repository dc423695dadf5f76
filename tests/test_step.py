"""The guarded step through the real anthropic SDK against the fake provider on loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anthropic
import pytest
from anthropic.types import Message

import agentguard
from agentguard import RetriesExhausted
from agentguard.store import Store
from agentguard.testing import (
    ToolCall,
    Turn,
    drop,
    error,
    midstream_error,
    ok,
    overloaded,
    stall,
)
from tests.conftest import API_KEY, ATTEMPTS, user

MODEL = "claude-opus-4-7"


def create(client, **kw):
    return client.messages.create(
        model=MODEL, max_tokens=256, messages=kw.pop("messages", [user("fix the bug")]), **kw
    )


def attempts_of(home: Path, step_id: int) -> list[dict]:
    return Store.open(home).attempts(step_id)


# -- the happy path ------------------------------------------------------------------------------


def test_a_step_returns_the_sdk_message_annotated_with_the_truth(guarded, fake, home) -> None:
    client = guarded()
    msg = create(client)
    assert isinstance(msg, Message)
    assert msg.content[0].text == "ok"
    info = agentguard.info(msg)
    assert (info.requested_model, info.served_model, info.substituted) == (MODEL, MODEL, False)
    assert info.served_provider == "anthropic"
    assert len(info.attempts) == 1 and info.attempts[0].outcome == "ok"
    assert info.request_id == fake.requests[0].request_id
    assert info.checkpoint and len(info.checkpoint) == 40
    step = Store.open(home).get_step(info.step_id)
    assert step["status"] == "ok" and step["checkpoint"] == info.checkpoint
    assert step["served_model"] == MODEL and step["input_tokens"] == msg.usage.input_tokens


def test_the_sdk_own_retries_are_off(fake, guarded) -> None:
    fake.script(overloaded(), overloaded())
    client = guarded(policy={"max_attempts": 1})
    with pytest.raises(RetriesExhausted):
        create(client)
    assert len(fake.requests) == 1  # the SDK's default of 2 retries would have sent 3


# -- one test per row of the classification table -----------------------------------------------


@pytest.mark.parametrize("status", [529, 500, 502, 503, 504])
def test_overload_and_server_errors_are_retried(fake, guarded, clock, status) -> None:
    fake.script(error(status))
    msg = create(guarded())
    info = agentguard.info(msg)
    assert [a.status_code for a in info.attempts] == [status, 200]
    assert info.attempts[0].outcome == "retry"
    assert len(clock.sleeps) == 1 and 0 <= clock.sleeps[0] <= 0.5
    assert info.attempts[1].slept_before == clock.sleeps[0]


def test_overload_midstream_is_retried_and_the_caller_sees_one_whole_answer(fake, guarded) -> None:
    fake.script(midstream_error(after_events=3, turn=Turn(text="half of an answer")))
    fake.script(ok(Turn(text="the whole answer")))
    client = guarded()
    with client.messages.stream(model=MODEL, max_tokens=64, messages=[user("hi")]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "the whole answer"
    assert final.content[0].text == "the whole answer"
    info = agentguard.info(stream)
    assert [(a.status_code, a.error_type) for a in info.attempts] == [
        (200, "overloaded_error"),
        (200, None),
    ]
    assert [r.reply for r in fake.requests] == ["midstream_error", "ok"]


def test_a_dropped_connection_is_retried(fake, guarded) -> None:
    fake.script(drop(after_events=2))
    stream = create(guarded(), stream=True)
    events = list(stream)
    assert isinstance(stream, anthropic.Stream)
    assert events[0].type == "message_start" and events[-1].type == "message_stop"
    attempts = agentguard.info(stream).attempts
    assert attempts[0].error_type == "connection_error" and attempts[1].outcome == "ok"


def test_a_stalled_stream_is_retried_after_the_read_timeout(fake, guarded) -> None:
    fake.script(stall(after_events=1))
    msg = create(guarded(timeout=0.2), stream=True)
    attempts = agentguard.info(msg).attempts
    assert attempts[0].error_type == "timeout" and attempts[1].outcome == "ok"


def test_429_waits_exactly_what_retry_after_ms_says(fake, guarded, clock) -> None:
    fake.script(error(429, retry_after_ms=1500, retry_after=2))
    msg = create(guarded())
    assert clock.sleeps == [1.5]
    assert [a.status_code for a in agentguard.info(msg).attempts] == [429, 200]


def test_429_longer_than_the_deadline_is_not_slept_through(fake, guarded, clock) -> None:
    fake.script(error(429, retry_after=600))
    with pytest.raises(RetriesExhausted, match=r"retry-after 600s does not fit"):
        create(guarded(policy={"step_deadline": 60}))
    assert clock.sleeps == [] and len(fake.requests) == 1


@pytest.mark.parametrize(
    ("reply", "sdk_error", "hint"),
    [
        (error(401), anthropic.AuthenticationError, "API key, permissions or billing"),
        (error(403), anthropic.PermissionDeniedError, "API key, permissions or billing"),
        (error(402), anthropic.APIStatusError, "API key, permissions or billing"),
        (
            error(429, error_code="enforced_spend_limit_reached", retry_after=1),
            anthropic.RateLimitError,
            "API key, permissions or billing",
        ),
        (error(404, "not_found_error"), anthropic.NotFoundError, "check the model name"),
        (error(400), anthropic.BadRequestError, "the request itself was rejected"),
        (error(413, "request_too_large"), anthropic.APIStatusError, "request itself was rejected"),
    ],
)
def test_request_and_account_errors_are_tried_exactly_once(
    fake, guarded, clock, home, reply, sdk_error, hint
) -> None:
    fake.script(reply)
    with pytest.raises(sdk_error) as caught:
        create(guarded())
    assert len(fake.requests) == 1 and clock.sleeps == []
    notes = " ".join(getattr(caught.value, "__notes__", []))
    assert hint in notes and fake.requests[0].request_id in notes
    run = Store.open(home).query("select status, last_error from runs")[0]
    assert run["status"] == "failed" and run["last_error"]


def test_x_should_retry_false_stops_retrying(fake, guarded) -> None:
    fake.script(overloaded(should_retry=False), overloaded())
    with pytest.raises(RetriesExhausted, match="x-should-retry: false"):
        create(guarded())
    assert len(fake.requests) == 1


def test_x_should_retry_true_retries_an_unlisted_status(fake, guarded) -> None:
    fake.script(error(418, "teapot_error", should_retry=True))
    msg = create(guarded())
    assert [a.status_code for a in agentguard.info(msg).attempts] == [418, 200]


# -- the figures the issue names -----------------------------------------------------------------


def test_529_three_times_then_success_records_four_attempts(fake, guarded, clock, home) -> None:
    fake.script(overloaded(), overloaded(), overloaded())
    msg = create(guarded())
    info = agentguard.info(msg)
    rows = attempts_of(home, info.step_id)
    assert [r["status_code"] for r in rows] == [529, 529, 529, 200]
    assert [r["request_id"] for r in rows] == [r.request_id for r in fake.requests]
    assert len(set(r["request_id"] for r in rows)) == 4
    assert [r["slept_before_ms"] for r in rows] == pytest.approx(
        [0.0] + [s * 1000 for s in clock.sleeps]
    )
    ceilings = [0.5, 1.0, 2.0]
    assert all(0 <= s <= c for s, c in zip(clock.sleeps, ceilings, strict=True))
    assert [r["outcome"] for r in rows] == ["retry", "retry", "retry", "ok"]


def test_529_forever_fails_bounded_naming_attempts_and_last_request_id(fake, guarded, clock):
    fake.script(*[overloaded() for _ in range(50)])
    with pytest.raises(RetriesExhausted) as caught:
        create(guarded())  # the default preset's attempts, no more
    assert len(fake.requests) == ATTEMPTS and len(clock.sleeps) == ATTEMPTS - 1
    last = fake.requests[-1].request_id
    assert f"after {ATTEMPTS} attempt(s)" in str(caught.value) and last in str(caught.value)
    assert caught.value.last_request_id == last and len(caught.value.attempts) == ATTEMPTS
    assert isinstance(caught.value.__cause__, anthropic.OverloadedError)


def test_the_step_deadline_bounds_the_total_wait(fake, guarded, clock) -> None:
    fake.script(*[overloaded() for _ in range(50)])
    client = guarded(
        policy={"max_attempts": 50, "base_delay": 4, "max_delay": 4, "step_deadline": 10}
    )
    with pytest.raises(RetriesExhausted, match="deadline"):
        create(client)
    assert sum(clock.sleeps) <= 10


def test_forbid_queues_the_run_when_retries_run_out(fake, guarded, home, clock) -> None:
    fake.script(*[overloaded() for _ in range(10)])
    with pytest.raises(agentguard.RunQueued) as caught:
        create(guarded(policy="high_stakes"))
    run = Store.open(home).get_run(caught.value.run_id)
    assert run["status"] == "waiting"
    assert run["next_attempt_at"] == pytest.approx(caught.value.next_attempt_at.timestamp())
    assert caught.value.next_attempt_at.timestamp() > clock.now()


# -- streaming faces and async -------------------------------------------------------------------


def test_create_stream_true_replays_one_clean_stream(fake, guarded) -> None:
    fake.script(midstream_error(after_events=4))
    stream = create(guarded(), stream=True)
    types = [event.type for event in stream]
    assert types.count("message_start") == 1 and types.count("message_stop") == 1


def test_tool_use_survives_the_stream_replay(fake, guarded) -> None:
    fake.set_model(lambda request: Turn(text="", tool_calls=[ToolCall("read_file", {"path": "a"})]))
    with guarded().messages.stream(model=MODEL, max_tokens=64, messages=[user("go")]) as stream:
        final = stream.get_final_message()
    block = final.content[-1]
    assert final.stop_reason == "tool_use" and block.input == {"path": "a"}


def test_the_async_client_is_guarded_the_same_way(fake, guarded, home) -> None:
    fake.script(overloaded(), overloaded())

    async def main():
        client = guarded(asynchronous=True)
        msg = await client.messages.create(model=MODEL, max_tokens=32, messages=[user("hi")])
        fake.script(midstream_error(after_events=2))
        async with client.messages.stream(model=MODEL, max_tokens=32, messages=[user("x")]) as s:
            text = "".join([t async for t in s.text_stream])
        return msg, s, text

    msg, stream, text = asyncio.run(main())
    assert isinstance(msg, Message)
    assert [a.status_code for a in agentguard.info(msg).attempts] == [529, 529, 200]
    assert text == "ok"
    assert len(agentguard.info(stream).attempts) == 2


# -- what is stored ------------------------------------------------------------------------------


def test_the_api_key_never_reaches_the_disk(fake, guarded, home) -> None:
    fake.script(overloaded())
    client = guarded()
    create(client)
    fake.script(error(400))
    with pytest.raises(anthropic.BadRequestError):
        create(client, messages=[user("again")])
    client.agentguard.close()
    secret = API_KEY.encode()
    files = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.name == "agentguard.db" for p in files)
    for path in files:
        assert secret not in path.read_bytes(), path
    assert all(secret.decode() not in str(r.headers) for r in fake.requests)


def test_a_step_checkpoint_stores_only_the_new_messages(fake, guarded, home) -> None:
    client = guarded()
    conversation = [user("fix the bug")]
    for turn in range(3):
        reply = create(client, messages=conversation)
        conversation = [
            *conversation,
            {"role": "assistant", "content": reply.content},
            user(f"tool result {turn}"),
        ]
    store = Store.open(home)
    steps = store.steps(client.run_id)
    per_step = [
        store.query("select count(*) as n from messages where step_id = ?", [s["id"]])[0]["n"]
        for s in steps
    ]
    assert per_step == [1, 2, 2]
    assert [s["base_len"] for s in steps] == [0, 1, 3]
    rebuilt = store.conversation(steps[-1]["id"])
    assert len(rebuilt) == 5 and rebuilt[-1] == user("tool result 1")
    assert rebuilt[1]["content"][0]["text"] == "ok"


def test_an_edited_history_is_stored_as_a_shorter_base(fake, guarded, home) -> None:
    client = guarded()
    first = [user("a"), {"role": "assistant", "content": "b"}, user("c")]
    create(client, messages=first)
    create(client, messages=[user("a"), user("summary of the rest")])
    store = Store.open(home)
    steps = store.steps(client.run_id)
    assert steps[1]["base_len"] == 1
    assert store.conversation(steps[1]["id"]) == [user("a"), user("summary of the rest")]


# -- bad input -----------------------------------------------------------------------------------


def test_bad_input_gets_one_clear_sentence(fake, home, tmp_path) -> None:
    client = anthropic.Anthropic(base_url=fake.base_url, api_key=API_KEY)
    cases = [
        (
            {"project": tmp_path / "nope"},
            agentguard.ProjectError,
            "does not exist; pass the folder",
        ),
        ({"policy": "fastest"}, agentguard.ConfigError, "choose one of"),
        ({"policy": {"base_delay": -1}}, agentguard.ConfigError, "base_delay must be greater"),
    ]
    for kwargs, exc_type, message in cases:
        kwargs.setdefault("project", tmp_path)
        with pytest.raises(exc_type, match=message) as caught:
            agentguard.wrap(client, **kwargs)
        assert "\n" not in str(caught.value)


def test_a_corrupt_store_stops_wrap_with_a_sentence_and_keeps_the_file(fake, home, tmp_path):
    home.mkdir(parents=True)
    (home / "agentguard.db").write_bytes(b"garbage" * 100)
    client = anthropic.Anthropic(base_url=fake.base_url, api_key=API_KEY)
    with pytest.raises(agentguard.StoreError, match="move it aside"):
        agentguard.wrap(client, project=tmp_path)
    assert (home / "agentguard.db").read_bytes() == b"garbage" * 100


def test_wrap_refuses_what_it_cannot_guard(tmp_path) -> None:
    with pytest.raises(agentguard.ConfigError, match=r"takes an anthropic\.Anthropic"):
        agentguard.wrap(object(), project=tmp_path)
