"""OpenTelemetry spans of guarded steps, through the real anthropic SDK against the fake provider.

Each test hands `wrap` (or the proxy, `ProxyOptions.tracer_provider`) its own TracerProvider
with an in-memory exporter; one proxy test emits to the global provider (set once for the
session), the proxy's default.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import pytest

pytest.importorskip(
    "opentelemetry.sdk",
    reason="the OpenTelemetry SDK is not installed (the `otel` and test extras bring it)",
)

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

import agentguard
from agentguard import RetriesExhausted
from agentguard.testing import Turn, error, ok, overloaded, stall
from tests.conftest import API_KEY, ATTEMPTS, storm, user

OPUS, SONNET, HAIKU = "claude-opus-4-7", "claude-sonnet-4-6", "claude-haiku-4-5"
NS = 1_000_000_000


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced(guarded: Callable[..., Any], exporter: InMemorySpanExporter) -> Callable[..., Any]:
    """Factory: a guarded client whose steps go to this test's own TracerProvider."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return lambda **options: guarded(tracer_provider=provider, **options)


def ask(client: Any, model: str = OPUS, **kw: Any) -> Any:
    return client.messages.create(model=model, max_tokens=64, messages=[user("fix it")], **kw)


async def ask_async(client: Any) -> Any:
    return await client.messages.create(model=OPUS, max_tokens=64, messages=[user("fix it")])


def the_step(exporter: InMemorySpanExporter) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """The one step span agentguard finished so far, and its attempt spans in order (the
    anthropic SDK emits spans of its own to a global provider)."""
    spans = [
        s for s in exporter.get_finished_spans() if s.instrumentation_scope.name == "agentguard"
    ]
    [step] = [s for s in spans if s.parent is None]
    attempts = [s for s in spans if s.parent is not None]
    assert all(s.parent.span_id == step.context.span_id for s in attempts)
    assert all(s.context.trace_id == step.context.trace_id for s in attempts)
    return step, sorted(attempts, key=lambda s: s.attributes["agentguard.attempt"])


def resend_counts(attempts: list[ReadableSpan]) -> list[Any]:
    return [a.attributes.get("http.request.resend_count") for a in attempts]


def test_a_served_step_is_one_genai_client_span_with_one_attempt(traced, exporter, fake) -> None:
    client = traced()
    message = ask(client)
    info = agentguard.info(message)
    step, [attempt] = the_step(exporter)
    assert (step.name, step.kind) == (f"chat {OPUS}", SpanKind.CLIENT)
    assert dict(step.attributes) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": OPUS,
        "gen_ai.response.model": OPUS,
        "gen_ai.response.id": message.id,
        "gen_ai.usage.input_tokens": message.usage.input_tokens,
        "gen_ai.usage.output_tokens": message.usage.output_tokens,
        "gen_ai.response.finish_reasons": ("end_turn",),
        "gen_ai.conversation.id": client.run_id,
        "agentguard.step": 1,
        "agentguard.substituted": False,
    }
    assert step.status.status_code is StatusCode.UNSET
    assert attempt.kind is SpanKind.CLIENT
    assert attempt.attributes["http.response.status_code"] == 200
    assert "http.request.resend_count" not in attempt.attributes  # the first send is no resend
    assert attempt.attributes["agentguard.request_id"] == fake.requests[0].request_id
    assert attempt.attributes["gen_ai.request.model"] == OPUS
    assert "error.type" not in attempt.attributes
    recorded = info.attempts[0]
    assert attempt.start_time == int(recorded.started_at * NS)
    assert attempt.end_time == int((recorded.started_at + recorded.latency) * NS)
    assert step.start_time <= attempt.start_time <= attempt.end_time <= step.end_time


