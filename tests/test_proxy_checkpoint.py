"""A streamed step's first content does not wait for the tree snapshot; what the client could
act on does.

The checkpoint must show the tree as it was before the agent acted on the answer. A JSON answer
is one piece, so it waits for the snapshot. A stream's text can flow at once: the agent cannot
act on a tool call before its block is complete, nor on the message before its end. So the
proxy holds back the first event that completes something (`content_block_stop`,
`message_delta`, `message_stop`, an error; for OpenAI a `finish_reason` or `[DONE]`) until the
step's snapshot is taken. The snapshot is held up here the way another process would: by the
shadow store's lock.
"""

from __future__ import annotations

import asyncio
import copy
import fcntl
import json
import subprocess
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2

from agentguard.conversation import Head, delta
from agentguard.home import project_key
from agentguard.proxy import ProxyThread, sse
from agentguard.proxy.stream import LiveStream
from agentguard.store import Store
from agentguard.testing import FakeProvider, ToolCall, Turn, ok
from tests.conftest import API_KEY

OPUS = "claude-opus-4-7"


def _event(name: str, data: dict[str, Any]) -> sse.Event:
    data = {"type": name, **data}
    return sse.parse(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())


def _anthropic_events() -> list[sse.Event]:
    return [
        _event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        _event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "a"}}),
        _event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "b"}}),
        _event("content_block_stop", {"index": 0}),
        _event("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {}}),
        _event("message_stop", {}),
    ]


async def _from(events: list[sse.Event]) -> AsyncIterator[sse.Event]:
    for event in events:
        yield event


def test_the_gate_holds_back_only_what_completes_something() -> None:
    """Deterministic: the deltas come through while the gate is shut; the block's end does not
    until it opens (the loop is run until nothing else can happen)."""

    async def scenario() -> None:
        start = _event("message_start", {"message": {"id": "m", "model": OPUS, "content": []}})
        stream = LiveStream("anthropic", 200, [], [start], _from(_anthropic_events()), None)  # type: ignore[arg-type]
        opened = asyncio.Event()
        stream.gate = opened.wait
        got: list[str | None] = []

        async def read() -> None:
            async for chunk in stream:
                got.append(sse.parse(chunk).name)

        reader = asyncio.ensure_future(read())
        for _ in range(50):  # everything not behind the gate is in memory: it all arrives
            await asyncio.sleep(0)
        assert got == [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
        ]
        assert not reader.done()
        opened.set()
        await reader
        assert got[4:] == ["content_block_stop", "message_delta", "message_stop"]
        assert stream.assembler.complete

    asyncio.run(scenario())


def test_openai_chunks_are_held_at_the_finish_reason() -> None:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> sse.Event:
        body = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return sse.parse(f"data: {json.dumps(body)}\n\n".encode())

    assert not sse.lets_client_act("openai", chunk({"content": "hi"}))
    assert not sse.lets_client_act("openai", chunk({"tool_calls": [{"index": 0}]}))
    assert sse.lets_client_act("openai", chunk({}, "tool_calls"))
    assert sse.lets_client_act("openai", sse.parse(b"data: [DONE]\n\n"))
    assert sse.lets_client_act("anthropic", _event("error", {"error": {"type": "x"}}))


@contextmanager
def shadow_store_locked(home: Path, project: Path) -> Iterator[Callable[[], None]]:
    """Take the shadow store's lock as another process would; yields `release`."""
    lock_file = home / "shadow" / project_key(project) / "lock"
    assert lock_file.exists(), "the shadow store is made by the first snapshot"
    fd = open(lock_file, "a+")  # noqa: SIM115 - released by the caller or at the end
    fcntl.flock(fd, fcntl.LOCK_EX)
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            fcntl.flock(fd, fcntl.LOCK_UN)
            fd.close()

    try:
        yield release
    finally:
        release()


def _step_rows(home: Path) -> list[dict[str, Any]]:
    store = Store.open(home)
    try:
        return store.query("select id, number, status, checkpoint from steps order by id")
    finally:
        store.close()


