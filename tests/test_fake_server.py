"""The fake provider, driven by the real anthropic and openai SDK clients over loopback HTTP.

These tests pin down what every scripted fault looks like *from each SDK*, because that is
what agentguard's classifier has to recognise:

    fault                      anthropic 2.12                      openai 3.54
    error(status)              the status's APIStatusError class   the status's class
    midstream_error (stream)   APIStatusError, status_code 200     APIError (no status_code)
    midstream_error (JSON)     OverloadedError (a 529)             InternalServerError (529)
    drop (stream)              raw httpx2.RemoteProtocolError      APIConnectionError
    drop (JSON)                APIConnectionError                  APIConnectionError
    stall(before_headers)      APITimeoutError                     APITimeoutError
    stall (stream)             raw httpx2.ReadTimeout              APITimeoutError

Only the stall tests wait on the wall clock (client timeouts of 0.3 s or less).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from agentguard.testing import (
    FakeProvider,
    RecordedRequest,
    ToolCall,
    Turn,
    drop,
    error,
    midstream_error,
    ok,
    overloaded,
    stall,
)
from agentguard.testing.transport import Exchange

KEY = "sk-test-fake-server-5d1c9e7a3b"
CLAUDE = "claude-opus-4-7"
GPT = "gpt-5.1"
HI = [{"role": "user", "content": "hi"}]

RICH = Turn(
    text="I will read both files.",
    thinking="The bug is probably in add().",
    tool_calls=[
        ToolCall("read_file", {"path": "app.py", "lines": [1, 2]}),
        ToolCall("read_file", {"path": "test_app.py"}, id="toolu_given"),
    ],
)


def claude(fake: FakeProvider, **options: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fake.base_url, api_key=KEY, max_retries=0, **options)


def gpt(fake: FakeProvider, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.openai_base_url, api_key=KEY, max_retries=0, **options)


def ask(client: anthropic.Anthropic, **kw: Any) -> Any:
    return client.messages.create(model=CLAUDE, max_tokens=64, messages=HI, **kw)


def chat(client: openai.OpenAI, **kw: Any) -> Any:
    return client.chat.completions.create(model=GPT, messages=HI, **kw)


def blocks(message: Any) -> list[dict[str, Any]]:
    """Content blocks without the client-side extras of the streaming helper."""
    return [block.model_dump(exclude={"parsed_output"}) for block in message.content]


# -- anthropic: answers ---------------------------------------------------------------------------


def test_anthropic_json_answer_carries_the_recorded_request_id(fake: FakeProvider) -> None:
    msg = ask(claude(fake))
    assert isinstance(msg, anthropic.types.Message)
    assert [b.text for b in msg.content] == ["ok"] and msg.stop_reason == "end_turn"
    assert msg.model == CLAUDE and msg.usage.input_tokens > 0 and msg.usage.output_tokens == 1
    [seen] = fake.requests
    assert msg._request_id == seen.request_id and seen.request_id.startswith("req_fake_")
    assert (seen.api, seen.method, seen.path) == ("anthropic", "POST", "/v1/messages")
    assert seen.model == CLAUDE
    assert (seen.stream, seen.reply, seen.body["messages"]) == (False, "ok", HI)


def test_anthropic_tool_use_turn(fake: FakeProvider) -> None:
    fake.script(ok(Turn(text="", tool_calls=[ToolCall("read_file", {"path": "a.py"})])))
    msg = ask(claude(fake))
    [block] = msg.content
    assert (block.type, block.name, block.input) == ("tool_use", "read_file", {"path": "a.py"})
    assert block.id.startswith("toolu_") and msg.stop_reason == "tool_use"


def test_anthropic_thinking_turn(fake: FakeProvider) -> None:
    fake.set_model(lambda request: Turn(text="42", thinking="6 times 7"))
    msg = ask(claude(fake))
    thinking, text = msg.content
    assert thinking.type == "thinking" and thinking.thinking == "6 times 7"
    assert thinking.signature and text.text == "42"


def test_anthropic_stream_rebuilds_the_json_message(fake: FakeProvider) -> None:
    fake.set_model(lambda request: RICH)
    client = claude(fake)
    whole = ask(client)
    with client.messages.stream(model=CLAUDE, max_tokens=64, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == RICH.text
    assert blocks(final)[:2] == blocks(whole)[:2]  # thinking (with signature) and text
    tools = [(b["name"], b["input"]) for b in blocks(final)[2:]]
    assert tools == [(c.name, c.input) for c in RICH.tool_calls]
    assert blocks(final)[3]["id"] == "toolu_given"
    assert final.stop_reason == whole.stop_reason == "tool_use"
    assert final.usage == whole.usage
    assert [r.stream for r in fake.requests] == [False, True]


def test_anthropic_raw_stream_events(fake: FakeProvider) -> None:
    fake.set_model(lambda request: RICH)
    events = list(ask(claude(fake), stream=True))
    types = [e.type for e in events]
    assert types[0] == "message_start" and types[-2:] == ["message_delta", "message_stop"]
    assert "ping" not in types  # sent on the wire, skipped by the SDK
    deltas = [e.delta for e in events if e.type == "content_block_delta"]
    kinds = [d.type for d in deltas]
    assert kinds.count("signature_delta") == 1 and kinds.count("thinking_delta") >= 2
    assert kinds.count("input_json_delta") >= 4  # two tools, each in two or more pieces
    assert types.count("content_block_start") == types.count("content_block_stop") == 4
    assert events[-2].usage.output_tokens > 1


def test_anthropic_sse_wire_names_every_event_and_pings(fake: FakeProvider) -> None:
    with claude(fake).messages.with_streaming_response.create(
        model=CLAUDE, max_tokens=64, messages=HI, stream=True
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["transfer-encoding"] == "chunked"
        lines = [line for line in response.iter_lines() if line]
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    assert len(names) == len([line for line in lines if line.startswith("data: ")])
    assert names[:3] == ["message_start", "content_block_start", "ping"]


def test_claude_code_style_requests_are_accepted(fake: FakeProvider) -> None:
    beta = claude(fake).beta.messages.create(model=CLAUDE, max_tokens=8, messages=HI)
    assert beta.content[0].text == "ok"
    raw = httpx2.post(
        f"{fake.base_url}/v1/messages?beta=true",
        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01", "anthropic-beta": "x,y"},
        json={
            "model": CLAUDE,
            "max_tokens": 8,
            "stream": True,
            "messages": [{"role": "system", "content": "be brief"}, *HI],
        },
    )
    assert raw.status_code == 200 and "event: message_stop" in raw.text
    assert [(r.path, r.query) for r in fake.requests] == [
        ("/v1/messages", ""),  # the 2.12 SDK's beta resource does not add ?beta=true
        ("/v1/messages", "beta=true"),
    ]
    assert fake.requests[1].headers["x-api-key"] == "***"
    assert raw.headers["request-id"] == fake.requests[1].request_id


# -- anthropic: errors ----------------------------------------------------------------------------

ANTHROPIC_ERRORS = [
    (400, "invalid_request_error", anthropic.BadRequestError),
    (401, "authentication_error", anthropic.AuthenticationError),
    (402, "billing_error", anthropic.PaymentRequiredError),
    (403, "permission_error", anthropic.PermissionDeniedError),
    (404, "not_found_error", anthropic.NotFoundError),
    (413, "request_too_large", anthropic.ContentTooLargeError),
    (429, "rate_limit_error", anthropic.RateLimitError),
    (500, "api_error", anthropic.InternalServerError),
    (502, "api_error", anthropic.InternalServerError),
    (503, "api_error", anthropic.ServiceUnavailableError),
    (504, "timeout_error", anthropic.GatewayTimeoutError),
    (529, "overloaded_error", anthropic.OverloadedError),
]


@pytest.mark.parametrize(("status", "error_type", "sdk_error"), ANTHROPIC_ERRORS)
def test_anthropic_error_statuses_raise_the_sdk_class(
    fake: FakeProvider, status: int, error_type: str, sdk_error: type[Exception]
) -> None:
    fake.script(error(status))
    with pytest.raises(sdk_error) as caught:
        ask(claude(fake))
    exc = caught.value
    [seen] = fake.requests
    assert isinstance(exc, anthropic.APIStatusError) and exc.status_code == status
    assert exc.type == error_type and exc.request_id == seen.request_id
    assert exc.body == {
        "type": "error",
        "error": {"type": error_type, "message": exc.api_message},
        "request_id": seen.request_id,
    }
    assert seen.reply == f"error:{status}" and "x-should-retry" not in exc.response.headers


def test_anthropic_429_carries_the_scripted_headers(fake: FakeProvider) -> None:
    fake.script(
        error(
            429,
            retry_after=2,
            retry_after_ms=1500,
            should_retry=False,
            headers={"Anthropic-Ratelimit-Requests-Remaining": "0"},
        )
    )
    with pytest.raises(anthropic.RateLimitError) as caught:
        ask(claude(fake))
    headers = caught.value.response.headers
    assert (headers["retry-after-ms"], headers["retry-after"], headers["x-should-retry"]) == (
        "1500",
        "2",
        "false",
    )
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"


def test_anthropic_error_code_picks_the_specific_class(fake: FakeProvider) -> None:
    fake.script(error(429, error_code="enforced_spend_limit_reached", message="spend limit"))
    with pytest.raises(anthropic.EnforcedSpendLimitReachedError) as caught:
        ask(claude(fake))
    assert isinstance(caught.value, anthropic.RateLimitError)
    assert caught.value.error_code == "enforced_spend_limit_reached"
    assert caught.value.api_message == "spend limit"


def test_overloaded_takes_error_keywords(fake: FakeProvider) -> None:
    fake.script(overloaded(should_retry=True, retry_after=0.5))
    with pytest.raises(anthropic.OverloadedError) as caught:
        ask(claude(fake))
    headers = caught.value.response.headers
    assert (headers["x-should-retry"], headers["retry-after"]) == ("true", "0.5")
    assert caught.value.api_message == "Overloaded"


def test_anthropic_midstream_error_is_a_status_error_with_status_200(fake: FakeProvider) -> None:
    fake.script(midstream_error(after_events=5, turn=Turn(text="one two three four")))
    received: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        for event in ask(claude(fake), stream=True):
            received.append(event.type)
    exc = caught.value
    assert not isinstance(exc, anthropic.InternalServerError)
    assert exc.status_code == 200 and exc.type == "overloaded_error"
    assert exc.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    assert exc.request_id == fake.requests[0].request_id
    # message_start, content_block_start, (ping: skipped by the SDK), two text deltas
    assert received == ["message_start", "content_block_start"] + ["content_block_delta"] * 2
    assert fake.requests[0].reply == "midstream_error"


def test_anthropic_midstream_error_in_the_stream_helper(fake: FakeProvider) -> None:
    fake.script(midstream_error(after_events=3, error_type="api_error"))
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        claude(fake).messages.stream(model=CLAUDE, max_tokens=8, messages=HI) as stream,
    ):
        stream.get_final_message()
    assert (caught.value.status_code, caught.value.type) == (200, "api_error")


def test_midstream_error_without_a_stream_is_an_error_response(fake: FakeProvider) -> None:
    fake.script(midstream_error(), midstream_error(error_type="api_error"))
    with pytest.raises(anthropic.OverloadedError):
        ask(claude(fake))
    with pytest.raises(anthropic.InternalServerError) as caught:
        ask(claude(fake))
    assert caught.value.status_code == 500
    assert [r.reply for r in fake.requests] == ["error:529", "error:500"]


def under_the_sdk(caught: BaseException) -> BaseException:
    """What broke beneath the anthropic SDK: from 2.17 it wraps a failed read of a stream in
    APIConnectionError (APITimeoutError for a timeout), the httpx2 error as its cause; earlier
    releases let the httpx2 error through. agentguard's classify reads either."""
    if isinstance(caught, anthropic.APIConnectionError):
        assert caught.__cause__ is not None
        return caught.__cause__
    return caught