def test_a_529_storm_then_success_is_one_attempt_span_per_try(traced, exporter, fake, clock):
    fake.script(overloaded(), overloaded(), overloaded())
    info = agentguard.info(ask(traced()))
    step, attempts = the_step(exporter)
    assert [a.attributes["http.response.status_code"] for a in attempts] == [529, 529, 529, 200]
    assert resend_counts(attempts) == [None, 1, 2, 3]
    assert [a.attributes.get("error.type") for a in attempts] == ["overloaded_error"] * 3 + [None]
    assert [a.status.status_code for a in attempts] == [StatusCode.ERROR] * 3 + [StatusCode.UNSET]
    assert [a.attributes["agentguard.request_id"] for a in attempts] == [
        r.request_id for r in fake.requests
    ]
    # after the fact, on the recorded (fake) clock: each retry starts after its backoff
    assert len(clock.sleeps) == 3
    for before, after, slept in zip(attempts[:-1], attempts[1:], clock.sleeps, strict=True):
        assert after.start_time - before.end_time == pytest.approx(slept * NS, abs=1000)
    assert step.start_time <= attempts[0].start_time and attempts[-1].end_time <= step.end_time
    assert step.status.status_code is StatusCode.UNSET and "error.type" not in step.attributes
    assert len(info.attempts) == 4


def test_a_tier_fallback_shows_the_substitution_on_the_step_span(traced, exporter, fake) -> None:
    fake.script(*storm(), model=OPUS)
    info = agentguard.info(ask(traced(chain=[f"anthropic:{OPUS}", f"anthropic:{SONNET}"])))
    step, attempts = the_step(exporter)
    assert step.name == f"chat {OPUS}"
    assert step.attributes["gen_ai.request.model"] == OPUS
    assert step.attributes["gen_ai.response.model"] == SONNET
    assert step.attributes["agentguard.substituted"] is True
    assert step.attributes["agentguard.substitution.reason"] == info.reason
    assert info.reason and "529" in info.reason
    assert [a.attributes["gen_ai.request.model"] for a in attempts] == [OPUS] * ATTEMPTS + [SONNET]
    assert resend_counts(attempts) == [None, *range(1, ATTEMPTS + 1)]
    assert step.status.status_code is StatusCode.UNSET


def test_a_provider_answering_with_another_model_is_a_substitution(traced, exporter, fake):
    fake.script(ok(served_model=HAIKU), model=OPUS)
    info = agentguard.info(ask(traced()))
    step, [attempt] = the_step(exporter)
    assert (step.attributes["gen_ai.request.model"], step.attributes["gen_ai.response.model"]) == (
        OPUS,
        HAIKU,
    )
    assert step.attributes["agentguard.substituted"] is True
    assert step.attributes["agentguard.substitution.reason"] == info.reason
    assert attempt.attributes["gen_ai.request.model"] == OPUS


def test_a_step_whose_retries_are_spent_is_an_error_span(traced, exporter, fake) -> None:
    fake.script(*storm())
    client = traced()
    with pytest.raises(RetriesExhausted):
        ask(client)
    step, attempts = the_step(exporter)
    assert step.status.status_code is StatusCode.ERROR
    assert f"failed after {ATTEMPTS} attempt(s)" in (step.status.description or "")
    assert step.attributes["error.type"] == "overloaded_error"
    assert step.attributes["gen_ai.conversation.id"] == client.run_id
    assert "gen_ai.response.model" not in step.attributes
    assert len(attempts) == ATTEMPTS
    assert all(a.status.status_code is StatusCode.ERROR for a in attempts)
    assert all(a.attributes["http.response.status_code"] == 529 for a in attempts)


def test_a_rejected_request_is_an_error_span_with_the_providers_error_type(
    traced, exporter, fake
) -> None:
    fake.script(error(400, "invalid_request_error"))
    with pytest.raises(anthropic.BadRequestError):
        ask(traced())
    step, [attempt] = the_step(exporter)
    assert step.status.status_code is StatusCode.ERROR
    assert step.attributes["error.type"] == "invalid_request_error"
    assert attempt.attributes["http.response.status_code"] == 400


@pytest.mark.parametrize("how", ["messages.stream", "stream=True"])
def test_a_streamed_step_has_its_tokens_and_finish_reason(traced, exporter, fake, how) -> None:
    fake.script(ok(Turn(text="one two three")))
    client = traced()
    if how == "messages.stream":
        with client.messages.stream(model=OPUS, max_tokens=64, messages=[user("hi")]) as stream:
            final = stream.get_final_message()
        usage = final.usage
    else:
        events = list(ask(client, stream=True))
        usage = next(e for e in events if e.type == "message_delta").usage
        usage.input_tokens = events[0].message.usage.input_tokens
    step, [attempt] = the_step(exporter)
    assert step.attributes["gen_ai.usage.output_tokens"] == usage.output_tokens == 3
    assert step.attributes["gen_ai.usage.input_tokens"] == usage.input_tokens
    assert step.attributes["gen_ai.response.finish_reasons"] == ("end_turn",)
    assert attempt.attributes["http.response.status_code"] == 200


