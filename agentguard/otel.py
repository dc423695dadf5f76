"""OpenTelemetry: a finished guarded step as spans (the optional extra `agentguard[otel]`).

One span per step, named and attributed after the OpenTelemetry GenAI semantic conventions
(`chat {requested model}`, kind CLIENT), with a child span per attempt. Spans are built once
the step's outcome is final, from what the step holds in memory (its rows may be written later:
`Guard.step(defer_record=)`), with explicit start and end times: the attempts, retries and
backoffs themselves never touch OpenTelemetry. A stream the proxy passes on live is emitted
when it ends (`complete_stream`), when its tokens and stop reason are known — or, if the run is
closed first (`Guard.close`, also at process exit), then, as an error saying the stream's end
was never seen (`stream_abandoned`), so no started step goes untraced. Without
`opentelemetry-api`, or with no TracerProvider configured (the API alone is a no-op), nothing
is emitted; emitting never fails a step (a failure is logged at debug).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentguard import __version__

if TYPE_CHECKING:
    from agentguard.clock import Clock
    from agentguard.records import AttemptRecord, StepInfo
    from agentguard.step_types import Served, StepState

log = logging.getLogger("agentguard")

# gen_ai.provider.name: the conventions' well-known value where agentguard's provider name
# differs from it; every other name is passed on as it is (the conventions allow custom ones).
PROVIDER_NAMES = {"gemini": "gcp.gemini"}


# error.type of a stream whose run closed before the stream ended (see `StepTracer.close`).
ABANDONED = "stream_abandoned"
_ABANDONED_WHY = (
    "the run was closed while this step's stream was still being passed on; how it ended, its "
    "tokens and its stop reason were never seen"
)


def provider_name(provider: str) -> str:
    return PROVIDER_NAMES.get(provider, provider)


@dataclass
class _StepSpan:
    """What the step span will say, gathered while the step ends."""

    name: str
    start: float  # wall-clock seconds
    attributes: dict[str, Any]
    attempts: tuple[AttemptRecord, ...]
    error: tuple[str, str] | None = None  # (error.type, description)


class StepTracer:
    """Turns a run's finished steps into spans. `tracer_provider`: the provider to emit to
    (default: the global one, as `opentelemetry.trace.get_tracer` finds it)."""

    def __init__(self, run_id: str, clock: Clock, tracer_provider: Any = None) -> None:
        self.run_id = run_id
        self.clock = clock
        self._tracer = _tracer(tracer_provider)
        self._given = tracer_provider is not None
        self._live: dict[int, _StepSpan] = {}  # streams passed on live, until they end
        self._closed = False  # the run closed: nothing is parked any more (see `close`)

    # -- the endings of a step ---------------------------------------------------------------

    def served(
        self,
        state: StepState,
        info: StepInfo,
        served: Served,
        *,
        refused: Any = None,
        handed_over: bool = True,
    ) -> None:
        """A served step. A stream handed over live (its output still to come: the proxy) is
        emitted when it ends (`stream_ended`); a refused substitution is an error."""
        if not self._active():
            return
        try:
            span = self._step_span(state, info.served_provider)
            span.attributes.update(
                {
                    "gen_ai.response.model": info.served_model,
                    "agentguard.substituted": info.substituted,
                }
            )
            if info.reason:
                span.attributes["agentguard.substitution.reason"] = info.reason
            _response_id(span.attributes, served)
            _usage(span.attributes, served.input_tokens, served.output_tokens, served.stop_reason)
            if refused is not None:
                why = getattr(refused, "reason", None) or str(refused)
                span.error = ("substitution_refused", why)
            elif handed_over and state.request.stream and served.output_tokens is None:
                if not self._closed:
                    self._live[state.step_id] = span  # its end, tokens and stop reason come later
                    return
                span.error = (ABANDONED, _ABANDONED_WHY)
            self._emit(span)
        except Exception:
            log.debug("agentguard: emitting the step's span failed", exc_info=True)

    def stream_ended(
        self, step_id: int, final: Served | None, status: str, reason: str | None
    ) -> None:
        """A stream passed on live has ended: its span, with the tokens and stop reason."""
        span = self._live.pop(step_id, None)
        if span is None:
            return
        try:
            if final is not None:
                _response_id(span.attributes, final)
                _usage(span.attributes, final.input_tokens, final.output_tokens, final.stop_reason)
            if status != "ok":
                span.error = (f"stream_{status}", reason or status)
            self._emit(span)
        except Exception:
            log.debug("agentguard: emitting the stream's span failed", exc_info=True)

    def close(self) -> None:
        """The run is closing: a stream still being passed on will not be traced by its end
        (`stream_ended` finds nothing), so its span ends now — an error, `stream_abandoned`,
        since how the stream ended, its tokens and its stop reason were never seen."""
        self._closed = True
        for step_id in list(self._live):
            span = self._live.pop(step_id, None)  # one pop: the stream's own end may race us
            if span is None:
                continue
            try:
                span.error = (ABANDONED, _ABANDONED_WHY)
                self._emit(span)
            except Exception:
                log.debug("agentguard: emitting the stream's span failed", exc_info=True)

    def failed(self, state: StepState, exc: BaseException) -> None:
        """No route served (or the request was rejected): the step span is an error."""
        self._ended_badly(state, exc, cancelled=False)

    def cancelled(self, state: StepState, exc: BaseException) -> None:
        """The caller cancelled or interrupted the step."""
        self._ended_badly(state, exc, cancelled=True)

    def _active(self) -> bool:
        """Is anything listening? Without a provider given here or set globally, the API's
        spans record nothing, and building them cost every step ~0.1 ms on its answer's path."""
        if self._tracer is None:
            return False
        if self._given:
            return True
        from opentelemetry import trace

        return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)

    # -- building the spans ----------------------------------------------------------------------

    def _ended_badly(self, state: StepState, exc: BaseException, *, cancelled: bool) -> None:
        if not self._active():
            return
        try:
            last = state.attempts[-1] if state.attempts else None
            span = self._step_span(state, last.provider if last else None)
            kind = type(exc).__name__
            if not cancelled and last is not None and last.error_type:
                kind = last.error_type  # what the provider said, e.g. overloaded_error
            message = str(exc).splitlines()[0] if str(exc) else kind
            span.error = (kind, message)
            self._emit(span)
        except Exception:
            log.debug("agentguard: emitting the step's span failed", exc_info=True)

    def _step_span(self, state: StepState, provider: str | None) -> _StepSpan:
        requested = state.request.route
        elapsed = self.clock.monotonic() - state.started_mono
        return _StepSpan(
            name=f"chat {requested.model}",
            start=self.clock.now() - elapsed,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": provider_name(provider or requested.provider),
                "gen_ai.request.model": requested.model,
                "gen_ai.conversation.id": self.run_id,
                "agentguard.step": state.number,
            },
            attempts=tuple(state.attempts),
        )

    def _emit(self, step: _StepSpan) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        assert self._tracer is not None
        tracer = self._tracer
        if step.error is not None:
            step.attributes["error.type"] = step.error[0]
        span = tracer.start_span(
            step.name, kind=SpanKind.CLIENT, attributes=step.attributes, start_time=_ns(step.start)
        )
        try:
            context = trace.set_span_in_context(span)
            for attempt in step.attempts:
                child = tracer.start_span(
                    "agentguard.attempt",
                    context=context,
                    kind=SpanKind.CLIENT,
                    attributes=_attempt_attributes(attempt),
                    start_time=_ns(attempt.started_at),
                )
                if attempt.outcome != "ok":
                    why = (attempt.message or "")[:200] or None
                    child.set_status(Status(StatusCode.ERROR, why))
                child.end(end_time=_ns(attempt.started_at + attempt.latency))
            if step.error is not None:
                span.set_status(Status(StatusCode.ERROR, step.error[1][:500]))
        finally:  # a span started is always ended, whatever went wrong in between
            span.end(end_time=_ns(max(self.clock.now(), step.start)))