def test_anthropic_dropped_stream_is_an_httpx2_remote_protocol_error_beneath(fake: FakeProvider):
    fake.script(drop(after_events=4))
    stream = ask(claude(fake), stream=True)  # headers arrived: the SDK returned a Stream
    received: list[str] = []
    with pytest.raises((httpx2.RemoteProtocolError, anthropic.APIConnectionError)) as caught:
        for event in stream:
            received.append(event.type)
    beneath = under_the_sdk(caught.value)
    assert isinstance(beneath, httpx2.RemoteProtocolError)
    assert "incomplete chunked read" in str(beneath)
    assert not isinstance(caught.value, anthropic.APITimeoutError)
    assert received == ["message_start", "content_block_start", "content_block_delta"]
    assert fake.requests[0].reply == "drop"


def test_anthropic_dropped_json_body_raises_api_connection_error(fake: FakeProvider) -> None:
    fake.script(drop())
    with pytest.raises(anthropic.APIConnectionError) as caught:
        ask(claude(fake))
    assert not isinstance(caught.value, anthropic.APITimeoutError)
    assert isinstance(caught.value.__cause__, httpx2.RemoteProtocolError)
    assert ask(claude(fake)).content[0].text == "ok"  # the server carries on


# -- stalls: the only tests that wait on the wall clock --------------------------------------------


