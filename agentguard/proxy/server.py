"""The proxy's HTTP face: an aiohttp server whose model calls are guarded steps.

    POST /v1/messages (any query)      a guarded step; JSON or SSE passed through
    POST /v1/chat/completions          the same for OpenAI-speaking agents
    POST /v1/messages/count_tokens     forwarded to the Anthropic upstream untouched
    GET  /v1/models[/…]                forwarded to the Anthropic upstream untouched
    HEAD / and /api/hello              200, answered here
    anything else                      404 in Anthropic's error shape

A body that is not JSON is a 400 `invalid_request_error`; one over 32 MB a 413
`request_too_large`, refused here and never sent. When the step has spent its retries and
fallbacks, the client gets the provider's last status and body with `x-should-retry: false`,
so its own retry loop does not multiply the load — unless its routes are down (or, under
`forbid`, its retries are spent): then the request is held, a stream kept alive with pings,
until a route answers or the hold's deadline passes (see `hold`). Every answer of a step
names the model that served it (`x-agentguard-served-model`) and its run and step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterable
from typing import Any

import httpx2
from aiohttp import web
from multidict import CIMultiDict

from agentguard.classify import UpstreamError
from agentguard.errors import AgentGuardError, RetriesExhausted, RunQueued
from agentguard.guard import Guard, leave_signals_to_caller
from agentguard.plan import adrive, no_calls
from agentguard.proxy import answers
from agentguard.proxy.credentials import trusted, usable
from agentguard.proxy.hold import KeepAlive
from agentguard.proxy.options import ProxyOptions
from agentguard.proxy.sessions import AGENT_HEADER, Session, Sessions, conversation_key
from agentguard.proxy.stream import LiveStream
from agentguard.proxy.translated import CrossedError, Translated, anthropic_error
from agentguard.proxy.upstream import (
    _NOT_RETURNED,
    Answer,
    Incoming,
    Upstream,
    forwarded_headers,
    parse_json,
)
from agentguard.records import StepInfo, info
from agentguard.routes import Route
from agentguard.step_types import Served, StepRequest
from agentguard.store import Store, dumps, open_store

log = logging.getLogger("agentguard.proxy")

MAX_BODY = 32 * 1024 * 1024  # the Messages API's own limit
_LOCAL_HEAD = frozenset({"/", "/api/hello"})
# A request of a conversation whose held stream ended in an error this recently (seconds) is
# its client's resend: it is not held again.
RESEND_WINDOW = 120.0
# A JSON answer up to this size goes before the rows saying it was served, its write holding
# the store's other readers (Store.others_wait): the socket takes it whole at once, so that
# write never waits for the client. A larger one is written after its rows.
HAND_OVER_FIRST_MAX = 64 * 1024
_MODEL_CALLS = {"/v1/messages": "anthropic", "/v1/chat/completions": "openai"}


class ProxyServer:
    """The server and the runs it records into; start() and stop() on its event loop."""

    def __init__(self, options: ProxyOptions, store: Store | None = None) -> None:
        self.options = options
        self.store = store or open_store(options.home, url=options.store)
        self.sessions = Sessions(options, self.store)
        self.upstream: Upstream | None = None
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._checkpoints: set[asyncio.Future[Any]] = set()
        self._sweeper: asyncio.Future[None] | None = None

    def server(self) -> web.Server:
        """aiohttp's low-level server: every request to `handle`, with no application, router
        or middleware between (the proxy routes by path itself)."""
        loop = asyncio.get_running_loop()

        def request(
            message: Any, payload: Any, protocol: Any, writer: Any, task: Any
        ) -> web.BaseRequest:
            return web.BaseRequest(
                message, payload, protocol, writer, task, loop, client_max_size=MAX_BODY
            )

        return web.Server(
            self.handle, request_factory=request, handler_cancellation=True, access_log=None
        )

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen; returns the port (the one the system picked for 0). OSError if it cannot."""
        self.upstream = Upstream()
        runner = web.ServerRunner(self.server(), shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            await self.upstream.aclose()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        if self.options.session_idle:
            self._sweeper = asyncio.ensure_future(self._close_idle_sessions())
        return self.port

    async def _close_idle_sessions(self) -> None:
        """Every minute (or a quarter of the idle time), close the runs of quiet sessions."""
        every = min(60.0, self.options.session_idle / 4)
        while True:
            await asyncio.sleep(every)
            try:
                await self.sessions.aclose_idle()
            except Exception:
                log.exception("agentguard proxy: closing idle sessions failed")

    async def stop(self) -> None:
        """Stop listening, end the streams in flight, close every run (completed)."""
        runner, self._runner = self._runner, None
        if self._sweeper is not None:
            self._sweeper.cancel()
        if runner is not None:
            await runner.cleanup()
        if self.upstream is not None:
            await self.upstream.aclose()
        if self._checkpoints:
            await asyncio.gather(*self._checkpoints, return_exceptions=True)
        await self.sessions.aclose()

    # -- routing -------------------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path, method = request.path, request.method
        try:
            if method == "HEAD" and path in _LOCAL_HEAD:
                return web.Response(status=200)
            kind = _MODEL_CALLS.get(path)
            if kind is not None and method == "POST":
                return await self.model_call(kind, request)
            if (method == "POST" and path == "/v1/messages/count_tokens") or (
                method == "GET" and (path == "/v1/models" or path.startswith("/v1/models/"))
            ):
                return await self.forward(request)
            return _error(
                "anthropic", 404, "not_found_error", f"agentguard proxy: no {method} {path} here"
            )
        except _TooLarge:
            return _error(
                _MODEL_CALLS.get(path, "anthropic"),
                413,
                "request_too_large",
                f"Request exceeds the maximum allowed number of bytes ({MAX_BODY}); "
                "agentguard refused it without sending it.",
            )
        except httpx2.TransportError as exc:  # an endpoint forwarded as is, upstream unreachable
            return _error(
                _MODEL_CALLS.get(path, "anthropic"),
                502,
                "api_error",
                f"agentguard proxy: the provider could not be reached ({type(exc).__name__})",
            )
        except Exception:
            log.exception("agentguard proxy: %s %s failed", method, path)
            return _error(
                _MODEL_CALLS.get(path, "anthropic"),
                500,
                "api_error",
                "agentguard proxy: internal error (see the proxy's log)",
            )

    async def forward(self, request: web.BaseRequest) -> web.Response:
        """count_tokens and models: not model calls, passed to the Anthropic upstream as is."""
        assert self.upstream is not None
        incoming = await _incoming("anthropic", request)
        route = self.options.primary("anthropic", "-")
        answer = await self.upstream.passthrough(route, incoming)
        return web.Response(
            status=answer.status, headers=_headers(answer.headers), body=answer.body
        )

    # -- a model call: one guarded step ------------------------------------------------------

    async def model_call(self, kind: str, request: web.BaseRequest) -> web.StreamResponse:
        assert self.upstream is not None
        upstream = self.upstream
        incoming = await _incoming(kind, request)
        try:
            data = parse_json(incoming.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _error(
                kind, 400, "invalid_request_error", f"The request body is not valid JSON: {exc}"
            )
        if not isinstance(data, dict):
            return _error(kind, 400, "invalid_request_error", "The request body must be an object")
        model, messages = data.get("model"), data.get("messages")
        if not isinstance(model, str) or not model or not isinstance(messages, list):
            # not a call agentguard can guard: the provider answers it (with its own 400)
            answer = await upstream.passthrough(self.options.primary(kind, "-"), incoming)
            return web.Response(
                status=answer.status, headers=_headers(answer.headers), body=answer.body
            )
        headers = incoming.header_map
        requested = self.options.primary(kind, model)
        routes = usable(
            self.options.chain_for(kind),
            trusted_request=trusted(headers, self.options.accepted_keys),
        )
        conversation = conversation_key(data)
        session = await self.sessions.session(kind, headers, conversation)
        with self.sessions.in_use(session):
            return await self._guarded(
                kind, request, incoming, data, session, requested, routes, conversation
            )

    async def _guarded(
        self,
        kind: str,
        request: web.BaseRequest,
        incoming: Incoming,
        data: dict[str, Any],
        session: Session,
        requested: Route,
        routes: list[Route],
        conversation: str,
    ) -> web.StreamResponse:
        """The request as a step of its session's run, answered (passed on live, for a
        stream)."""
        assert self.upstream is not None
        upstream = self.upstream
        headers = incoming.header_map
        messages = data["messages"]
        agent = headers.get(AGENT_HEADER)
        lane = f"{agent or 'main'}:{conversation}"

        begun: list[int] = []

        def started(guard: Any, step_id: int) -> None:
            begun.append(step_id)
            if agent:
                guard.event(step_id, "agent", agent_id=agent)

        stream = data.get("stream") is True
        step = StepRequest(route=requested, messages=messages, params=data, stream=stream)
        guard = session.guard
        keeper: KeepAlive | None = None
        if stream:

            def held_marks() -> list[tuple[str, str]]:
                row = guard.store.get_step(begun[0]) if begun else None
                number = str(row["number"]) if row else ""
                return [("x-agentguard-run", guard.run_id), ("x-agentguard-step", number)]

            keeper = KeepAlive(request, kind, guard.clock, self.options.ping_interval, held_marks)
        try:
            value = await self.sessions.step(
                session,
                lane,
                step,
                routes,
                lambda call: upstream.attempt(call.route, requested, incoming),
                started,
                hold=self._hold(session, lane, len(messages), guard, stream),
                keeper=keeper,
            )
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if keeper is not None and keeper.gone and not (task and task.cancelling()):
                assert keeper.response is not None
                return keeper.response  # the client left while held; nothing more to send
            raise
        except Exception as exc:
            if begun and guard.checkpoint_pending(begun[0]):
                self._join_checkpoint(guard, begun[0])
            if keeper is None or not keeper.started:
                return _step_failure(kind, exc)
            try:  # the held stream has started: the error goes as an SSE error event
                failure = _step_failure(kind, exc)
            except Exception:
                log.exception("agentguard proxy: a held request failed")
                return await keeper.unexpected(
                    "agentguard proxy: internal error (see the proxy's log)"
                )
            session.gave_up[lane] = (len(messages), self.options.monotonic())
            return await keeper.fail(bytes(failure.body or b""))
        step_info = info(value)
        if guard.checkpoint_pending(step_info.step_id):
            checkpoint = self._join_checkpoint(guard, step_info.step_id)
            if isinstance(value, LiveStream):  # content flows now; a tool call or the end waits
                value.gate = lambda: asyncio.shield(checkpoint)
            else:
                await asyncio.shield(checkpoint)  # the whole answer at once: checkpoint first
        marks = [
            ("x-agentguard-served-model", step_info.served_model),
            ("x-agentguard-run", step_info.run_id),
            ("x-agentguard-step", str(step_info.step)),
        ]
        held = keeper.response if keeper is not None else None
        try:
            if isinstance(value, Translated):
                return await _send_translated(request, value, marks, stream, held)
            if isinstance(value, Answer):
                if held is not None and keeper is not None:
                    return await keeper.unexpected(
                        "agentguard proxy: the provider answered a streamed request without a "
                        "stream"
                    )
                response = web.Response(
                    status=value.status,
                    headers=_headers([*value.headers, *marks]),
                    body=value.body,
                )
                if len(value.body) > HAND_OVER_FIRST_MAX:
                    # its write may wait for a client that does not read, and the store must
                    # not wait with it: the rows first (finally, below), then aiohttp sends it
                    return response
                # the answer first, then the rows saying it was served (as a stream's follow
                # its first content): the client does not wait for them; a reader in this
                # process does (others_wait), one elsewhere may find them a moment later
                with guard.store.others_wait():
                    await response.prepare(request)
                    await response.write_eof()
                    guard.record_handed_over(step_info.step_id)
                return response
            assert isinstance(value, LiveStream)
            return await self._pass_stream(request, value, marks, guard, step_info, held)
        finally:  # a step's rows wait for its answer to be on its way (Guard.step(defer_record)):
            # written above as it went, or here (a translated answer's before aiohttp sends it)
            guard.record_handed_over(step_info.step_id)

    def _hold(self, session: Session, lane: str, length: int, guard: Guard, stream: bool) -> float:
        """How long this request may be held. Not at all when it resends a request whose held
        stream just ended in an error event (Claude Code resends such a request unstreamed):
        the wait was spent on it already, and an error event could not say `x-should-retry`."""
        gave_up = session.gave_up.pop(lane, None)
        if gave_up is not None:
            count, when = gave_up
            if count == length and self.options.monotonic() - when <= RESEND_WINDOW:
                return 0.0
        return self.options.hold_for(guard.policy, stream=stream)

    def _join_checkpoint(self, guard: Guard, step_id: int) -> asyncio.Future[Any]:
        """The step's tree checkpoint, recorded once its snapshot is done (a streamed step is
        handed over before; see `Guard.step(defer_checkpoint=…)`); stop() waits for it."""
        task = asyncio.ensure_future(adrive(guard.join_checkpoint(step_id), no_calls, guard.clock))
        self._checkpoints.add(task)
        task.add_done_callback(self._checkpoints.discard)
        return task

    async def _pass_stream(
        self,
        request: web.BaseRequest,
        stream: LiveStream,
        marks: list[tuple[str, str]],
        guard: Any,
        step_info: StepInfo,
        held: web.StreamResponse | None = None,
    ) -> web.StreamResponse:
        """Write the stream to the client as it comes; record how it ended. `held`: the
        response already started (with pings) while the step was held."""
        response = held or FirstBytesReady(status=stream.status, headers=_headers(stream.headers))
        if held is None:
            for name, value in marks:
                response.headers[name] = value
        status, reason = "ok", None
        recorded = False
        handed_over = False
        try:
            if held is None:
                await response.prepare(request)
            async for chunk in stream:
                if not recorded and stream.assembler.complete:
                    # the end marker: recorded before it reaches the client, so a client that
                    # reads the store once its stream ends finds the step complete
                    recorded = True
                    status, reason = _stream_end(stream)
                    guard.complete_stream(
                        step_info.step_id, _final(stream), status=status, reason=reason
                    )
                await response.write(chunk)
                if not handed_over and stream.output_started:  # its first token is out: now
                    handed_over = True  # the rows saying it was served (Guard.step(defer_record))
                    guard.record_handed_over(step_info.step_id)
            if not recorded:
                recorded = True
                status, reason = _stream_end(stream)
                guard.complete_stream(
                    step_info.step_id, _final(stream), status=status, reason=reason
                )
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionError) as exc:
            status, reason = "cancelled", f"the client went away mid-stream ({type(exc).__name__})"
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            if not recorded:
                guard.complete_stream(
                    step_info.step_id, _final(stream), status=status, reason=reason
                )
            await stream.aclose()
        return response


class FirstBytesReady(web.StreamResponse):
    """A stream whose first bytes are ready as it starts (the held prelude and the first
    content): its headers go out with them in one write — one send and one wake-up of the
    client fewer before its first token. aiohttp sends a stream's headers on their own unless
    told so (its `web.Response` always coalesces them with the body)."""

    _send_headers_immediately = False


async def _send_translated(
    request: web.BaseRequest,
    value: Translated,
    marks: list[tuple[str, str]],
    stream: bool,
    held: web.StreamResponse | None,
) -> web.StreamResponse:
    """Another provider's answer, translated: Anthropic SSE events for a streamed request
    (into the held response when there is one), the message's JSON otherwise."""
    ids = [(value.request_id_header, value.request_id)] if value.request_id else []
    if not stream:
        headers = _headers([("content-type", answers.JSON), *ids, *marks])
        return web.Response(status=200, headers=headers, body=value.json_body())
    response = held
    if response is None:
        response = web.StreamResponse(
            status=200,
            headers=_headers(
                [("content-type", "text/event-stream"), ("cache-control", "no-cache"), *ids]
            ),
        )
        for name, mark in marks:
            response.headers[name] = mark
        await response.prepare(request)
    await response.write(value.sse_body())
    await response.write_eof()
    return response


class _TooLarge(Exception):
    pass


async def _incoming(kind: str, request: web.BaseRequest) -> Incoming:
    """The request's headers and body; a body over MAX_BODY is read to its end (so the client
    gets the answer, not a reset) but never kept. Path and query go on as the client encoded
    them (`%2F`, `%23`, `%25` stay as they are)."""
    if request.content_length is not None and request.content_length <= MAX_BODY:
        body = await request.read()  # its length said, and allowed: read at once
    else:
        body = await _read_capped(request)
    return Incoming(
        kind=kind,
        method=request.method,
        path=request.rel_url.raw_path,
        query=request.rel_url.raw_query_string,
        headers=forwarded_headers(list(request.headers.items())),
        body=body,
    )


async def _read_capped(request: web.BaseRequest) -> bytes:
    """A body of unknown (or too large a) length, read to its end; _TooLarge past MAX_BODY."""
    body = bytearray()
    too_large = (request.content_length or 0) > MAX_BODY
    async for chunk in request.content.iter_chunked(1 << 16):
        if not too_large and len(body) + len(chunk) > MAX_BODY:
            too_large = True
            body.clear()
        if not too_large:
            body += chunk
    if too_large:
        raise _TooLarge
    return bytes(body)


def _headers(pairs: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


def _error(
    kind: str, status: int, error_type: str, message: str, *, gave_up: bool = False
) -> web.Response:
    headers = {"content-type": answers.JSON}
    if gave_up:
        headers["x-should-retry"] = "false"
    body = answers.error_body(kind, status, error_type, message)
    return web.Response(status=status, headers=headers, body=body)


def _step_failure(kind: str, exc: Exception) -> web.Response:
    """The answer to a step that raised: the provider's own error when it had one (with
    `x-should-retry: false` once the proxy's retries are spent); anything else is raised."""
    if isinstance(exc, UpstreamError):  # rejected (400/413), or every route unusable (401/403)
        return _upstream_error(kind, exc, gave_up=False)
    if isinstance(exc, RetriesExhausted | RunQueued):
        cause = exc.__cause__
        if isinstance(cause, UpstreamError):
            return _upstream_error(kind, cause, gave_up=True)
        return _error(kind, 502, "api_error", str(exc), gave_up=True)
    if isinstance(exc, AgentGuardError):
        return _error(kind, 500, "api_error", f"agentguard: {exc}", gave_up=True)
    raise exc


def _upstream_error(kind: str, exc: UpstreamError, *, gave_up: bool) -> web.Response:
    """The provider's own error, its body byte for byte. An error that came as an SSE event
    before any content gets the status a plain request would have had."""
    headers = CIMultiDict((k, v) for k, v in exc.headers.items() if k not in _NOT_RETURNED)
    status = exc.status_code
    if status is None:
        error = (exc.json() or {}).get("error") or {}
        status = answers.STATUS_OF_TYPE.get(str(error.get("type")), 500)
        headers["content-type"] = answers.JSON
    body = exc.body
    if isinstance(exc, CrossedError) and kind == "anthropic":  # the other provider's error
        body = anthropic_error(body) or body
        headers = CIMultiDict({"content-type": answers.JSON})
    if gave_up:
        headers["x-should-retry"] = "false"
    return web.Response(status=status, headers=headers, body=body)


def _stream_end(stream: LiveStream) -> tuple[str, str | None]:
    if stream.error is not None:
        return "failed", f"after its first content: {stream.error}"
    return "ok", None


def _final(stream: LiveStream) -> Served | None:
    final = stream.final()
    if final.message is None:
        return None
    return Served(
        value=None,
        request_id=None,
        model=final.model or "",
        input_tokens=final.input_tokens,
        output_tokens=final.output_tokens,
        stop_reason=final.stop_reason,
        response_json=dumps(final.message),
    )


class ProxyThread:
    """A ProxyServer on its own event loop in a background thread (`agentguard run`, tests)."""

    def __init__(self, options: ProxyOptions, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = ProxyServer(options)
        self.host, self._port = host, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="agentguard-proxy")
        self._thread.daemon = True

    def _run_loop(self) -> None:
        leave_signals_to_caller()  # Ctrl-C belongs to the main thread (and every thread we start)
        self._loop.run_forever()

    def start(self) -> ProxyThread:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            self.server.start(self.host, self._port), self._loop
        )
        try:
            future.result(timeout=30)
        except BaseException:
            self._shutdown_loop()
            raise
        return self

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop)
        try:
            future.result(timeout=30)
        finally:
            self._shutdown_loop()

    def _shutdown_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> ProxyThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