def test_a_refused_substitution_is_an_error_span(traced, exporter, fake) -> None:
    fake.script(ok(served_model=HAIKU), model=OPUS)
    with pytest.raises(agentguard.RunQueued):
        ask(traced(policy="high_stakes"))  # forbid: a swapped answer is not handed over
    step, [attempt] = the_step(exporter)
    assert step.status.status_code is StatusCode.ERROR
    assert step.attributes["error.type"] == "substitution_refused"
    assert "forbids substitution" in (step.status.description or "")
    assert step.attributes["gen_ai.response.model"] == HAIKU
    assert step.attributes["agentguard.substituted"] is True
    assert attempt.attributes["http.response.status_code"] == 200


def test_a_cancelled_step_is_an_error_span(traced, exporter, fake) -> None:
    fake.script(stall(before_headers=True))
    client = traced(asynchronous=True)

    async def scenario() -> None:
        task = asyncio.create_task(ask_async(client))
        for _ in range(2000):  # bounded: the request reaches the fake within a few loop turns
            if fake.requests:
                break
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(scenario())
    finally:
        fake.release_stalls()
    step, attempts = the_step(exporter)
    assert step.status.status_code is StatusCode.ERROR
    assert step.attributes["error.type"] == "CancelledError"
    assert attempts == []  # the attempt in flight has no outcome to show