def _attempt_attributes(attempt: AttemptRecord) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider_name(attempt.provider),
        "gen_ai.request.model": attempt.model,
        "agentguard.attempt": attempt.number,
        "agentguard.attempt.outcome": attempt.outcome,
    }
    if attempt.number > 1:  # the conventions: set if and only if the request was resent
        attributes["http.request.resend_count"] = attempt.number - 1
    if attempt.status_code is not None:
        attributes["http.response.status_code"] = attempt.status_code
    if attempt.request_id:
        attributes["agentguard.request_id"] = attempt.request_id
    if attempt.outcome != "ok":
        code = attempt.error_type or (str(attempt.status_code) if attempt.status_code else None)
        attributes["error.type"] = code or "_OTHER"
    if attempt.slept_before:
        attributes["agentguard.attempt.slept_before_s"] = attempt.slept_before
    return attributes


def _response_id(attributes: dict[str, Any], served: Served) -> None:
    """gen_ai.response.id: the SDK object's `id`, or (the proxy passes the provider's bytes on)
    the `id` of the response's JSON as recorded."""
    response_id = getattr(served.value, "id", None)
    if not isinstance(response_id, str) and served.response_json:
        try:
            body = json.loads(served.response_json)
        except ValueError:
            body = None
        response_id = body.get("id") if isinstance(body, dict) else None
    if isinstance(response_id, str) and response_id:
        attributes["gen_ai.response.id"] = response_id


def _usage(
    attributes: dict[str, Any],
    input_tokens: int | None,
    output_tokens: int | None,
    stop_reason: str | None,
) -> None:
    if input_tokens is not None:
        attributes["gen_ai.usage.input_tokens"] = input_tokens
    if output_tokens is not None:
        attributes["gen_ai.usage.output_tokens"] = output_tokens
    if stop_reason:
        attributes["gen_ai.response.finish_reasons"] = [stop_reason]


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def _tracer(tracer_provider: Any) -> Any:
    """The tracer, or None without opentelemetry-api (then nothing is ever emitted)."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    try:
        return trace.get_tracer("agentguard", __version__, tracer_provider=tracer_provider)
    except Exception:
        log.debug("agentguard: no OpenTelemetry tracer", exc_info=True)
        return None