def test_stall_before_headers_is_an_api_timeout_error(fake: FakeProvider) -> None:
    fake.script(stall(before_headers=True))
    started = time.monotonic()
    with pytest.raises(anthropic.APITimeoutError):
        ask(claude(fake, timeout=0.3))
    assert time.monotonic() - started < 2


def test_stall_mid_stream_is_a_read_timeout_beneath(fake: FakeProvider) -> None:
    fake.script(stall(after_events=1))
    stream = ask(claude(fake, timeout=0.3), stream=True)
    received: list[str] = []
    with pytest.raises((httpx2.ReadTimeout, anthropic.APITimeoutError)) as caught:
        for event in stream:
            received.append(event.type)
    assert isinstance(under_the_sdk(caught.value), httpx2.ReadTimeout)
    assert received == ["message_start"] and fake.requests[0].reply == "stall"


def test_openai_stall_mid_stream_is_an_api_timeout_error(fake: FakeProvider) -> None:
    fake.script(stall(after_events=2))
    stream = chat(gpt(fake, timeout=0.2), stream=True)
    with pytest.raises(openai.APITimeoutError) as caught:
        list(stream)
    assert isinstance(caught.value.__cause__, httpx2.ReadTimeout)


def _in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[BaseException]]:
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, raised


def _wait_for_requests(fake: FakeProvider, count: int) -> None:
    deadline = time.monotonic() + 5
    while len(fake.requests) < count:
        assert time.monotonic() < deadline, "the request never reached the fake"
        time.sleep(0.005)


