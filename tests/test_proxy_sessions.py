"""The proxy's runs: sessions, conversation lanes, sub-agents, credentials, the OpenAI front."""

# ruff: noqa: F811 - the `proxy` and `start` fixtures come from tests/test_proxy.py

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from agentguard.store import Store
from agentguard.testing import FakeProvider, ToolCall, Turn, ok, overloaded
from tests.conftest import API_KEY, ATTEMPTS, storm
from tests.test_proxy import OPUS, SESSION, ask, claude, proxy, start, steps  # noqa: F401
from tests.test_secrets import assert_stored_nowhere

AGENT = "x-claude-code-agent-id"
GPT = "gpt-5.5"


def post(proxy: Any, body: dict[str, Any], **headers: str) -> httpx2.Response:
    return httpx2.post(
        f"{proxy.url}/v1/messages",
        json=body,
        headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01", **headers},
        timeout=30,
    )


def turn(*texts: str) -> dict[str, Any]:
    """A conversation whose messages alternate user / assistant, ending with the user."""
    roles = ["user", "assistant"]
    messages = [{"role": roles[i % 2], "content": t} for i, t in enumerate(texts)]
    return {"model": OPUS, "max_tokens": 64, "messages": messages}


def events(home: Path, kind: str) -> list[dict[str, Any]]:
    store = Store.open(home)
    return [e for e in store.query("select * from events order by id") if e["kind"] == kind]


def test_sub_agents_record_into_the_sessions_run_each_in_its_own_lane(proxy, fake, home) -> None:
    session = {SESSION: "5e55-1"}
    assert post(proxy, turn("fix the bug"), **session).status_code == 200
    assert post(proxy, turn("explore the repo"), **session, **{AGENT: "agent-7"}).status_code == 200
    assert post(proxy, turn("fix the bug", "ok", "go on"), **session).status_code == 200
    main_1, sub_1, main_2 = steps(home)
    assert main_1["run_id"] == sub_1["run_id"] == main_2["run_id"]
    # the main conversation continues from its own last step, not from the sub-agent's
    assert (main_2["parent_id"], main_2["base_len"]) == (main_1["id"], 1)
    [marked] = events(home, "agent")
    assert marked["step_id"] == sub_1["id"]
    assert json.loads(marked["detail"])["agent_id"] == "agent-7"


def test_concurrent_requests_of_one_session_all_land_in_its_run(proxy, fake, home) -> None:
    def one(i: int) -> int:
        agent = {AGENT: f"agent-{i % 2}"} if i % 2 else {}
        body = {**turn(f"task {i % 3}"), "stream": i % 2 == 0}
        return post(proxy, body, **{SESSION: "5e55-2"}, **agent).status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(16))) == [200] * 16
    rows = steps(home)
    assert len(rows) == 16 and len({r["run_id"] for r in rows}) == 1
    assert sorted(r["number"] for r in rows) == list(range(1, 17))
    assert {r["status"] for r in rows} == {"ok"}


def test_without_a_session_id_the_turns_of_one_conversation_share_a_run(proxy, home) -> None:
    post(proxy, turn("first question"))
    post(proxy, turn("first question", "answer", "follow-up"))
    post(proxy, turn("another conversation"))
    one, two, other = steps(home)
    assert one["run_id"] == two["run_id"] != other["run_id"]


# -- credentials ----------------------------------------------------------------------------------


