"""Holding a request through a storm: the proxy waits for the route to come back instead of
failing the client's request, keeping a streaming client alive with pings.

The proxy runs on an injected FakeClock: the step's waits (backoffs, the breaker's probe
cooldown, the hold itself) and the pings sent during them advance it instead of the wall clock,
so a storm of minutes passes in a fraction of a second. Pings during an attempt in flight follow
the event loop's time: the tests that stall a probe use a tiny ping interval.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from agentguard.breaker import BreakerSettings
from agentguard.commands.statusline import status_line
from agentguard.policy import resolve_policy
from agentguard.proxy import ProxyThread
from agentguard.store import Store
from agentguard.testing import FakeProvider, Turn, ok, overloaded, stall
from tests.conftest import API_KEY, ATTEMPTS, storm
from tests.test_proxy import ask, raw_stream_request, until

OPUS, SONNET = "claude-opus-4-7", "claude-sonnet-4-6"
SESSION = "x-claude-code-session-id"
FORBID = {"preset": "coding_agent", "substitution": "forbid"}
COOLDOWN = BreakerSettings().cooldown


@pytest.fixture
def start(
    start_proxy: Callable[..., ProxyThread], fake: FakeProvider
) -> Iterator[Callable[..., ProxyThread]]:
    yield start_proxy
    fake.release_stalls()


def claude(proxy: ProxyThread, **kw: Any) -> anthropic.Anthropic:
    kw.setdefault("max_retries", 0)
    return anthropic.Anthropic(base_url=proxy.url, api_key=API_KEY, **kw)


def rows(home: Path, sql: str, *args: Any) -> list[dict[str, Any]]:
    store = Store.open(home)
    try:
        return store.query(sql, list(args))
    finally:
        store.close()


def sse_frames(lines: Iterator[str]) -> Iterator[tuple[str | None, str]]:
    """(event name, data) of each SSE frame, as they arrive."""
    name: str | None = None
    data: list[str] = []
    for line in lines:
        if not line:
            if name is not None or data:
                yield name, "\n".join(data)
            name, data = None, []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def stream_raw(proxy: ProxyThread, **headers: str) -> httpx2.Response:
    return httpx2.stream(
        "POST",
        f"{proxy.url}/v1/messages",
        json={**ask(), "stream": True},
        headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01", **headers},
        timeout=30,
    )


def spacing(home: Path) -> list[float]:
    """Seconds (of the proxy's clock) between consecutive attempts."""
    times = [a["started_at"] for a in rows(home, "select * from attempts order by id")]
    return [b - a for a, b in itertools.pairwise(times)]


# -- a streaming client -------------------------------------------------------------------------


def test_a_held_stream_gets_pings_then_the_answer_when_the_primary_recovers(
    start, fake, home
) -> None:
    proxy = start(policy=FORBID)
    fake.script(*storm(ATTEMPTS + 12), ok(Turn(text="after the storm")))
    with stream_raw(proxy) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        run_id = response.headers["x-agentguard-run"]
        frames = list(sse_frames(response.iter_lines()))
    names = [name for name, _ in frames]
    first_start = names.index("message_start")
    assert first_start == 2 and set(names[:first_start]) == {"ping"}  # 26 s held: at 10 s, 20 s
    assert all(json.loads(data) == {"type": "ping"} for name, data in frames if name == "ping")
    assert names.count("message_start") == 1 and names[-1] == "message_stop"
    text = "".join(
        json.loads(data)["delta"].get("text", "")
        for name, data in frames
        if name == "content_block_delta"
    )
    assert text == "after the storm"
    # one step, every try an attempt of it; the held tries spaced by the breaker, never a loop
    [step] = rows(home, "select * from steps")
    assert (step["status"], step["served_model"], step["run_id"]) == ("ok", OPUS, run_id)
    outcomes = [a["outcome"] for a in rows(home, "select * from attempts order by id")]
    assert len(outcomes) == ATTEMPTS + 13 and outcomes[-1] == "ok"
    assert all(gap >= COOLDOWN - 1e-6 for gap in spacing(home)[ATTEMPTS - 1 :])
    assert len(fake.requests) == ATTEMPTS + 13
    [run] = rows(home, "select * from runs")
    assert (run["status"], run["next_attempt_at"]) == ("running", None)
    [held] = rows(home, "select * from events where kind = 'step_held'")
    assert held["step_id"] == step["id"] and "529" in json.loads(held["detail"])["reason"]


def test_the_sdks_stream_takes_the_pings_and_its_final_message_is_right(start, fake) -> None:
    proxy = start(policy=FORBID)
    fake.script(*storm(ATTEMPTS + 8), ok(Turn(text="worth the wait")))
    with claude(proxy).messages.stream(**ask()) as stream:
        assert "".join(stream.text_stream) == "worth the wait"
        final = stream.get_final_message()
    assert final.stop_reason == "end_turn" and final.model == OPUS
    assert final.content[0].text == "worth the wait"


def test_every_route_down_holds_under_announce_too(start, fake, home, clock) -> None:
    proxy = start(
        chain=[f"anthropic:{OPUS}", f"anthropic:{SONNET}"],
        policy={"preset": "coding_agent", "step_deadline": 10.0},
    )
    count = [0]

    def faults(model: str | None) -> Any:
        count[0] += 1
        return None if count[0] > 40 else overloaded()

    fake.set_faults(faults)
    # a first request spends both routes' retries: as today, the client is told not to retry
    with pytest.raises(anthropic.APIStatusError) as caught:
        claude(proxy).messages.create(**ask())
    assert caught.value.response.headers["x-should-retry"] == "false"
    clock.advance(1.0)
    # the next finds both breakers open: held past its 10 s deadline, pinged, then served
    with stream_raw(proxy) as response:
        names = [name for name, _ in sse_frames(response.iter_lines())]
    assert names[0] == "ping" and "message_start" in names
    last = rows(home, "select * from steps order by id")[-1]
    assert last["status"] == "ok"
    assert rows(home, "select * from events where kind = 'step_held'")


# -- a client without a stream ------------------------------------------------------------------


def test_a_request_without_a_stream_is_held_and_answered(start, fake, home) -> None:
    proxy = start(policy=FORBID)
    fake.script(*storm(ATTEMPTS + 6), ok(Turn(text="patience")))
    raw = claude(proxy).messages.with_raw_response.create(**ask())
    assert raw.parse().content[0].text == "patience"
    assert raw.headers["x-agentguard-served-model"] == OPUS
    assert len(fake.requests) == ATTEMPTS + 7
    [step] = rows(home, "select * from steps")
    assert step["status"] == "ok"


def test_past_the_hold_deadline_the_client_gets_the_529_and_no_retry(start, fake, home) -> None:
    proxy = start(policy=FORBID, hold_non_streaming=30.0)
    fake.set_faults(lambda model: overloaded())
    with pytest.raises(anthropic.APIStatusError) as caught:
        claude(proxy, max_retries=3).messages.create(**ask())
    assert caught.value.status_code == 529
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert caught.value.body["error"]["type"] == "overloaded_error"
    # held: more tries than the step's own, at most one per breaker cooldown over 30 s
    assert ATTEMPTS < len(fake.requests) <= ATTEMPTS + 30 / COOLDOWN + 1
    [step] = rows(home, "select * from steps")
    assert step["status"] == "waiting" and "hold deadline passed" in step["error"]
    [run] = rows(home, "select * from runs")
    assert run["status"] == "waiting" and run["next_attempt_at"] is not None


def test_a_held_stream_past_its_deadline_ends_with_the_providers_error_event(
    start, fake, home
) -> None:
    proxy = start(policy=FORBID, hold=40.0)
    fake.set_faults(lambda model: overloaded())
    with stream_raw(proxy) as response:
        frames = list(sse_frames(response.iter_lines()))
    assert frames[0][0] == "ping" and frames[-1][0] == "error"
    assert json.loads(frames[-1][1])["error"]["type"] == "overloaded_error"
    # the SDK: pings skipped, then the provider's error raised
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        for event in claude(proxy).messages.create(**ask(), stream=True):
            seen.append(event.type)
    assert seen == [] and caught.value.body["error"]["type"] == "overloaded_error"
    assert {s["status"] for s in rows(home, "select * from steps")} == {"waiting"}


def test_a_hold_shorter_than_the_ping_interval_sends_the_providers_own_response(
    start, fake, home
) -> None:
    """Nothing goes to the client before the first ping is due: a short hold ends in the
    provider's own status and headers, and a failure is still a status with no retry."""
    proxy = start(policy=FORBID, ping_interval=30.0)
    fake.script(*storm(ATTEMPTS + 1), ok(Turn(text="soon")))
    with stream_raw(proxy) as response:
        assert response.status_code == 200
        assert response.headers["request-id"] == fake.requests[-1].request_id
        names = [name for name, _ in sse_frames(response.iter_lines())]
    assert names[0] == "message_start" and names[-1] == "message_stop"  # no ping before it
    assert rows(home, "select * from events where kind = 'step_held'")  # it was held

    proxy = start(policy=FORBID, hold=5.0, ping_interval=30.0)
    fake.set_faults(lambda model: overloaded())
    with stream_raw(proxy) as response:
        assert response.status_code == 529
        assert response.headers["x-should-retry"] == "false"
        response.read()
        assert response.json()["error"]["type"] == "overloaded_error"


def test_the_unstreamed_resend_after_a_held_stream_gave_up_is_not_held_again(
    start, fake, home
) -> None:
    """A held stream that reaches its deadline can only end in an SSE error, which carries no
    `x-should-retry`; Claude Code then resends the request without streaming. That resend is
    an ordinary step (its retries within its deadline), not held a second time, and its
    failure is a 529 with `x-should-retry: false`."""
    proxy = start(policy=FORBID, hold=40.0)
    fake.set_faults(lambda model: overloaded())
    with stream_raw(proxy) as response:
        frames = list(sse_frames(response.iter_lines()))
    assert frames[0][0] == "ping" and frames[-1][0] == "error"
    sent = len(fake.requests)
    with pytest.raises(anthropic.APIStatusError) as caught:
        claude(proxy).messages.create(**ask())
    assert caught.value.status_code == 529
    assert caught.value.response.headers["x-should-retry"] == "false"
    first, resend = rows(home, "select * from steps order by id")
    held = rows(home, "select step_id from events where kind = 'step_held'")
    assert [e["step_id"] for e in held] == [first["id"]]
    step_deadline = resolve_policy(FORBID).step_deadline
    # an ordinary step: its retries, then the breaker's probes within its deadline, no hold
    assert len(fake.requests) - sent <= ATTEMPTS + step_deadline / COOLDOWN + 1
    assert resend["status"] == "waiting" and "hold" not in resend["error"]
    # a new request of another conversation is held as usual
    fake.script(*storm(ATTEMPTS + 1), ok(Turn(text="held")))
    fake.set_faults(None)
    other = claude(proxy).messages.create(**{**ask("something else")})
    assert other.content[0].text == "held"


# -- while it is held ---------------------------------------------------------------------------


def test_the_statusline_shows_the_wait_and_pings_go_on_while_a_probe_hangs(
    start, fake, home, clock
) -> None:
    proxy = start(policy=FORBID, ping_interval=0.05)
    fake.script(*storm(ATTEMPTS + 3), stall(before_headers=True), ok(Turn(text="late")))
    with stream_raw(proxy, **{SESSION: "5e55-hold"}) as response:
        frames = sse_frames(response.iter_lines())
        assert next(frames)[0] == "ping"
        until(lambda: fake.requests and fake.requests[-1].reply == "stall")
        line = status_line({"session_id": "5e55-hold"}, str(home), now=clock.now())
        assert re.fullmatch(r"agentguard ⏳ waiting for opus-4-7 — 529 storm, \d+s", line), line
        [run] = rows(home, "select * from runs")
        assert run["status"] == "waiting" and run["next_attempt_at"] is not None
        pinged = [next(frames)[0] for _ in range(3)]  # the probe hangs; the client hears pings
        assert pinged == ["ping"] * 3
        fake.release_stalls()  # the probe's connection drops: the next probe is answered
        rest = [name for name, _ in frames]
    assert "message_start" in rest and rest[-1] == "message_stop"
    assert set(rest[: rest.index("message_start")]) <= {"ping"}
    [step] = rows(home, "select * from steps")
    assert step["status"] == "ok"
    line = status_line({"session_id": "5e55-hold"}, str(home), now=clock.now())
    assert line.startswith("agentguard ✓ opus-4-7")


def test_a_client_hanging_up_while_held_cancels_the_step(start, fake, home) -> None:
    proxy = start(policy=FORBID, ping_interval=0.05)
    fake.script(*storm(ATTEMPTS + 2), stall(before_headers=True))
    with socket.create_connection(("127.0.0.1", proxy.port)) as client:
        client.sendall(raw_stream_request())
        received = b""
        while b"event: ping" not in received:
            received += client.recv(65536)
        assert received.startswith(b"HTTP/1.1 200")
        until(lambda: fake.requests and fake.requests[-1].reply == "stall")
    # the client hung up during a held probe: the probe and the step are cancelled

    def cancelled() -> list[dict[str, Any]]:
        return rows(home, "select * from attempts where outcome = 'cancelled'")

    [attempt] = until(cancelled)
    assert attempt["number"] == ATTEMPTS + 3
    assert until(lambda: rows(home, "select * from steps where status = 'cancelled'"))
    [run] = rows(home, "select * from runs")
    assert (run["status"], run["next_attempt_at"]) == ("running", None)  # not left waiting
    fake.release_stalls()
    # nothing leaked: the proxy serves the next request at once
    message = claude(proxy).messages.create(**ask("next"))
    assert message.content[0].text


def test_an_answer_that_comes_as_the_held_client_leaves_is_closed_not_dropped() -> None:
    """The attempt finishes while a ping is being written to a client that has just gone: the
    request is cancelled, and the answer it will never pass on — a live stream holding its
    upstream connection — is closed, not left open until the provider ends it."""
    import asyncio

    from agentguard.plan import Call
    from agentguard.proxy.hold import KeepAlive
    from agentguard.proxy.stream import LiveStream
    from agentguard.routes import Route
    from agentguard.step_types import Served

    closed: list[bool] = []

    class UpstreamResponse:  # the provider's answer under the stream: what must be closed
        async def aclose(self) -> None:
            closed.append(True)

    async def no_more_events() -> Any:
        return
        yield

    class Clock:
        def monotonic(self) -> float:
            return 0.0

    async def scenario() -> None:
        answered = asyncio.Event()

        async def attempt(_call: Call) -> Served:
            await answered.wait()
            stream = LiveStream("anthropic", 200, [], [], no_more_events(), UpstreamResponse())  # type: ignore[arg-type]
            return Served(value=stream, request_id="req_1", model="m")

        class GoneClient:
            async def write(self, _data: bytes) -> None:
                answered.set()  # the provider answers while this ping is on its way
                for _ in range(3):
                    await asyncio.sleep(0)  # (a yield, not a wait: the attempt completes)
                raise ConnectionResetError("the client hung up")

        keeper = KeepAlive(None, "anthropic", Clock(), 0.0, list)  # type: ignore[arg-type]
        keeper.held, keeper.response = True, GoneClient()  # type: ignore[assignment]
        with pytest.raises(asyncio.CancelledError):
            await keeper.call_for(attempt)(Call(Route(provider="anthropic", model="m"), 1))
        assert keeper.gone

    asyncio.run(scenario())
    assert closed == [True]