def test_release_stalls_closes_the_stalled_connection(fake: FakeProvider) -> None:
    fake.script(stall(before_headers=True))
    thread, raised = _in_thread(lambda: ask(claude(fake, timeout=10)))
    _wait_for_requests(fake, 1)
    fake.release_stalls()
    thread.join(5)
    assert [type(e) for e in raised] == [anthropic.APIConnectionError]


def test_stop_does_not_hang_on_stalled_connections() -> None:
    fake = FakeProvider().start()
    fake.script(stall(before_headers=True), stall(after_events=1))
    first, raised_1 = _in_thread(lambda: ask(claude(fake, timeout=10)))
    _wait_for_requests(fake, 1)
    streaming = threading.Event()

    def read_stream() -> None:
        stream = ask(claude(fake, timeout=10), stream=True)
        streaming.set()  # headers and the first event are in; now it stalls
        list(stream)

    second, raised_2 = _in_thread(read_stream)
    assert streaming.wait(5)
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 1
    first.join(5)
    second.join(5)
    assert not first.is_alive() and not second.is_alive()
    assert [type(e) for e in raised_1] == [anthropic.APIConnectionError]
    assert [type(under_the_sdk(e)) for e in raised_2] == [httpx2.RemoteProtocolError]
    fake.stop()  # idempotent