class _BrokenTracer:
    def start_span(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the exporter's bug")


class _BrokenProvider:
    def get_tracer(self, *args: Any, **kwargs: Any) -> _BrokenTracer:
        return _BrokenTracer()


def test_a_failing_tracer_never_fails_a_step(guarded, fake, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="agentguard")
    fake.script(overloaded())
    client = guarded(tracer_provider=_BrokenProvider())
    assert ask(client).content[0].text == "ok"
    fake.script(*storm())
    with pytest.raises(RetriesExhausted):  # the step's own error, not the tracer's
        ask(client)
    failures = [r for r in caplog.records if "span failed" in r.getMessage()]
    assert len(failures) == 2 and all(r.levelno == logging.DEBUG for r in failures)


def test_without_opentelemetry_nothing_is_emitted_and_nothing_fails(
    guarded, exporter, fake, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if not installed
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert ask(guarded(tracer_provider=provider)).content[0].text == "ok"
    assert exporter.get_finished_spans() == ()


# -- the proxy: its Guards emit to the global provider ---------------------------------------


class _WhileOn(SimpleSpanProcessor):
    """Exports only while a proxy test runs: the global provider outlives this module."""

    on = False

    def on_end(self, span: ReadableSpan) -> None:
        if self.on:
            super().on_end(span)


@pytest.fixture(scope="session")
def _global_spans() -> tuple[_WhileOn, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())  # the API allows this once per process
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    processor = _WhileOn(exporter)
    provider.add_span_processor(processor)
    return processor, exporter


@pytest.fixture
def global_exporter(
    _global_spans: tuple[_WhileOn, InMemorySpanExporter],
) -> Iterator[InMemorySpanExporter]:
    processor, exporter = _global_spans
    exporter.clear()
    processor.on = True
    yield exporter
    processor.on = False
    exporter.clear()


def test_a_stream_passed_on_live_by_the_proxy_is_traced_when_it_ends(
    start_proxy, global_exporter, fake
) -> None:
    fake.script(overloaded(), ok(Turn(text="five six seven eight")))
    client = anthropic.Anthropic(base_url=start_proxy().url, api_key=API_KEY)
    events = list(ask(client, stream=True))
    delta = next(e for e in events if e.type == "message_delta")
    # recorded (and traced) before the stream's end marker reaches the client
    step, attempts = the_step(global_exporter)
    assert step.name == f"chat {OPUS}"
    assert step.attributes["gen_ai.usage.output_tokens"] == delta.usage.output_tokens == 4
    assert step.attributes["gen_ai.usage.input_tokens"] == events[0].message.usage.input_tokens
    assert step.attributes["gen_ai.response.finish_reasons"] == ("end_turn",)
    assert step.attributes["gen_ai.response.model"] == OPUS
    assert step.attributes["gen_ai.response.id"] == events[0].message.id
    assert step.attributes["agentguard.substituted"] is False
    assert [a.attributes["http.response.status_code"] for a in attempts] == [529, 200]
    assert resend_counts(attempts) == [None, 1]
    assert step.status.status_code is StatusCode.UNSET


# -- the proxy with a TracerProvider of its own (ProxyOptions.tracer_provider) ---------------


@pytest.fixture
def proxy_traced(
    start_proxy: Callable[..., Any], exporter: InMemorySpanExporter
) -> Callable[..., Any]:
    """Factory: a proxy whose runs' steps go to this test's own TracerProvider."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return lambda **options: start_proxy(tracer_provider=provider, **options)


def test_a_request_through_the_proxy_is_a_genai_span_on_the_proxys_provider(
    proxy_traced, exporter, fake
) -> None:
    fake.script(overloaded())
    proxy = proxy_traced()
    message = ask(anthropic.Anthropic(base_url=proxy.url, api_key=API_KEY, max_retries=0))
    step, attempts = the_step(exporter)
    assert (step.name, step.kind) == (f"chat {OPUS}", SpanKind.CLIENT)
    attributes = dict(step.attributes)
    run_id = attributes.pop("gen_ai.conversation.id")
    assert attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": OPUS,
        "gen_ai.response.model": OPUS,
        "gen_ai.response.id": message.id,
        "gen_ai.usage.input_tokens": message.usage.input_tokens,
        "gen_ai.usage.output_tokens": message.usage.output_tokens,
        "gen_ai.response.finish_reasons": ("end_turn",),
        "agentguard.step": 1,
        "agentguard.substituted": False,
    }
    [session] = proxy.server.sessions._sessions.values()
    assert run_id == session.guard.run_id
    assert [a.attributes["http.response.status_code"] for a in attempts] == [529, 200]
    assert resend_counts(attempts) == [None, 1]
    assert step.status.status_code is StatusCode.UNSET


def test_a_stream_still_passed_on_when_its_run_closes_ends_its_span_as_abandoned(
    proxy_traced, exporter, fake
) -> None:
    """The run closes (the proxy's session closed, the process ending) while a stream is
    still being passed on: its step span is ended then, as an error saying its end was never
    seen, and the stream's own later end does not emit a second one."""
    import httpx2 as httpx

    fake.script(stall(after_events=4))
    proxy = proxy_traced()
    body = {"model": OPUS, "max_tokens": 64, "messages": [user("hi")], "stream": True}
    headers = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
    with httpx.stream("POST", f"{proxy.url}/v1/messages", json=body, headers=headers) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("event: message_start")  # served: its span is parked
        assert [s for s in exporter.get_finished_spans() if s.parent is None] == []
        [session] = proxy.server.sessions._sessions.values()

        async def close() -> None:  # on the proxy's loop: the stream's handler waits meanwhile
            session.guard.close()

        asyncio.run_coroutine_threadsafe(close(), proxy._loop).result(timeout=30)

        step, [attempt] = the_step(exporter)
        assert step.status.status_code is StatusCode.ERROR
        assert step.attributes["error.type"] == "stream_abandoned"
        assert "never seen" in (step.status.description or "")
        assert step.attributes["gen_ai.response.model"] == OPUS
        assert "gen_ai.usage.output_tokens" not in step.attributes
        assert attempt.attributes["http.response.status_code"] == 200
        assert step.start_time <= attempt.start_time <= attempt.end_time <= step.end_time

        fake.release_stalls()  # the stream now ends (broken off upstream) and is recorded
        rest = list(lines)
    assert rest  # the proxy passed on how it ended
    assert len(the_step(exporter)[1]) == 1  # still the one step span: not emitted twice
