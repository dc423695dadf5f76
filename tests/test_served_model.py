"""The truth comes from the response: a model swapped on the same route is a substitution, and
a person may refuse one — the answer is kept, the run waits, and `--accept` hands it over."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from anthropic import Anthropic
from openai import OpenAI

import agentguard
from agentguard.cli import main
from agentguard.store import DB_NAME, Store
from agentguard.testing import FakeProvider, Turn, ok
from tests.conftest import API_KEY, storm, user
from tests.test_tui import banner, make_app, open_run, run, table, until

OPUS, SONNET, HAIKU = "claude-opus-4-7", "claude-sonnet-4-6", "claude-haiku-4-5"


def ask(client, model: str = OPUS, **extra):
    return client.messages.create(model=model, max_tokens=64, messages=[user("fix it")], **extra)


def events(home: Path, kind: str) -> list[dict]:
    rows = Store.open(home).query("select * from events where kind = ? order by id", [kind])
    return [json.loads(r["detail"]) for r in rows]


def only_step(home: Path) -> dict:
    [step] = Store.open(home).query("select * from steps")
    return step


# -- 1. a model swapped on the same route -------------------------------------------------------


def test_a_same_route_swap_is_announced_like_any_substitution(fake, guarded, home, caplog):
    fake.script(ok(served_model=HAIKU), model=OPUS)
    told = []
    client = guarded(on_substitution=told.append)
    message = ask(client)
    info = agentguard.info(message)
    assert (info.requested_model, info.served_model, info.substituted) == (OPUS, HAIKU, True)
    assert info.reason == (
        f"served by {HAIKU} instead of {OPUS} — the provider answered with another model"
    )
    assert told == [info]
    step = only_step(home)
    assert (step["substituted"], step["served_model"], step["reason"]) == (1, HAIKU, info.reason)
    [event] = events(home, "substitution")
    assert event["served"] == f"anthropic:{HAIKU}" and event["requested"] == f"anthropic:{OPUS}"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_swap_in_a_stream_is_seen_too(fake, guarded, home, stream):
    fake.script(ok(served_model=HAIKU), model=OPUS)
    client = guarded()
    if stream:
        with client.messages.stream(model=OPUS, max_tokens=64, messages=[user("x")]) as s:
            s.get_final_message()
            info = agentguard.info(s)
    else:
        info = agentguard.info(ask(client))
    assert info.substituted and info.served_model == HAIKU


def test_a_dated_id_of_the_same_model_is_not_a_substitution(fake, guarded, home):
    fake.script(ok(served_model="claude-sonnet-4-5-20250929"), model="claude-sonnet-4-5")
    info = agentguard.info(ask(guarded(), model="claude-sonnet-4-5"))
    assert not info.substituted and info.reason is None
    assert events(home, "substitution") == []


def test_an_openai_gateway_swap_is_a_substitution(fake, home, project, clock):
    fake.script(ok(served_model="gpt-4o-mini-2024-07-18"), model="gpt-4o")
    raw = OpenAI(base_url=fake.openai_base_url, api_key=API_KEY)
    client = agentguard.wrap(raw, project=project, clock=clock)
    completion = client.chat.completions.create(model="gpt-4o", messages=[user("x")])
    info = agentguard.info(completion)
    assert info.substituted and info.served_model == "gpt-4o-mini-2024-07-18"
    assert "the provider answered with another model" in info.reason
    client.agentguard.close()


def test_under_forbid_a_swapped_answer_is_not_handed_over(fake, guarded, home):
    fake.script(ok(Turn(text="haiku's answer"), served_model=HAIKU), model=OPUS)
    client = guarded(policy="high_stakes")
    with pytest.raises(agentguard.RunQueued, match="--accept") as queued:
        ask(client)
    assert queued.value.next_attempt_at is not None
    step = only_step(home)
    assert step["status"] == "refused" and "forbids substitution" in step["error"]
    assert "haiku's answer" in step["response"]  # kept: it was paid for
    run = Store.open(home).get_run(client.run_id)
    assert run["status"] == "waiting" and run["next_attempt_at"]


# -- 2. a person refuses a substitution ----------------------------------------------------------


def refusing_run(fake: FakeProvider, guarded, how: str):
    fake.script(*storm(), model=OPUS)
    fake.script(ok(Turn(text="sonnet's answer")), model=SONNET)

    def callback(info: agentguard.StepInfo):
        if how == "raise":
            raise agentguard.Refuse("high-stakes change: a person reviews fallbacks")
        return agentguard.Refuse("high-stakes change: a person reviews fallbacks")

    client = guarded(chain=[f"anthropic:{OPUS}", f"anthropic:{SONNET}"], on_substitution=callback)
    with pytest.raises(agentguard.RunQueued, match="refused"):
        ask(client)
    client.agentguard.close()
    return client.run_id


@pytest.mark.parametrize("how", ["return", "raise"])
def test_a_refused_substitution_queues_the_run_and_keeps_the_answer(fake, guarded, home, how):
    run_id = refusing_run(fake, guarded, how)
    step = only_step(home)
    assert step["status"] == "refused" and step["served_model"] == SONNET
    assert "a person reviews fallbacks" in step["error"]
    assert "sonnet's answer" in step["response"]
    run = Store.open(home).get_run(run_id)
    assert run["status"] == "waiting"
    assert [e["reason"] for e in events(home, "substitution_refused")] == [
        "high-stakes change: a person reviews fallbacks"
    ]


def test_resume_accept_hands_over_the_kept_answer_without_a_new_request(
    fake, guarded, home, project
):
    run_id = refusing_run(fake, guarded, "return")
    sent = len(fake.requests)
    resumed = agentguard.resume(run_id, accept=True)
    assert len(fake.requests) == sent  # nothing asked again
    assert resumed.response is not None
    assert resumed.response["content"][0]["text"] == "sonnet's answer"
    assert resumed.messages[-1] == {"role": "assistant", "content": resumed.response["content"]}
    assert only_step(home)["status"] == "ok"
    assert len(events(home, "substitution_accepted")) == 1


def test_resume_accept_from_the_cli(fake, guarded, home, capsys):
    run_id = refusing_run(fake, guarded, "return")
    sent = len(fake.requests)
    capsys.readouterr()
    assert main(["resume", run_id, "--accept", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(fake.requests) == sent
    assert "sonnet's answer" in json.dumps(doc)
    assert only_step(home)["status"] == "ok"
    # nothing left to accept: one sentence
    assert main(["resume", run_id, "--accept"]) == 2
    err = capsys.readouterr().err
    assert "no refused substitution to accept" in err and "Traceback" not in err


def test_plain_resume_asks_the_primary_again(fake, guarded, home):
    run_id = refusing_run(fake, guarded, "return")
    resumed = agentguard.resume(run_id)
    assert resumed.response is None
    assert resumed.messages == [user("fix it")]
    fake.script(ok(Turn(text="opus is back")), model=OPUS)
    client = resumed.wrap(Anthropic(base_url=fake.base_url, api_key=API_KEY))
    message = client.messages.create(**resumed.request())
    info = agentguard.info(message)
    assert info.served_model == OPUS and not info.substituted
    assert message.content[0].text == "opus is back"
    client.agentguard.close()


def test_a_refusal_under_allow_is_never_asked(fake, guarded, home):
    """`allow` records substitutions without calling back: nothing to refuse."""
    fake.script(*storm(), model=OPUS)
    called = []
    client = guarded(
        chain=[f"anthropic:{OPUS}", f"anthropic:{SONNET}"],
        policy="support_bot",
        on_substitution=lambda info: called.append(info) or agentguard.Refuse("no"),
    )
    assert agentguard.info(ask(client)).substituted
    assert called == [] and only_step(home)["status"] == "ok"


def test_the_cli_shows_a_refused_step(fake, guarded, home, capsys):
    run_id = refusing_run(fake, guarded, "return")
    capsys.readouterr()
    assert main(["show", run_id]) == 0
    out = capsys.readouterr().out
    assert "refused" in out and SONNET in out
    assert os.environ.get("AGENTGUARD_HOME") == str(home)


def test_watch_shows_a_refused_step_and_a_accepts_it(fake, guarded, home):
    run_id = refusing_run(fake, guarded, "return")
    accepted: list[str] = []

    async def scenario():
        app = make_app(home / DB_NAME)
        async with app.run_test(size=(80, 24)) as pilot:
            await open_run(pilot, app, run_id)
            steps = table(app, "#steps")
            await until(pilot, lambda: len(steps.keys) == 1, "the step")
            await until(pilot, lambda: "refused" in banner(app, "#step-banner"), "the banner")
            assert "press a to accept" in banner(app, "#step-banner")
            await pilot.press("a")
            await until(
                pilot,
                lambda: only_step(home)["status"] == "ok",
                "the step accepted in the store",
            )
            await until(pilot, lambda: "refused" not in banner(app, "#step-banner"), "a reload")
            accepted.append(banner(app, "#step-banner"))

    run(scenario)
    assert accepted and "served by" in accepted[0]
    assert len(events(home, "substitution_accepted")) == 1
    sent = len(fake.requests)
    resumed = agentguard.resume(run_id)  # a plain resume now hands the accepted answer over
    assert len(fake.requests) == sent
    assert resumed.response["content"][0]["text"] == "sonnet's answer"