def test_a_paced_stream_waits_between_its_events(
    fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ok(interval=…): the fake waits that long before each event after the first (the waits
    are recorded here, not slept), and the answer is the same as an unpaced one."""
    slept: list[float] = []
    monkeypatch.setattr(Exchange, "sleep", lambda _self, seconds: slept.append(seconds))
    turn = Turn(text="one two three")
    fake.script(ok(turn, interval=0.25), ok(turn))
    body = {"model": CLAUDE, "max_tokens": 64, "messages": HI, "stream": True}
    paced, plain = (
        httpx2.post(f"{fake.base_url}/v1/messages", json=body, headers={"x-api-key": KEY}).text
        for _ in range(2)
    )
    assert slept == [0.25] * (paced.count("event: ") - 1)
    assert paced.replace(_ids(paced), "") == plain.replace(_ids(plain), "")
    with pytest.raises(ValueError, match="interval must be >= 0"):
        ok(interval=-1)


def _ids(sse: str) -> str:
    """The message id of a streamed answer (the fake numbers its answers)."""
    return sse.split('"id":"', 1)[1].split('"', 1)[0]


def test_a_burst_of_concurrent_streams_is_served(fake: FakeProvider) -> None:
    """64 streams opened at once (agents behind one proxy): none is reset for want of room in
    the listen backlog, and each gets its own answer."""
    fake.set_model(lambda request: Turn(text=f"answer {request.body['messages'][0]['content']}"))

    async def one(client: httpx2.AsyncClient, n: int) -> str:
        body = {
            "model": CLAUDE,
            "max_tokens": 8,
            "stream": True,
            "messages": [{"role": "user", "content": f"n{n}"}],
        }
        async with client.stream("POST", "/v1/messages", json=body) as response:
            return (await response.aread()).decode()

    async def main() -> list[str]:
        async with httpx2.AsyncClient(
            base_url=fake.base_url,
            headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
            limits=httpx2.Limits(max_connections=64),
            timeout=30,
        ) as client:
            return await asyncio.gather(*(one(client, n) for n in range(64)))

    bodies = asyncio.run(main())
    assert all(f'"text":"n{n}"' in body for n, body in enumerate(bodies))
    assert all(body.rstrip().endswith('data: {"type":"message_stop"}') for body in bodies)


# -- openai ---------------------------------------------------------------------------------------


def test_openai_json_answer_with_text_and_tool_calls(fake: FakeProvider) -> None:
    fake.set_model(lambda request: RICH)
    completion = chat(gpt(fake))
    choice = completion.choices[0]
    assert choice.message.content == RICH.text and choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        (c.name, c.input) for c in RICH.tool_calls
    ]
    assert calls[0].id.startswith("call_") and calls[1].id == "toolu_given"
    [seen] = fake.requests
    assert completion._request_id == seen.request_id
    assert (seen.api, seen.path, seen.model, seen.reply) == (
        "openai",
        "/v1/chat/completions",
        GPT,
        "ok",
    )
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_openai_plain_text_answer(fake: FakeProvider) -> None:
    completion = chat(gpt(fake))
    assert completion.choices[0].message.content == "ok"
    assert completion.choices[0].message.tool_calls is None
    assert completion.choices[0].finish_reason == "stop"


def test_openai_stream_helper_rebuilds_the_json_completion(fake: FakeProvider) -> None:
    fake.set_model(lambda request: RICH)
    client = gpt(fake)
    whole = chat(client).choices[0].message
    with client.chat.completions.stream(
        model=GPT, messages=HI, stream_options={"include_usage": True}
    ) as stream:
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert message.content == whole.content and final.choices[0].finish_reason == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in message.tool_calls] == [
        (c.function.name, c.function.arguments) for c in whole.tool_calls
    ]
    assert message.tool_calls[1].id == whole.tool_calls[1].id == "toolu_given"
    assert final.usage is not None and final.usage.completion_tokens > 0


def test_openai_raw_chunks(fake: FakeProvider) -> None:
    fake.set_model(lambda request: Turn(text="", tool_calls=[ToolCall("run", {"cmd": "ls -la"})]))
    chunks = list(chat(gpt(fake), stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [
        c.choices[0].delta.tool_calls[0].function.arguments
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
    ]
    assert pieces[0] == "" and len(pieces[1:]) >= 2
    assert json.loads("".join(pieces)) == {"cmd": "ls -la"}
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens > 0
    assert all(c.choices[0].delta.content is None for c in chunks if c.choices)


def test_openai_ignores_thinking(fake: FakeProvider) -> None:
    fake.script(ok(Turn(text="fine", thinking="secret reasoning")))
    completion = chat(gpt(fake))
    assert completion.choices[0].message.content == "fine"
    assert "secret reasoning" not in completion.model_dump_json()


OPENAI_ERRORS = [
    (400, openai.BadRequestError),
    (401, openai.AuthenticationError),
    (402, openai.APIStatusError),
    (403, openai.PermissionDeniedError),
    (404, openai.NotFoundError),
    (429, openai.RateLimitError),
    (500, openai.InternalServerError),
    (503, openai.InternalServerError),
    (529, openai.InternalServerError),
]


@pytest.mark.parametrize(("status", "sdk_error"), OPENAI_ERRORS)
def test_openai_error_statuses_raise_the_sdk_class(
    fake: FakeProvider, status: int, sdk_error: type[Exception]
) -> None:
    fake.script(error(status, error_code="some_code", retry_after_ms=250))
    with pytest.raises(sdk_error) as caught:
        chat(gpt(fake))
    exc = caught.value
    assert type(exc) is sdk_error and exc.status_code == status
    assert exc.request_id == fake.requests[0].request_id
    assert exc.body == {  # the SDK unwraps {"error": {...}}
        "message": exc.body["message"],
        "type": exc.type,
        "param": None,
        "code": "some_code",
    }
    assert exc.code == "some_code" and exc.response.headers["retry-after-ms"] == "250"


def test_openai_midstream_error_is_a_plain_api_error(fake: FakeProvider) -> None:
    fake.script(midstream_error(after_events=2, turn=Turn(text="a b c")))
    received: list[str | None] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in chat(gpt(fake), stream=True):
            received.append(chunk.choices[0].delta.content)
    exc = caught.value
    assert type(exc) is openai.APIError and not hasattr(exc, "status_code")
    assert (exc.type, exc.message) == ("overloaded_error", "Overloaded")
    assert exc.body == {
        "message": "Overloaded",
        "type": "overloaded_error",
        "param": None,
        "code": None,
    }
    assert received == ["", "a "]


def test_openai_drops_are_api_connection_errors(fake: FakeProvider) -> None:
    fake.script(drop(after_events=3), drop())
    client = gpt(fake)
    stream = chat(client, stream=True)
    with pytest.raises(openai.APIConnectionError) as caught:
        list(stream)
    assert isinstance(caught.value.__cause__, httpx2.RemoteProtocolError)
    with pytest.raises(openai.APIConnectionError) as caught:
        chat(client)
    assert not isinstance(caught.value, openai.APITimeoutError)


# -- scripting and recording ----------------------------------------------------------------------


def test_a_models_own_queue_comes_before_the_shared_queue(fake: FakeProvider) -> None:
    fake.script(overloaded(), model="claude-a")
    fake.script(error(500), ok(Turn(text="shared")))
    assert fake.pending == 3
    client = claude(fake)

    def outcome(model: str) -> str:
        try:
            return client.messages.create(model=model, max_tokens=8, messages=HI).content[0].text
        except anthropic.APIStatusError as exc:
            return str(exc.status_code)

    assert [outcome(m) for m in ("claude-b", "claude-a", "claude-a", "claude-a")] == [
        "500",
        "529",
        "shared",
        "ok",
    ]
    assert fake.pending == 0
    assert [(r.model, r.reply) for r in fake.requests] == [
        ("claude-b", "error:500"),
        ("claude-a", "error:529"),
        ("claude-a", "ok"),
        ("claude-a", "ok"),
    ]


def test_the_scripted_model_sees_the_recorded_request(fake: FakeProvider) -> None:
    seen: list[RecordedRequest] = []

    def model(request: RecordedRequest) -> Turn:
        seen.append(request)
        return Turn(text=request.last_user_text.upper())

    fake.set_model(model)
    assert ask(claude(fake)).content[0].text == "HI"
    assert chat(gpt(fake)).choices[0].message.content == "HI"
    assert [r.api for r in seen] == ["anthropic", "openai"] and seen == fake.requests


def test_a_failing_scripted_model_answers_500_with_its_error(fake: FakeProvider) -> None:
    def model(request: RecordedRequest) -> Turn:
        raise KeyError("no such scenario")

    fake.set_model(model)
    with pytest.raises(anthropic.InternalServerError, match="no such scenario"):
        ask(claude(fake))
    assert fake.requests[0].reply == "error:500"


def test_the_key_appears_nowhere_in_the_recorded_requests(fake: FakeProvider) -> None:
    ask(claude(fake))  # Authorization: Bearer
    chat(gpt(fake))
    httpx2.post(  # x-api-key, a key in the query string, and a prompt that quotes the key
        f"{fake.base_url}/v1/messages?key={KEY}&beta=true",
        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
        json={"model": CLAUDE, "max_tokens": 8, "messages": [{"role": "user", "content": KEY}]},
    )
    records = fake.requests
    assert len(records) == 3 and KEY not in repr(records)
    assert records[0].headers["authorization"] == records[1].headers["authorization"] == "***"
    assert records[2].headers["x-api-key"] == "***" and records[2].query == "key=***&beta=true"
    assert records[2].body["messages"][0]["content"] == "***"


def test_request_ids_are_unique_and_sent_on_every_response(fake: FakeProvider) -> None:
    fake.script(overloaded(), drop(), error(400))
    client = claude(fake)
    for _ in range(3):
        with pytest.raises(anthropic.APIError):
            ask(client)
    ask(client)
    ids = [r.request_id for r in fake.requests]
    assert len(set(ids)) == 4


def test_unknown_paths_get_a_404_in_the_provider_shape(fake: FakeProvider) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude(fake).models.list()
    assert caught.value.type == "not_found_error"
    assert caught.value.request_id == fake.requests[0].request_id
    response = httpx2.post(f"{fake.base_url}/v1/responses", json={"model": GPT})
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"
    assert response.headers["x-request-id"] == fake.requests[1].request_id
    assert [r.api for r in fake.requests] == ["anthropic", "openai"]


def test_head_probes_are_answered_without_a_body_and_recorded(fake: FakeProvider) -> None:
    """Claude Code sends `HEAD /api/hello` (no key) unless nonessential traffic is off."""
    with httpx2.Client(base_url=fake.base_url) as client:
        answers = [client.head(path) for path in ("/api/hello", "/", "/v1/nothing")]
        after = client.post("/v1/messages?beta=true", json={"model": CLAUDE, "messages": HI})
    assert [r.status_code for r in answers] == [200, 200, 404]
    assert all(r.content == b"" for r in answers)
    assert after.status_code == 200 and after.json()["content"][0]["text"] == "ok"
    assert [(r.method, r.path, r.reply) for r in fake.requests] == [
        ("HEAD", "/api/hello", "ok"),
        ("HEAD", "/", "ok"),
        ("HEAD", "/v1/nothing", "error:404"),
        ("POST", "/v1/messages", "ok"),
    ]
    assert answers[0].headers["request-id"] == fake.requests[0].request_id


def test_a_body_that_is_not_json_is_a_400(fake: FakeProvider) -> None:
    response = httpx2.post(
        f"{fake.base_url}/v1/messages", content=b"{nope", headers={"anthropic-version": "x"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert fake.requests[0].reply == "error:400" and fake.requests[0].body == {}


def test_an_opt_in_key_is_checked() -> None:
    with FakeProvider(api_key=KEY) as fake:
        fake.script(ok(Turn(text="scripted")))
        wrong = anthropic.Anthropic(base_url=fake.base_url, api_key="sk-wrong", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError):
            ask(wrong)
        assert fake.pending == 1  # a rejected key does not use up the script
        assert ask(claude(fake)).content[0].text == "scripted"
        assert chat(gpt(fake)).choices[0].message.content == "ok"


def test_reset_forgets_scripts_and_requests(fake: FakeProvider) -> None:
    ask(claude(fake))
    fake.script(overloaded(), model=CLAUDE)
    fake.script(overloaded())
    fake.reset()
    assert fake.pending == 0 and fake.requests == []
    assert ask(claude(fake)).content[0].text == "ok"


def test_bad_scripts_are_refused_with_a_sentence() -> None:
    fake = FakeProvider()
    with pytest.raises(TypeError, match=r"takes Reply objects"):
        fake.script(Turn(text="not a reply"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="4xx or 5xx"):
        error(200)
    with pytest.raises(ValueError, match="after_events must be >= 0"):
        drop(after_events=-1)
    with pytest.raises(RuntimeError, match="not running"):
        _ = fake.base_url


# -- async clients --------------------------------------------------------------------------------


def test_the_async_clients_work_too(fake: FakeProvider) -> None:
    fake.set_model(lambda request: RICH)
    fake.script(overloaded())

    async def main() -> tuple[Any, ...]:
        claude_client = anthropic.AsyncAnthropic(base_url=fake.base_url, api_key=KEY, max_retries=0)
        gpt_client = openai.AsyncOpenAI(base_url=fake.openai_base_url, api_key=KEY, max_retries=0)
        try:
            await claude_client.messages.create(model=CLAUDE, max_tokens=8, messages=HI)
        except anthropic.OverloadedError as exc:
            overload = exc
        async with claude_client.messages.stream(model=CLAUDE, max_tokens=8, messages=HI) as stream:
            message = await stream.get_final_message()
        completion = await gpt_client.chat.completions.create(model=GPT, messages=HI)
        chunks = [
            c
            async for c in await gpt_client.chat.completions.create(
                model=GPT, messages=HI, stream=True
            )
        ]
        await claude_client.close()
        await gpt_client.close()
        return overload, message, completion, chunks

    overload, message, completion, chunks = asyncio.run(main())
    assert overload.request_id == fake.requests[0].request_id
    assert [b["type"] for b in blocks(message)] == ["thinking", "text", "tool_use", "tool_use"]
    assert completion.choices[0].message.content == RICH.text
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == RICH.text


def test_a_fault_rule_answers_when_nothing_is_scripted() -> None:
    import anthropic

    from agentguard.testing import FakeProvider, ok, overloaded

    with FakeProvider() as fake:
        fake.set_faults(lambda model: overloaded() if model == "down" else None)
        fake.script(ok(), model="down")
        client = anthropic.Anthropic(base_url=fake.base_url, api_key="k", max_retries=0)
        ask = {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
        client.messages.create(model="down", **ask)  # the scripted reply comes first
        with pytest.raises(anthropic.OverloadedError):
            client.messages.create(model="down", **ask)
        client.messages.create(model="up", **ask)
        assert [r.reply for r in fake.requests] == ["ok", "error:529", "ok"]