@pytest.fixture
def backup(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("BACKUP_KEY", "sk-backup-ENV-ONLY-0123456789")
    monkeypatch.setenv("ACCEPTED_KEY", API_KEY)
    with FakeProvider() as server:
        yield server


def backup_chain(backup: FakeProvider) -> list[Any]:
    route = {
        "provider": "backup",
        "model": "claude-backup-1",
        "kind": "anthropic",
        "base_url": backup.base_url,
        "api_key_env": "BACKUP_KEY",
    }
    return [f"anthropic:{OPUS}", route]


def test_an_env_keyed_fallback_serves_a_request_with_the_accepted_credential(
    start, fake, backup, home
) -> None:
    proxy = start(chain=backup_chain(backup), accept_key_envs=["ACCEPTED_KEY"])
    fake.script(*storm())
    message = claude(proxy).messages.create(**ask())
    assert message.model == "claude-backup-1"
    assert len(backup.requests) == 1
    assert_stored_nowhere(home, API_KEY, "sk-backup-ENV-ONLY-0123456789")


def test_a_request_without_the_accepted_credential_never_uses_env_keys(
    start, fake, backup, home
) -> None:
    proxy = start(chain=backup_chain(backup), accept_key_envs=["ACCEPTED_KEY"])
    fake.script(*storm())
    stranger = anthropic.Anthropic(base_url=proxy.url, api_key="sk-some-other-local-process")
    with pytest.raises(anthropic.APIStatusError) as caught:
        stranger.messages.create(**ask())
    assert caught.value.status_code == 529
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert len(fake.requests) == ATTEMPTS and backup.requests == []


# -- the OpenAI front -----------------------------------------------------------------------------


def gpt(proxy: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=API_KEY)


def test_the_openai_sdk_through_the_proxy_json_stream_and_tools(proxy, fake, home) -> None:
    call = ToolCall("read_file", {"path": "app.py"})
    fake.script(ok(Turn(text="plain answer")), ok(Turn(text="", tool_calls=[call])))
    messages = [{"role": "user", "content": "hi"}]
    completion = gpt(proxy).chat.completions.create(model=GPT, messages=messages)
    assert completion.choices[0].message.content == "plain answer"
    chunks = list(
        gpt(proxy).chat.completions.create(
            model=GPT, messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    arguments = "".join(
        call.function.arguments or "" for d in deltas for call in (d.tool_calls or [])
    )
    assert json.loads(arguments) == {"path": "app.py"}
    assert [r.path for r in fake.requests] == ["/v1/chat/completions"] * 2
    first, second = steps(home)
    assert (first["requested_provider"], first["served_model"]) == ("openai", GPT)
    recorded = json.loads(Store.open(home).get_step(second["id"])["response"])
    assert recorded["choices"][0]["finish_reason"] == "tool_calls"
    assert second["stop_reason"] == "tool_calls" and second["input_tokens"] is not None


def test_an_overload_on_the_openai_front_is_absorbed(proxy, fake, home) -> None:
    fake.script(overloaded(), ok(Turn(text="after one retry")))
    completion = gpt(proxy).chat.completions.create(
        model=GPT, messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == "after one retry"
    assert [r.reply for r in fake.requests] == ["error:529", "ok"]


def test_a_quiet_session_has_its_run_closed_and_reopened_by_its_next_request(
    start: Any, fake: FakeProvider, home: Path, clock: Any
) -> None:
    """A long-running proxy does not keep every session's run open for ever: after
    `session_idle` seconds without a request the run is `completed` (with a `session_idle`
    event); the session's next request goes on in the same run, its conversation not stored
    again."""
    proxy = start(session_idle=600)
    session = {SESSION: "5e55-idle"}
    assert post(proxy, turn("fix the bug"), **session).status_code == 200
    store = Store.open(home)
    [run] = store.query("select id, status from runs")
    assert run["status"] == "running"

    clock.advance(599)
    assert post(proxy, turn("other session"), **{SESSION: "other"}).status_code == 200
    assert store.get_run(run["id"])["status"] == "running"  # not quiet long enough

    clock.advance(601)
    closed = proxy.server.sessions.close_idle()
    assert run["id"] in closed
    assert store.get_run(run["id"])["status"] == "completed"
    assert len(closed) == 2  # the other session has been quiet as long
    assert sorted(e["run_id"] for e in events(home, "session_idle")) == sorted(closed)

    assert post(proxy, turn("fix the bug", "ok", "go on"), **session).status_code == 200
    assert store.get_run(run["id"])["status"] == "running"
    ours = store.query("select * from steps where run_id = ? order by number", [run["id"]])
    assert [s["number"] for s in ours] == [1, 2]
    assert (ours[1]["base_len"], ours[1]["total_len"]) == (1, 3)  # only the two new messages
    assert len(store.query("select id from runs")) == 2  # the reopened run is the same run


def test_a_session_with_a_request_in_flight_is_never_closed(
    start: Any, fake: FakeProvider, home: Path, clock: Any
) -> None:
    proxy = start(session_idle=600)
    sessions = proxy.server.sessions
    assert post(proxy, turn("hi"), **{SESSION: "busy"}).status_code == 200
    [session] = list(sessions._sessions.values())
    with sessions.in_use(session):
        clock.advance(10_000)
        assert sessions.close_idle() == []
    assert sessions.close_idle() == []  # its request just ended: it is not quiet


def test_opening_a_new_sessions_run_never_blocks_the_event_loop(
    start: Any, fake: FakeProvider, home: Path, project: Path
) -> None:
    """A new session's run is opened on a worker thread: while it waits for the shadow store
    (here: its lock held, as by another process's snapshot) the proxy goes on answering — other
    requests, other streams — and the new session's request is served once the store is free."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.test_proxy_checkpoint import shadow_store_locked

    proxy = start()
    assert post(proxy, turn("first"), **{SESSION: "warm"}).status_code == 200  # the store exists
    with shadow_store_locked(home, project) as release, ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(post, proxy, turn("hello"), **{SESSION: "brand-new"})
        # the loop is free: a probe is answered at once, though the new session's run waits
        assert httpx2.head(f"{proxy.url}/api/hello", timeout=10).status_code == 200
        assert not waiting.done()
        release()
        assert waiting.result(timeout=30).status_code == 200
    runs = Store.open(home).query("select name from runs order by created_at")
    assert len(runs) == 2


def test_a_conversation_keeps_its_key_whether_its_first_message_is_hashed_or_remembered() -> None:
    """The key of a later turn comes from comparing its first message with those seen last
    (no re-hash); it must be the key hashing gives: cache markers ignored, content not."""
    from agentguard.proxy import sessions

    first = {"role": "user", "content": [{"type": "text", "text": "fix the test " * 500}]}
    marked = json.loads(json.dumps(first))
    marked["content"][0]["cache_control"] = {"type": "ephemeral"}
    other = json.loads(json.dumps(first))
    other["content"][0]["text"] += "!"
    sessions._RECENT_FIRSTS.clear()
    hashed = sessions.conversation_key({"messages": [first]})
    remembered = sessions.conversation_key({"messages": [json.loads(json.dumps(first)), "x"]})
    assert remembered == hashed and len(sessions._RECENT_FIRSTS) == 1  # the second: no hash
    assert sessions.conversation_key({"messages": [marked]}) == hashed
    assert sessions.conversation_key({"messages": [other]}) != hashed
    sessions._RECENT_FIRSTS.clear()
    assert sessions.conversation_key({"messages": [json.loads(json.dumps(first))]}) == hashed