def _tree_files(home: Path, project: Path, commit: str) -> list[str]:
    git_dir = home / "shadow" / project_key(project) / "repo.git"
    out = subprocess.run(
        ["git", "--git-dir", str(git_dir), "ls-tree", "-r", "--name-only", commit],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


def test_a_stream_flows_before_the_snapshot_and_the_tool_call_waits_for_it(
    start_proxy: Callable[..., ProxyThread], fake: FakeProvider, project: Path, home: Path
) -> None:
    proxy = start_proxy()
    http = httpx2.Client(base_url=proxy.url, headers={"x-api-key": API_KEY}, timeout=30)
    body = {"model": OPUS, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    assert http.post("/v1/messages", json=body).status_code == 200  # makes the shadow store

    fake.script(
        ok(Turn(text="writing it", tool_calls=[ToolCall("Write", {"file_path": "after.txt"})]))
    )
    first_content = threading.Event()
    seen: list[str] = []
    failures: list[BaseException] = []

    def agent() -> None:
        """Reads the stream like Claude Code; once the tool call is complete, runs it."""
        try:
            streamed = {**body, "stream": True}
            with http.stream("POST", "/v1/messages", json=streamed) as response:
                buffer = b""
                for chunk in response.iter_bytes():
                    buffer += chunk
                    while b"\n\n" in buffer:
                        raw, buffer = buffer.split(b"\n\n", 1)
                        event = sse.parse(raw + b"\n\n")
                        seen.append(str(event.name))
                        if event.name == "content_block_delta":
                            first_content.set()
                        if (
                            event.name == "content_block_stop"
                            and not (project / "after.txt").exists()
                        ):
                            (project / "after.txt").write_text("the agent acted\n")
        except BaseException as exc:
            failures.append(exc)
        finally:
            first_content.set()

    with shadow_store_locked(home, project) as release:
        reader = threading.Thread(target=agent)
        reader.start()
        assert first_content.wait(30), "no content came through"
        assert not failures
        # the client already reads the answer while the snapshot still waits for the lock
        assert "content_block_delta" in seen
        step = _step_rows(home)[-1]
        assert step["checkpoint"] is None
        release()
        reader.join(30)
    assert not failures, failures
    assert seen[-1] == "message_stop"
    assert (project / "after.txt").exists()
    proxy.stop()  # every checkpoint joined
    step = _step_rows(home)[-1]
    assert step["status"] == "ok" and step["checkpoint"], step
    assert "after.txt" not in _tree_files(home, project, step["checkpoint"])
    assert "app.py" in _tree_files(home, project, step["checkpoint"])


def test_a_conversation_parsed_anew_is_not_stored_again() -> None:
    """A proxy parses each request afresh: equal messages, not the same objects. Only what is
    new is stored, also when the cache marker moved."""
    first = [
        {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"a": 1}}]},
        {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
    ]
    head = Head()
    known = delta(head, first)
    head = Head(step_id=1, objects=known.objects, shas=known.shas)
    again = copy.deepcopy(first)
    del again[0]["content"][0]["cache_control"]
    again[1]["content"][0]["cache_control"] = {"type": "ephemeral"}
    again.append({"role": "user", "content": "go on"})
    step = delta(head, again)
    assert step.base_len == 2
    assert [row["position"] for row in step.new] == [2]
    assert step.shas[:2] == known.shas


def test_a_body_orjson_refuses_but_json_allows_is_still_a_guarded_step(
    start_proxy: Callable[..., ProxyThread], fake: FakeProvider, home: Path
) -> None:
    """The proxy reads bodies with orjson and falls back to the standard parser: a number past
    64 bits is valid JSON, and the request is a step like any other (sent on byte for byte)."""
    proxy = start_proxy()
    raw = (
        b'{"model": "claude-opus-4-7", "max_tokens": 64,'
        b' "metadata": {"n": 123456789012345678901234},'
        b' "messages": [{"role": "user", "content": "hi"}]}'
    )
    answer = httpx2.post(
        f"{proxy.url}/v1/messages",
        content=raw,
        headers={"x-api-key": API_KEY, "content-type": "application/json"},
        timeout=30,
    )
    assert answer.status_code == 200
    assert fake.requests[-1].body["metadata"]["n"] == 123456789012345678901234
    assert [s["status"] for s in _step_rows(home)] == ["ok"]
